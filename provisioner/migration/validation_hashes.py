"""The validation's first pass done by PostgreSQL: which keys need a closer look.

Streaming every row's key and content hash into Python to compare them with the JSON side's
costs more than anything else in a validation but the parse. Instead the JSON side's hashes
are COPYed (as one block of text) into a temporary table, and one statement returns only the
keys that differ: a row without a JSON record, a JSON record without a row, another content
hash (or a record the mapping refuses, whose hash is NULL), or a row not proved since its last
change (its digest in `migration_row_digests` is not its current one). Exactly the keys the
streamed comparison finds (tests/test_migration_validation.py runs both).
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
from psycopg import sql

from provisioner.migration.staging import DIGESTS_TABLE, row_digest
from provisioner.migration.storage_bridge import ENTITY_MAPS

HASH_STAGE = "provision_validation_hashes"
HASH_STAGE_SQL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {HASH_STAGE} (key text, content_hash text) "
    "ON COMMIT DELETE ROWS"
).encode()
# Characters COPY's text format would need escaped: keys holding one take the streamed way.
_NOT_PLAIN = ("\t", "\n", "\r", "\\", "\x00")


class _Counted(Protocol):
    pg_records: int


def hashes_copy_text(json_hashes: dict[str, str | None]) -> bytes | None:
    """The JSON side's (key, hash) lines in COPY's text format, or None when a key needs
    escaping or is not valid Unicode (then the rows are streamed and compared here)."""
    keys = "".join(json_hashes)
    if any(char in keys for char in _NOT_PLAIN):
        return None
    text = "".join(
        f"{key}\t{digest}\n" if digest is not None else f"{key}\t\\N\n"
        for key, digest in json_hashes.items()
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _differing_sql(entity: str) -> sql.Composed:
    mapping = ENTITY_MAPS[entity]
    return sql.SQL(
        "SELECT coalesce(t.{pk}, j.key), t.{pk} IS NULL "
        "FROM {table} t FULL JOIN {stage} j ON j.key = t.{pk} "
        "LEFT JOIN {digests} d ON d.entity = {entity} AND d.key = t.{pk} "
        "WHERE t.{pk} IS NULL OR j.key IS NULL "
        "OR j.content_hash IS DISTINCT FROM t.content_hash "
        "OR NOT coalesce(d.content_hash = t.content_hash AND d.digest = {digest}, false)"
    ).format(
        pk=sql.Identifier(mapping.key_column),
        table=sql.Identifier(mapping.table),
        stage=sql.Identifier(HASH_STAGE),
        digests=sql.Identifier(DIGESTS_TABLE),
        entity=sql.Literal(entity),
        digest=row_digest(),
    )


def compare_hashes_in_sql(
    conn: psycopg.Connection[Any],
    entity: str,
    copied: bytes,
    json_hashes: dict[str, str | None],
    check: _Counted,
) -> set[str]:
    """The keys that need a closer look, inside the caller's transaction (the staging table
    exists); leaves in `json_hashes` only the keys PostgreSQL has no row for, and sets
    `check.pg_records`."""
    table = sql.Identifier(ENTITY_MAPS[entity].table)
    with conn.cursor() as cur:
        with cur.copy(
            sql.SQL("COPY {} (key, content_hash) FROM STDIN").format(sql.Identifier(HASH_STAGE))
        ) as copy:
            copy.write(copied)
        row = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        check.pg_records = int(row[0]) if row else 0
        differing = cur.execute(_differing_sql(entity)).fetchall()
    json_only = {key: json_hashes[key] for key, only_in_json in differing if only_in_json}
    json_hashes.clear()
    json_hashes.update(json_only)
    return {key for key, _only_in_json in differing}
