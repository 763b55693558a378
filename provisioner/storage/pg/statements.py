"""The SQL of each entity, composed once, identifiers quoted by psycopg.sql."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from provisioner.storage.logins import LOGIN_ID_SQL, LOGIN_SQL
from provisioner.storage.pg.columns import ORDER_KEY
from provisioner.storage.pg.maps import ENTITY_MAPS, EntityMap, entity_map

# ---------------------------------------------------------------------------------------------
# Statements (composed once per entity, identifiers quoted by psycopg.sql)
# ---------------------------------------------------------------------------------------------


def _ids(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


@dataclass(frozen=True)
class _Statements:
    # Upserts of the rows of a json_to_recordset parameter (see _rows_param): the first gives
    # the changed keys back, the second only their number (the cursor's rowcount).
    upsert_rows: bytes
    upsert_rows_count: bytes
    on_conflict: sql.Composed
    select_one: bytes
    select_all: bytes
    delete: bytes
    count: bytes
    find: bytes | None
    membership_delete: bytes | None
    membership_insert: bytes | None


def _render(query: sql.Composable) -> bytes:
    return query.as_bytes(None)


@functools.cache
def conflict_updates(m: EntityMap) -> sql.Composed:
    """The SET list of an upsert of `m`'s rows: every written column but the key. A record
    written without a placement (PostgreSQL-only writes do not know where JSON would put it)
    keeps the placement already stored, for writing the files back later."""
    table = sql.Identifier(m.table)
    return sql.SQL(", ").join(
        sql.SQL(
            "placement = CASE WHEN EXCLUDED.placement = '{{}}'::jsonb "
            "THEN {table}.placement ELSE EXCLUDED.placement END"
        ).format(table=table)
        if c == "placement"
        else sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
        for c in m.written_columns[1:]
    )


@functools.cache
def _statements(entity: str) -> _Statements:
    m = ENTITY_MAPS[entity]
    table, pk = sql.Identifier(m.table), sql.Identifier(m.key_column)
    written = m.written_columns
    updates = conflict_updates(m)
    on_conflict_count = sql.SQL(
        "ON CONFLICT ({pk}) DO UPDATE SET {updates}, stored_at = now() "
        "WHERE {table}.content_hash IS DISTINCT FROM EXCLUDED.content_hash "
        "OR {table}.extra -> {order} IS DISTINCT FROM EXCLUDED.extra -> {order}"
    ).format(pk=pk, updates=updates, table=table, order=sql.Literal(ORDER_KEY))
    on_conflict = on_conflict_count + sql.SQL(" RETURNING {pk}").format(pk=pk)
    # Every row of a write travels in ONE parameter, a JSON array of objects keyed by column:
    # one statement, one parse and one round trip per batch whatever its size, where a
    # statement per row (or a VALUES list of 10 parameters per row) costs far more CPU on both
    # sides. Rows are locked in key order (ORDER BY, the order copy_records uses too), so
    # concurrent batches cannot deadlock each other.
    definitions = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
        for c, t in zip(written, m.written_types, strict=True)
    )
    from_rows = sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM json_to_recordset(%s::json) "
        "AS r({definitions}) ORDER BY {pk} "
    ).format(table=table, cols=_ids(written), definitions=definitions, pk=pk)
    selected = _ids(m.selected_columns)
    select_one = sql.SQL("SELECT {cols} FROM {table} WHERE {pk} = %s").format(
        cols=selected, table=table, pk=pk
    )
    select_all = sql.SQL("SELECT {cols} FROM {table} ORDER BY {pk}").format(
        cols=selected, table=table, pk=pk
    )
    delete = sql.SQL("DELETE FROM {table} WHERE {pk} = %s").format(table=table, pk=pk)
    count = sql.SQL("SELECT count(*) FROM {table}").format(table=table)
    find = None
    if m.login_columns:
        # One statement: an index probe per rule step, in rule order, stopping at the first hit
        # (UNION ALL + LIMIT never runs the later branches once a row is found). The compared
        # expressions are exactly those of the schema's indexes.
        branch = sql.SQL(
            "(SELECT {cols} FROM {table} WHERE {expr} = {param} ORDER BY {pk} LIMIT 1)"
        )
        branches = [
            branch.format(
                cols=selected, table=table, expr=expr, param=param + sql.SQL("::text"), pk=pk
            )
            for _, expr, param in login_probes(m.entity)
        ]
        find = _render(sql.SQL(" UNION ALL ").join(branches) + sql.SQL(" LIMIT 1"))
    membership_delete = membership_insert = None
    if m.memberships:
        mm = m.memberships
        mcols = [mm.owner_column, *(name for name, _ in mm.columns)]
        mtypes = ["text", *(t for _, t in mm.columns)]
        membership_delete = _render(
            sql.SQL("DELETE FROM {t} WHERE {owner} = ANY(%s::text[])").format(
                t=sql.Identifier(mm.table), owner=sql.Identifier(mm.owner_column)
            )
        )
        membership_insert = _render(
            sql.SQL("INSERT INTO {t} ({cols}) VALUES ({ph}) ON CONFLICT DO NOTHING").format(
                t=sql.Identifier(mm.table),
                cols=_ids(mcols),
                ph=sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in mtypes),
            )
        )
    return _Statements(
        upsert_rows=_render(from_rows + on_conflict),
        upsert_rows_count=_render(from_rows + on_conflict_count),
        on_conflict=on_conflict,
        select_one=_render(select_one),
        select_all=_render(select_all),
        delete=_render(delete),
        count=_render(count),
        find=find,
        membership_delete=membership_delete,
        membership_insert=membership_insert,
    )


def login_probes(entity: str) -> list[tuple[str, sql.Composable, sql.Composable]]:
    """(column, compared expression, parameter) of each login probe of `entity`: the
    expressions of the schema's login indexes, in the rule's order (logins.py)."""
    mapping = entity_map(entity)
    if not mapping.login_columns:
        raise ValueError(f"{entity} has no logins")
    probes = [
        (c, sql.SQL(LOGIN_SQL).format(sql.Identifier(c)), sql.Placeholder("login"))
        for c in mapping.login_columns
    ]
    if mapping.login_id_column:
        column = mapping.login_id_column
        expr = sql.SQL(LOGIN_ID_SQL).format(sql.Identifier(column))
        probes.insert(0, (column, expr, sql.Placeholder("login_id")))
    return probes
