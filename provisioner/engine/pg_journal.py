"""The journal and its schema in PostgreSQL, for several provisioner hosts sharing runs.

The engine's tables are versioned like any schema, in a table of the engine's own
(`provision_engine_schema`), and upgraded under a transaction-level advisory lock so two
processes starting at once never race.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.journal import (
    Journal,
    JournalError,
    JournalUnavailable,
    _first_line,
)
from provisioner.engine.locks import advisory_key
from provisioner.engine.redact import redact_dsn

# (version, name, statements): append only; a released version never changes.
ENGINE_SCHEMA: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "run events",
        """
        CREATE TABLE IF NOT EXISTS provision_run_events (
            run_id   text        NOT NULL,
            seq      bigserial   NOT NULL,
            event    jsonb       NOT NULL,
            at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, seq)
        );
        CREATE INDEX IF NOT EXISTS provision_run_events_seq ON provision_run_events (seq);
        """,
    ),
)


def connect_error(exc: Exception, dsn: str, purpose: str) -> str:
    """A one-line reason a connection failed, with no part of the DSN's password in it."""
    import psycopg

    if isinstance(exc, psycopg.ProgrammingError):
        # A malformed conninfo string: its parser quotes the DSN, password included.
        return (
            f"cannot reach PostgreSQL for {purpose}: PROVISION_PG_DSN is not a valid "
            "connection string; use key=value pairs or a postgresql:// URL"
        )
    return f"cannot reach PostgreSQL for {purpose}: {redact_dsn(_first_line(exc))}"


def ensure_engine_schema(conn: Any) -> None:
    """Bring the engine's tables to the newest version (idempotent)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("engine-schema"),))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS provision_engine_schema ("
            "version int PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM provision_engine_schema")}
        for version, name, statements in ENGINE_SCHEMA:
            if version in done:
                continue
            conn.execute(statements)
            conn.execute(
                "INSERT INTO provision_engine_schema (version, name) VALUES (%s, %s)",
                (version, name),
            )


class PgJournal(Journal):
    """Events as rows in PostgreSQL, each committed synchronously before the runner goes on."""

    def __init__(self, dsn: str, connect_timeout: float = 5.0) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=max(1, int(connect_timeout)),
                application_name="provision journal",
            )
        except psycopg.Error as exc:
            raise JournalUnavailable(connect_error(exc, dsn, "the journal")) from None
        try:
            # Durability of each event must not depend on the server's default.
            self.conn.execute("SET synchronous_commit = on")
            ensure_engine_schema(self.conn)
        except psycopg.errors.InsufficientPrivilege:
            self.conn.close()
            raise JournalUnavailable(
                "the PostgreSQL role of PROVISION_PG_DSN may not create or use the journal "
                "tables; grant it CREATE on the schema, or set PROVISION_JOURNAL=files"
            ) from None
        except psycopg.Error as exc:
            self.conn.close()
            raise JournalUnavailable(connect_error(exc, dsn, "the journal")) from None

    def _write(self, run_id: str, line: str) -> None:
        import psycopg

        try:
            self.conn.execute(
                "INSERT INTO provision_run_events (run_id, event) VALUES (%s, %s::jsonb)",
                (run_id, line),
            )
        except psycopg.Error as exc:
            raise JournalUnavailable(
                f"cannot write the journal in PostgreSQL: {redact_dsn(_first_line(exc))}"
            ) from None

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        import psycopg

        try:
            return self.conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise JournalError(
                f"cannot read the journal in PostgreSQL: {redact_dsn(_first_line(exc))}"
            ) from None

    def events(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT event FROM provision_run_events WHERE run_id = %s ORDER BY seq", (run_id,)
        )
        if not rows:
            raise JournalError(f"no run {run_id!r} in the PostgreSQL journal")
        return [row[0] for row in rows]

    def run_ids(self) -> list[str]:
        rows = self._query(
            "SELECT run_id FROM provision_run_events GROUP BY run_id ORDER BY min(seq)"
        )
        return [row[0] for row in rows]

    def close(self) -> None:
        self.conn.close()
