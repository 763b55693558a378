"""Versioned, transactional schema migrations for the data layer's PostgreSQL side.

The AEIMS history (REPORT section 4) is a schema nobody could name: `IF NOT EXISTS` files that
clashed, columns patched at runtime, constraints found by trial and error in production. Here
every schema change is a numbered file in `schema/` (`NNNN_name.sql`), applied once, in order,
each in its own transaction, and recorded with its checksum in `schema_migrations`, so the
database can always say which schema it has and an edited, already-applied file is caught.

A migration runs inside a transaction, so statements that cannot (CREATE INDEX CONCURRENTLY)
do not belong in these files. While it runs, a lock_timeout bounds how long its DDL may wait
for a lock: a migration queued behind a long query would otherwise block every request that
touches the table after it, which is an outage on a live database.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.sql$")
# One fixed advisory-lock key for "changing this database's schema" (first 8 bytes of
# sha256("provisioner.schema_migrations"), as a signed bigint), so concurrent appliers on any
# host serialize without a lock table.
_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"provisioner.schema_migrations").digest()[:8], "big", signed=True
)

_CREATE_LEDGER = sql.SQL(
    """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version    integer     PRIMARY KEY CHECK (version > 0),
        name       text        NOT NULL,
        checksum   text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
        applied_at timestamptz NOT NULL DEFAULT now()
    )
    """
)


class MigrationError(RuntimeError):
    """A migration could not be applied; the message names the file and what to do.

    `applied` lists the migrations this call did apply (and commit) before the failure.
    """

    def __init__(self, message: str, applied: list[str] | None = None) -> None:
        super().__init__(message)
        self.applied: list[str] = list(applied or [])


class MigrationChecksumError(MigrationError):
    """An already-applied migration file was edited; the database no longer matches it."""


@dataclass(frozen=True)
class Migration:
    """One schema file: its version, its name (`0001_core`) and its exact bytes."""

    version: int
    name: str
    path: Path
    text: bytes

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text).hexdigest()


def discover(schema_dir: Path | None = None) -> list[Migration]:
    """The migration files in `schema_dir`, ordered by version.

    A `.sql` file whose name does not follow `NNNN_name.sql`, or two files with one version,
    is an error: a silently skipped schema file is how the AEIMS schemas drifted apart.
    """
    folder = schema_dir or SCHEMA_DIR
    if not folder.is_dir():
        raise MigrationError(f"schema folder {folder} does not exist; reinstall the package")
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: not a migration file name; name it NNNN_description.sql "
                "(four digits, lower-case letters, digits and underscores)"
            )
        version = int(match.group(1))
        if version == 0:
            raise MigrationError(f"{path.name}: versions start at 0001")
        if version in found:
            raise MigrationError(
                f"{path.name} and {found[version].path.name} share version {version:04d}; "
                "give each migration its own number"
            )
        found[version] = Migration(version, path.stem, path, path.read_bytes())
    return [found[v] for v in sorted(found)]


def _require_idle(conn: psycopg.Connection) -> None:
    status = conn.info.transaction_status
    if status != psycopg.pq.TransactionStatus.IDLE:
        raise MigrationError(
            "apply_migrations needs a connection with no open transaction "
            f"(found {status.name}); commit or roll back first"
        )


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def _verify(known: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    """Refuse to run against a database whose history disagrees with the files."""
    by_version = {m.version: m for m in known}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            newest = max(by_version, default=0)
            raise MigrationError(
                f"the database has migration {name} (version {version:04d}) that this tool "
                f"does not know (its newest is {newest:04d}); use the provisioner version that "
                "applied it"
            )
        if migration.checksum != checksum:
            raise MigrationChecksumError(
                f"{migration.path.name} was changed after it was applied (checksum "
                f"{checksum[:12]}… in the database, {migration.checksum[:12]}… on disk); "
                "restore the file and put the change in a new migration"
            )


def pending_migrations(conn: psycopg.Connection, schema_dir: Path | None = None) -> list[str]:
    """Names of the migrations `apply_migrations` would apply now; changes nothing."""
    known = discover(schema_dir)
    with conn.transaction():
        if not _ledger_exists(conn):
            return [m.name for m in known]
        applied = _applied(conn)
    _verify(known, applied)
    return [m.name for m in known if m.version not in applied]


def apply_migrations(
    conn: psycopg.Connection, schema_dir: Path | None = None, lock_timeout: float = 5.0
) -> list[str]:
    """Apply every pending migration in order; return the names applied (empty: up to date).

    Each migration runs in its own transaction holding the schema advisory lock, so a failing
    file rolls back completely and stays unrecorded, and two appliers never apply one file
    twice. A changed checksum of an applied file stops everything before anything is applied.
    `lock_timeout` (seconds) bounds each migration's wait for table locks (not for the advisory
    lock: a second applier waits for the first to finish).
    """
    _require_idle(conn)
    if lock_timeout <= 0:
        raise MigrationError(f"lock_timeout={lock_timeout!r} must be a positive number of seconds")
    known = discover(schema_dir)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
            conn.execute(_CREATE_LEDGER)
            applied = _applied(conn)
    except psycopg.Error as exc:
        detail = exc.diag.message_primary or type(exc).__name__
        raise MigrationError(
            f"cannot read or create schema_migrations: {detail}; the database user needs "
            "CREATE on the schema to migrate it"
        ) from exc
    _verify(known, applied)

    done: list[str] = []
    for migration in known:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
                applied = _applied(conn)
                if migration.version in applied:
                    # Another applier got here first (or it was applied before this run).
                    _verify(known, applied)
                    continue
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", [f"{int(lock_timeout * 1000)}ms"]
                )
                conn.execute(migration.text)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    [migration.version, migration.name, migration.checksum],
                )
        except MigrationError as exc:
            exc.applied = done
            raise
        except psycopg.Error as exc:
            detail = exc.diag.message_primary or type(exc).__name__
            raise MigrationError(
                f"migration {migration.path.name} failed and was rolled back: {detail}; "
                f"fix the file and run again (applied before it: {', '.join(done) or 'none'})",
                applied=done,
            ) from exc
        done.append(migration.name)
    return done


def _ledger_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def current_version(conn: psycopg.Connection) -> int:
    """The highest applied migration version; 0 for a database never migrated."""
    if not _ledger_exists(conn):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0
