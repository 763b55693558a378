"""Filtered reads on the PostgreSQL side that the record API does not cover.

Each returns records through `rows.to_record`, so what a filter finds is exactly what
`get_record` would give for the same key.
"""

from __future__ import annotations

import functools
from typing import Any

import psycopg
from psycopg import sql

from provisioner.storage.logins import normalize_login, normalize_login_id
from provisioner.storage.model import StoredRecord
from provisioner.storage.pg.maps import entity_map
from provisioner.storage.pg.rows import to_record
from provisioner.storage.pg.statements import login_probes


@functools.cache
def _select_where(entity: str, column: str, op: str) -> bytes:
    mapping = entity_map(entity)
    if op not in {"=", "ilike", "any"}:
        raise ValueError(f"unsupported filter {op!r}")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in mapping.selected_columns)
    target = sql.Identifier(column)
    if op == "=":
        cond = sql.SQL("{} = %s").format(target)
    elif op == "ilike":
        cond = sql.SQL("{} ILIKE %s").format(target)
    else:
        cond = sql.SQL("%s = ANY({})").format(target)
    query = sql.SQL("SELECT {cols} FROM {table} WHERE {cond} ORDER BY {pk}").format(
        cols=cols,
        table=sql.Identifier(mapping.table),
        cond=cond,
        pk=sql.Identifier(mapping.key_column),
    )
    return query.as_bytes(None)


def records_where(
    conn: psycopg.Connection[Any], entity: str, column: str, value: Any, op: str = "="
) -> list[StoredRecord]:
    """Records of `entity` whose `column` matches `value` (`=`, `ilike`, or `any` for arrays)."""
    rows = conn.execute(_select_where(entity, column, op), (value,)).fetchall()
    return [to_record(entity, row) for row in rows]


def search_logins(conn: psycopg.Connection[Any], entity: str, text: str) -> list[StoredRecord]:
    """Records whose username or email contains `text`, case-insensitively (LIKE escaped)."""
    pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    mapping = entity_map(entity)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in mapping.selected_columns)
    query = sql.SQL(
        "SELECT {cols} FROM {table} WHERE username ILIKE %(p)s OR email ILIKE %(p)s ORDER BY {pk}"
    ).format(cols=cols, table=sql.Identifier(mapping.table), pk=sql.Identifier(mapping.key_column))
    rows = conn.execute(query, {"p": pattern}).fetchall()
    return [to_record(entity, row) for row in rows]


def _candidate_rows(entity: str) -> sql.Composed:
    """`entity`'s rows a login could name, two at most per probe (two are enough to see that a
    login is ambiguous)."""
    mapping = entity_map(entity)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in mapping.selected_columns)
    branch = sql.SQL(
        "(SELECT {cols} FROM {table} WHERE {expr} = {param}::text ORDER BY {pk} LIMIT 2)"
    )
    return sql.SQL(" UNION ALL ").join(
        branch.format(
            cols=cols,
            table=sql.Identifier(mapping.table),
            expr=expr,
            param=param,
            pk=sql.Identifier(mapping.key_column),
        )
        for _, expr, param in login_probes(entity)
    )


def _any_candidate(entity: str) -> sql.Composed:
    """Whether `entity` holds a record a login could name (an index probe each, no rows)."""
    table = sql.Identifier(entity_map(entity).table)
    probe = sql.SQL("EXISTS (SELECT 1 FROM {table} WHERE {expr} = {param}::text)")
    return (
        sql.SQL("(")
        + sql.SQL(" OR ").join(
            probe.format(table=table, expr=expr, param=param)
            for _, expr, param in login_probes(entity)
        )
        + sql.SQL(")")
    )


@functools.cache
def _candidates_query(entity: str) -> bytes:
    return _candidate_rows(entity).as_bytes(None)


@functools.cache
def _first_and_others_query(entities: tuple[str, ...]) -> bytes:
    """The first entity's candidate rows, and whether each other entity holds a candidate, in
    one statement: one row per candidate of the first (one row of NULLs when none)."""
    first, *others = entities
    selected = [
        sql.SQL("c.{}").format(sql.Identifier(c)) for c in entity_map(first).selected_columns
    ]
    query = sql.SQL(
        "SELECT {cols} FROM (SELECT 1) AS one LEFT JOIN LATERAL ({rows}) AS c ON true"
    ).format(
        cols=sql.SQL(", ").join([*selected, *(_any_candidate(e) for e in others)]),
        rows=_candidate_rows(first),
    )
    return query.as_bytes(None)


def login_candidates(
    conn: psycopg.Connection[Any], entities: tuple[str, ...], login: Any
) -> dict[str, list[StoredRecord]]:
    """Per entity, the records `login` could name by the lookup rule (case-insensitive
    usernames and emails, exact operator ids), each once.

    One round trip when only the first entity (customers, the usual login) has candidates:
    the same statement only asks whether the others hold any; their records are fetched (in
    one more round trip) only when they do."""
    params = {"login": normalize_login(login), "login_id": normalize_login_id(login)}
    found: dict[str, list[StoredRecord]] = {entity: [] for entity in entities}
    if params["login"] is None and params["login_id"] is None:
        return found
    first, *others = entities
    width = len(entity_map(first).selected_columns)
    rows = conn.execute(_first_and_others_query(entities), params).fetchall()
    records: dict[str, StoredRecord] = {}
    for row in rows:
        if row[0] is not None and row[0] not in records:
            records[row[0]] = to_record(first, row[:width])
    found[first] = list(records.values())
    wanted = [entity for entity, n in zip(others, rows[0][width:], strict=True) if n]
    if wanted:
        with conn.pipeline():
            cursors = [conn.execute(_candidates_query(e), params) for e in wanted]
        for entity, cursor in zip(wanted, cursors, strict=True):
            by_key = {}
            for row in cursor.fetchall():
                record = to_record(entity, row)
                by_key.setdefault(record.key, record)
            found[entity] = list(by_key.values())
    return found
