"""The COPY row of a record parsed from a JSON file, without the deep copy `from_record` makes.

`from_record` (the layer's mapping) first deep-copies the record, checking each value on the
way (`_clean`: no NUL, valid Unicode, storable floats, plaintext passwords dropped): that copy
is most of the cost of a backfill. A record the backfill reads comes from `json.loads`, so it
holds nothing but JSON types with string keys; for such a record every check can be read off
the canonical JSON the content hash is made of anyway, and the copy is not needed, because the
row is turned into COPY text at once and the record is never changed: only the objects the
lifted fields are taken out of are copied (shallowly). Any record that is not plainly fine
(a NUL, an invalid string, a float PostgreSQL could not give back, a plaintext password field,
a reserved field name, or a spelling that merely looks like one of these) gets `None` here and
goes through `from_record`, which stores it or says why not.

The row is exactly `from_record(record).params()` with jsonb values as their JSON text
(tests/test_migration_fast_rows.py compares the two on every generated record and on
records built to hit each check).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from provisioner.migration.storage_bridge import (
    ENTITY_MAPS,
    PLAINTEXT_PASSWORD_FIELDS,
    StoredRecord,
    mapping_internals,
)

_dumps = json.dumps
_sha256 = hashlib.sha256
# Text in a canonical JSON that may mean a value from_record refuses or changes: an escaped NUL
# (a literal backslash before "u0000" also matches: it then takes the checked path), floats
# with an exponent or not finite, and plaintext password field names.
_SUSPECT: tuple[str, ...] = (
    "\\u0000",
    "e+",
    "NaN",
    "Infinity",
    *(json.dumps(name) + ":" for name in sorted(PLAINTEXT_PASSWORD_FIELDS)),
)

_INTERNALS = mapping_internals()


def _wrap_types(entity: str) -> list[bool]:
    """Per lifted column: whether its value goes out as JSON text (the wrapped ones: jsonb)."""
    return [c.type.wrap is not None for c in ENTITY_MAPS[entity].columns]


_JSONB_COLUMNS: dict[str, list[bool]] = {}


def fast_row(entity: str, record: StoredRecord) -> tuple[list[Any], list[tuple[Any, ...]]] | None:
    """(COPY params with jsonb as JSON text, membership rows) of a record parsed from JSON,
    or None when it must go through from_record (see the module docstring)."""
    internals = _INTERNALS
    if internals is None:
        return None
    key, raw, placement = record.key, record.data, record.placement
    if type(key) is not str or not key or not key.isascii() or "\x00" in key:
        return None
    if type(raw) is not dict or type(placement) is not dict:
        return None
    if not internals.reserved.isdisjoint(raw):
        return None
    canonical: str = internals.canonical([internals.version, key, raw, placement])
    for suspect in _SUSPECT:
        if suspect in canonical:
            return None
    try:
        blob = canonical.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: from_record says where
        return None
    content_hash = _sha256(blob).hexdigest()
    mapping = ENTITY_MAPS[entity]
    memberships = mapping.memberships.derive(key, raw) if mapping.memberships else []
    orders: list[list[Any]] = []
    internals.key_orders(raw, (), internals.leaves(entity), orders)

    data = dict(raw)
    copied: set[tuple[str, ...]] = set()
    missing = internals.missing

    def pop_nested(data: dict[str, Any], path: tuple[str, ...]) -> Any:
        return _pop_nested(data, path, copied, missing)

    lifted, orig, absent = internals.lift_columns(entity, key, data, pop_nested)
    jsonb = _JSONB_COLUMNS.get(entity)
    if jsonb is None:
        jsonb = _JSONB_COLUMNS[entity] = _wrap_types(entity)
    values: list[Any] = [key]
    values.extend(
        _dumps(value) if as_json and value is not None else value
        for value, as_json in zip(lifted, jsonb, strict=True)
    )
    if orig:
        data[internals.orig_key] = orig
    if absent:
        data[internals.absent_key] = absent
    if orders:
        data[internals.order_key] = orders
    values.append(_dumps(data))
    values.append(_dumps(placement))
    values.append(content_hash)
    return values, memberships


def _pop_nested(
    data: dict[str, Any], path: tuple[str, ...], copied: set[tuple[str, ...]], missing: object
) -> Any:
    """Take the field at `path` out of `data`, copying (once, shallowly) each object on the
    way, so the record's own objects are never changed; `missing` when there is none."""
    parent: Any = data
    for depth, name in enumerate(path[:-1]):
        child = parent.get(name) if type(parent) is dict else None
        if type(child) is not dict:
            return missing
        prefix = path[: depth + 1]
        if prefix not in copied:
            child = parent[name] = dict(child)
            copied.add(prefix)
        parent = child
    return parent.pop(path[-1], missing)


RowBuilder = Callable[[str, StoredRecord], tuple[list[Any], list[tuple[Any, ...]]] | None]
