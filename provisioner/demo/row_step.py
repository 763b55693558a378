"""A step that makes one row of a PostgreSQL table hold given values, reversibly."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from provisioner.config import redact_dsn
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo


def connection(ctx: RunContext) -> psycopg.Connection[Any]:
    """The run's shared autocommit connection, opened on first use."""
    conn = ctx.resources.get("pg")
    if conn is None or conn.closed:
        assert ctx.settings.pg_dsn
        conn = psycopg.connect(ctx.settings.pg_dsn, autocommit=True, connect_timeout=5)
        ctx.resources["pg"] = conn
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
        except psycopg.OperationalError as exc:
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
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(
            sql.SQL("SELECT message FROM {} WHERE name = %s").format(sql.Identifier(self.table)),
            (self.key,),
        ).fetchone()
        return None if row is None else {"name": self.key, "message": row[0]}

    def check(self, ctx: RunContext) -> Change | None:
        current = self._current(connection(ctx))
        wanted = {"name": self.key, "message": self.message}
        if current == wanted:
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
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, message) VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET message = excluded.message, updated_at = now()"
                ).format(sql.Identifier(self.table)),
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
        else:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (name, message) VALUES (%s, %s) ON CONFLICT (name) "
                    "DO UPDATE SET message = excluded.message, updated_at = now()"
                ).format(table),
                (self.key, before["message"]),
            )
