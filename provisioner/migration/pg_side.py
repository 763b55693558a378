"""The PostgreSQL side as the migration sees it: which objects the schema made, which rows they
hold, dropping them, and copies of their rows kept for a rollback (COPY, binary).

The engine's own tables (runs, locks) may live in the same database; nothing here touches a
table the schema files did not create.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from provisioner.migration.storage_access import SCHEMA_DIR, current_version

_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I | re.M)
_VIEW = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:MATERIALIZED\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.I | re.M,
)
# Tables whose rows are the layer's bookkeeping, not data: never a reason to refuse a drop.
BOOKKEEPING = frozenset(
    {"phase_state", "schema_migrations", "outbox", "migration_validations", "migration_row_digests"}
)
LEDGER = "schema_migrations"


def schema_objects(schema_dir: Path | None = None) -> tuple[list[str], list[str]]:
    """The tables and views the schema files create, in file order."""
    tables: list[str] = []
    views: list[str] = []
    for path in sorted((schema_dir or SCHEMA_DIR).glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        tables.extend(t for t in _TABLE.findall(text) if t not in tables)
        views.extend(v for v in _VIEW.findall(text) if v not in views)
    return tables, views


def existing_tables(conn: psycopg.Connection[Any], names: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname = ANY(%s) "
        "AND relnamespace = current_schema()::regnamespace",
        [names],
    ).fetchall()
    found = {row[0] for row in rows}
    return [name for name in names if name in found]


def rows_held(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows in each data table the schema made (bookkeeping tables left out); {} if none."""
    tables, _ = schema_objects()
    held: dict[str, int] = {}
    for table in existing_tables(conn, [t for t in tables if t not in BOOKKEEPING]):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        row = conn.execute(query).fetchone()
        if row and row[0]:
            held[table] = int(row[0])
    return held


def schema_version(conn: psycopg.Connection[Any]) -> int:
    return current_version(conn)


def drop_schema(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop every view and table the schema files made, and the migrations ledger, in one
    transaction; the names dropped."""
    tables, views = schema_objects()
    dropped: list[str] = []
    with conn.transaction():
        for view in reversed(views):
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {} CASCADE").format(sql.Identifier(view)))
        for table in reversed(existing_tables(conn, [*tables, LEDGER])):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
            dropped.append(table)
    return dropped


def dump_tables(conn: psycopg.Connection[Any], tables: list[str], folder: Path) -> list[str]:
    """Each table's rows into `folder/<table>.copy` (COPY binary); the tables dumped."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    dumped = []
    for table in existing_tables(conn, tables):
        target = folder / f"{table}.copy"
        query = sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(sql.Identifier(table))
        with conn.cursor() as cur, cur.copy(query) as copy, target.open("wb") as out:
            for chunk in copy:
                out.write(chunk)
        target.chmod(0o600)
        dumped.append(table)
    return dumped


def restore_tables(conn: psycopg.Connection[Any], tables: list[str], folder: Path) -> None:
    """Make each table hold exactly the rows dumped in `folder` (one transaction)."""
    present = existing_tables(conn, tables)
    with conn.transaction():
        if present:
            names = sql.SQL(", ").join(sql.Identifier(t) for t in present)
            conn.execute(sql.SQL("TRUNCATE {}").format(names))
        for table in present:
            source = folder / f"{table}.copy"
            if not source.exists():
                continue
            query = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.Identifier(table))
            with conn.cursor() as cur, cur.copy(query) as copy, source.open("rb") as src:
                while chunk := src.read(1 << 20):
                    copy.write(chunk)


def empty_tables(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    present = existing_tables(conn, tables)
    if present:
        names = sql.SQL(", ").join(sql.Identifier(t) for t in present)
        conn.execute(sql.SQL("TRUNCATE {}").format(names))
