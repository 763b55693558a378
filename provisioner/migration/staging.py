"""The SQL the backfill and the validation share, composed once per entity from the layer's maps.

Nothing here converts a record: rows come from the layer's own mapping (`from_record`,
`RowImage.params()`); this only says where they go and how they are compared.

- The staging table of an entity is a TEMP table shaped like the entity's table (`LIKE`), made
  once per connection and emptied at each commit (`ON COMMIT DELETE ROWS`): a batch COPYs into
  it and one INSERT ... SELECT ... ON CONFLICT DO UPDATE moves it into place, writing only
  the rows whose content hash (or stored key order) differs, exactly as the layer's upserts do.
- The row digest names the stored version of a row: its `xmin` (the transaction that wrote it)
  and `ctid` (where that version lives). PostgreSQL writes a new version, with a new xmin, for
  any change to a row (through the layer, by hand in SQL, even an UPDATE that sets the same
  values), so a row whose digest is still the one recorded when it was proved has not changed
  since. It costs nothing to compute, where a hash of the row's text would print every jsonb
  value of every row on each validation. A table rewrite (VACUUM FULL, a dump and restore) only
  makes rows unproved: they are rebuilt and compared once more.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from psycopg import sql

from provisioner.migration.storage_bridge import ENTITY_MAPS, ORDER_KEY, conflict_updates

# Set LOCAL in every transaction that reads rows to compare (timestamps printed the same way).
SESSION_SETTINGS = (
    "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true)"
)

DIGESTS_TABLE = "migration_row_digests"


def ids(names: list[str] | tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def copy_types(entity: str) -> list[str]:
    """The types COPY is told for EntityMap.written_columns (what psycopg dumps each value as)."""
    mapping = ENTITY_MAPS[entity]
    return ["text", *(c.type.copy_type for c in mapping.columns), "jsonb", "jsonb", "text"]


def row_digest(alias: str = "t") -> sql.Composed:
    """The digest of the stored version of a row (see the module docstring), as SQL."""
    return sql.SQL("({t}.xmin::text || ':' || {t}.ctid::text)").format(t=sql.Identifier(alias))


@dataclass(frozen=True)
class EntitySql:
    """The statements of one entity (rendered to bytes, composed once)."""

    stage_table: str
    create_stage: bytes
    copy_stage: bytes
    upsert_from_stage: bytes
    membership_delete: bytes | None
    membership_copy: bytes | None
    membership_types: tuple[str, ...]
    scan_hashes: bytes
    select_rows: bytes
    count_rows: bytes


@functools.cache
def entity_sql(entity: str) -> EntitySql:
    mapping = ENTITY_MAPS[entity]
    table, pk = sql.Identifier(mapping.table), sql.Identifier(mapping.key_column)
    written = mapping.written_columns
    stage_name = f"provision_stage_{mapping.table}"
    stage = sql.Identifier(stage_name)
    updates = conflict_updates(mapping)
    # One statement moves the batch into place and records the digest of every row it wrote
    # (RETURNING gives the version just written, so no row is looked up again).
    upsert = sql.SQL(
        "WITH written AS ("
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ORDER BY {pk} "
        "ON CONFLICT ({pk}) DO UPDATE SET {updates}, stored_at = now() "
        "WHERE {table}.content_hash IS DISTINCT FROM EXCLUDED.content_hash "
        "OR {table}.extra -> {order} IS DISTINCT FROM EXCLUDED.extra -> {order} "
        "RETURNING {table}.{pk} AS key, {table}.content_hash, ({table}.xmax = 0) AS is_new, "
        "{digest} AS digest), "
        "proved AS (INSERT INTO {digests} (entity, key, content_hash, digest) "
        "SELECT {entity}, key, content_hash, digest FROM written "
        "ON CONFLICT (entity, key) DO UPDATE "
        "SET content_hash = EXCLUDED.content_hash, digest = EXCLUDED.digest) "
        "SELECT key, is_new FROM written"
    ).format(
        table=table,
        cols=ids(written),
        stage=stage,
        pk=pk,
        updates=updates,
        order=sql.Literal(ORDER_KEY),
        digest=row_digest(mapping.table),
        digests=sql.Identifier(DIGESTS_TABLE),
        entity=sql.Literal(entity),
    )
    membership_delete = membership_copy = None
    membership_types: tuple[str, ...] = ()
    if mapping.memberships:
        mm = mapping.memberships
        mcols = [mm.owner_column, *(name for name, _ in mm.columns)]
        membership_types = ("text", *(t for _, t in mm.columns))
        membership_delete = (
            sql.SQL("DELETE FROM {t} WHERE {owner} = ANY(%s::text[])")
            .format(t=sql.Identifier(mm.table), owner=sql.Identifier(mm.owner_column))
            .as_bytes(None)
        )
        membership_copy = (
            sql.SQL("COPY {t} ({cols}) FROM STDIN")
            .format(t=sql.Identifier(mm.table), cols=ids(mcols))
            .as_bytes(None)
        )
    scan_hashes = sql.SQL(
        "SELECT t.{pk}, t.content_hash, "
        "(d.content_hash = t.content_hash AND d.digest = {digest}) "
        "FROM {table} t LEFT JOIN {digests} d ON d.entity = {entity} AND d.key = t.{pk} "
        "ORDER BY t.{pk}"
    ).format(
        pk=pk,
        digest=row_digest(),
        table=table,
        digests=sql.Identifier(DIGESTS_TABLE),
        entity=sql.Literal(entity),
    )
    select_rows = sql.SQL(
        "SELECT {cols}, t.content_hash, {digest} FROM {table} t "
        "WHERE t.{pk} = ANY(%s::text[]) ORDER BY t.{pk}"
    ).format(
        cols=sql.SQL(", ").join(
            sql.SQL("t.{}").format(sql.Identifier(c)) for c in mapping.selected_columns
        ),
        digest=row_digest(),
        table=table,
        pk=pk,
    )
    return EntitySql(
        stage_table=stage_name,
        create_stage=sql.SQL(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        .format(stage=stage, table=table)
        .as_bytes(None),
        copy_stage=sql.SQL("COPY {stage} ({cols}) FROM STDIN")
        .format(stage=stage, cols=ids(written))
        .as_bytes(None),
        upsert_from_stage=upsert.as_bytes(None),
        membership_delete=membership_delete,
        membership_copy=membership_copy,
        membership_types=membership_types,
        scan_hashes=scan_hashes.as_bytes(None),
        select_rows=select_rows.as_bytes(None),
        count_rows=sql.SQL("SELECT count(*) FROM {table}").format(table=table).as_bytes(None),
    )
