"""Orphan references: ids and domains a record names that no record of the target has.

The files hold orphans on purpose (a customer's `demo.example.com`, verifications of operators
that do not exist), and the migration keeps them: an orphan is a mismatch only when the two
sides disagree on it (a record PostgreSQL lost leaves its referrers dangling there only). The
validation counts the orphans of each reference (JSON side) and compares the sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from provisioner.migration.storage_bridge import ENTITY_MAPS, StoredRecord


@dataclass(frozen=True)
class Reference:
    """`child` records name a `target` record: by the key in `column`, or (memberships) a
    site by its domain."""

    child: str
    column: str
    target: str
    membership: bool = False

    @property
    def label(self) -> str:
        if self.membership:
            table = ENTITY_MAPS[self.child].memberships
            assert table is not None
            return f"{table.table}.domain -> {self.target}"
        return f"{self.child}.{self.column} -> {self.target}"


REFERENCES: tuple[Reference, ...] = (
    Reference("customers", "domain", "sites", membership=True),
    Reference("operators", "domain", "sites", membership=True),
    Reference("chat_rooms", "operator_id", "operators"),
    Reference("room_messages", "room_id", "chat_rooms"),
    Reference("conversations", "customer_id", "customers"),
    Reference("conversations", "operator_id", "operators"),
    Reference("messages", "conversation_id", "conversations"),
    Reference("content_purchases", "customer_id", "customers"),
    Reference("transactions", "customer_id", "customers"),
    Reference("customer_activity", "customer_id", "customers"),
    Reference("id_verifications", "operator_id", "operators"),
)
TARGETS = frozenset(ref.target for ref in REFERENCES)


def site_domain(value: Any) -> str | None:
    """A site's domain as memberships hold it (trimmed, lower-case)."""
    if not isinstance(value, str):
        return None
    return value.strip(" ").lower() or None


def target_values(entity: str, records: Iterable[StoredRecord]) -> set[str]:
    """What references to `entity` may name: site domains for sites, else record keys."""
    if entity == "sites":
        return {d for d in (site_domain(r.data.get("domain")) for r in records) if d}
    return {r.key for r in records}


def _column_value(data: Any, path: tuple[str, ...]) -> str | None:
    """The referencing field as its text column holds it (ints as text, other types none)."""
    for name in path:
        data = data.get(name) if isinstance(data, dict) else None
    if isinstance(data, bool) or data is None:
        return None
    if isinstance(data, int):
        return str(data)
    return data if isinstance(data, str) else None


def json_orphans(
    ref: Reference,
    records: Iterable[StoredRecord],
    targets: set[str],
    *,
    derived: dict[str, set[tuple[Any, ...]]] | None = None,
) -> set[tuple[str, str]]:
    """(child key, named value) of the JSON references that resolve to nothing. `derived`:
    the membership rows of `records` by key (those with any), when already derived."""
    mapping = ENTITY_MAPS[ref.child]
    found: set[tuple[str, str]] = set()
    if ref.membership and derived is not None:
        for key, rows in derived.items():
            for row in rows:
                if row[1] not in targets:
                    found.add((key, row[1]))
        return found
    if ref.membership:
        assert mapping.memberships is not None
        derive = mapping.memberships.derive
        for record in records:
            for row in derive(record.key, record.data):
                if row[1] not in targets:
                    found.add((record.key, row[1]))
        return found
    (column,) = [c for c in mapping.columns if c.name == ref.column]
    for record in records:
        value = _column_value(record.data, column.path)
        if value is not None and value not in targets:
            found.add((record.key, value))
    return found


def _pg_orphans_sql(ref: Reference) -> sql.Composed:
    child = ENTITY_MAPS[ref.child]
    target = ENTITY_MAPS[ref.target]
    if ref.membership:
        assert child.memberships is not None
        owner = sql.Identifier(child.memberships.owner_column)
        return sql.SQL(
            "SELECT m.{owner}, m.domain FROM {table} m WHERE NOT EXISTS "
            "(SELECT 1 FROM {sites} s WHERE lower(btrim(s.domain)) = m.domain)"
        ).format(
            owner=owner,
            table=sql.Identifier(child.memberships.table),
            sites=sql.Identifier(target.table),
        )
    return sql.SQL(
        "SELECT c.{pk}, c.{col} FROM {child} c WHERE c.{col} IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM {target} t WHERE t.{tpk} = c.{col})"
    ).format(
        pk=sql.Identifier(child.key_column),
        col=sql.Identifier(ref.column),
        child=sql.Identifier(child.table),
        target=sql.Identifier(target.table),
        tpk=sql.Identifier(target.key_column),
    )


def pg_orphans(conn: psycopg.Connection, ref: Reference) -> set[tuple[str, str]]:
    """(child key, named value) of the PostgreSQL references that resolve to nothing."""
    return {(str(k), str(v)) for k, v in conn.execute(_pg_orphans_sql(ref)).fetchall()}
