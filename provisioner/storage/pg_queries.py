"""Filtered reads on the PostgreSQL side that the record API does not cover.

Each returns records through `pg_records.to_record`, so what a filter finds is exactly what
`get_record` would give for the same key.
"""

from __future__ import annotations

import functools
from typing import Any

import psycopg
from psycopg import sql

from provisioner.storage.model import StoredRecord
from provisioner.storage.pg_records import entity_map, to_record


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
