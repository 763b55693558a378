"""A step that makes one row of a PostgreSQL table hold given values, reversibly."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from provisioner.clients import PG
from provisioner.engine.redact import redact_dsn
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo


def connection(ctx: RunContext) -> psycopg.Connection[Any]:
    """The run's shared autocommit connection (reopened if it broke)."""
    conn = ctx.client(PG)
    if conn.closed:
        ctx.forget_client(PG)
        conn = ctx.client(PG)
    return conn


class DatabaseRowStep(Step):
    """Row `key` of `table` (key column `name`, text column `message`) holds `message`."""

    scope = Scope.GLOBAL

    def __init__(self, name: str, table: str, key: str, message: str) -> None:
        self.name = name
        self.table = table
        self.key = key
        self.message = message

    def preflight(self, ctx: RunContext) -> list[str]:
        if not ctx.settings.pg_dsn:
            return ['no database configured: set PROVISION_PG_DSN (or eval "$(provision dev env)")']
        try:
            connection(ctx).execute("SELECT 1")
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
            return [f"PostgreSQL at {redact_dsn(ctx.settings.pg_dsn)} is unreachable ({first})"]
        return []

    def _ensure_table(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, message text NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(self.table))
        )

    def _current(self, conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
        """The row as found, with its `updated_at` (ISO 8601), which rollback puts back too."""
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(
            sql.SQL("SELECT message, updated_at FROM {} WHERE name = %s").format(
                sql.Identifier(self.table)
            ),
            (self.key,),
        ).fetchone()
        if row is None:
            return None
        return {"name": self.key, "message": row[0], "updated_at": row[1].isoformat()}

    def check(self, ctx: RunContext) -> Change | None:
        current = self._current(connection(ctx))
        wanted = {"name": self.key, "message": self.message}
        if current is not None and current["message"] == self.message:
            return None
        verb = "update" if current else "insert"
        return Change(
            f"{verb} row {self.key!r} in table {self.table}", before=current, after=wanted
        )

    def apply(self, ctx: RunContext) -> Undo:
        conn = connection(ctx)
        self._ensure_table(conn)
        with conn.transaction():
            before = self._current(conn)
            # A row already holding the message is left alone, its updated_at included.
            conn.execute(
                sql.SQL(
                    "INSERT INTO {table} (name, message) VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET message = excluded.message, updated_at = now() "
                    "WHERE {table}.message IS DISTINCT FROM excluded.message"
                ).format(table=sql.Identifier(self.table)),
                (self.key, self.message),
            )
        return {"before": before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        conn = connection(ctx)
        before = undo.get("before")
        if self._current(conn) is None and before is None:
            return
        table = sql.Identifier(self.table)
        if before is None:
            conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(table), (self.key,))
            return
        # The row as it was, updated_at included (undo records journaled before updated_at was
        # kept restore the message only); a row already restored is left alone.
        conn.execute(
            sql.SQL(
                "INSERT INTO {table} (name, message, updated_at) "
                "VALUES (%(name)s, %(message)s, coalesce(%(stamp)s::timestamptz, now())) "
                "ON CONFLICT (name) DO UPDATE "
                "SET message = excluded.message, updated_at = excluded.updated_at "
                "WHERE ({table}.message, {table}.updated_at) IS DISTINCT FROM "
                "(excluded.message, coalesce(%(stamp)s::timestamptz, {table}.updated_at))"
            ).format(table=table),
            {"name": self.key, "message": before["message"], "stamp": before.get("updated_at")},
        )
