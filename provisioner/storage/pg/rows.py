"""Records to rows and back, by the round-trip rule `to_record(from_record(r)) == r`.

Fields with no column stay in `extra`; absent fields, original values and key orders that
would not come back by themselves are kept there too. Plaintext test passwords are dropped
before anything is stored (docs/data-layer.md, "PostgreSQL").
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from provisioner.storage.model import PLAINTEXT_PASSWORD_FIELDS, StoredRecord
from provisioner.storage.pg.columns import (
    _CONVERSION_ERRORS,
    _RESERVED_FIELDS,
    ABSENT_KEY,
    MAPPING_VERSION,
    ORDER_KEY,
    ORIG_KEY,
    RecordMappingError,
)
from provisioner.storage.pg.maps import ENTITY_MAPS, entity_map

# ---------------------------------------------------------------------------------------------
# Record <-> row
# ---------------------------------------------------------------------------------------------


def _check_text(text: str, where: str) -> str:
    if "\x00" in text:
        raise RecordMappingError(f"{where}: contains a NUL character, which PostgreSQL rejects")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordMappingError(f"{where}: not valid Unicode text") from None
    return text


def _check_float(number: float, where: str) -> float:
    if not math.isfinite(number) or "e+" in repr(number):
        raise RecordMappingError(
            f"{where}: the float {number!r} cannot be stored and given back as a float; "
            "store it as a string or an int"
        )
    return number


def _clean(value: Any, where: str) -> Any:
    """A deep copy of a JSON value without plaintext password fields, checked to be storable.

    Refused (PostgreSQL could not give them back): NUL characters, strings that are not valid
    Unicode, and floats so large that their JSON form has an exponent (jsonb would turn 1e+16
    into the int 10000000000000000). Scalars are handled inline and plain ASCII text without
    NUL passes two C-level tests, so error locations are only spelled out for a value that
    fails them: this runs on every write.
    """
    kind = type(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for name, item in value.items():
            if type(name) is not str:
                raise RecordMappingError(f"{where}: field name {name!r} is not a string")
            if name in PLAINTEXT_PASSWORD_FIELDS:
                continue
            if "\x00" in name or not name.isascii():
                _check_text(name, f"{where} (a field name)")
            item_kind = type(item)
            if item_kind is str:
                if "\x00" in item or not item.isascii():
                    _check_text(item, f"{where}.{name}")
                out[name] = item
            elif item is None or item_kind is int or item_kind is bool:
                out[name] = item
            else:
                out[name] = _clean(item, f"{where}.{name}")
        return out
    if kind is list:
        return [_clean(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is str:
        return _check_text(value, where)
    if value is None or kind is int or kind is bool:
        return value
    if kind is float:
        return _check_float(value, where)
    raise RecordMappingError(f"{where}: {kind.__name__} is not a JSON value")


# The canonical JSON of a content hash: json.dumps(..., sort_keys=True, ensure_ascii=False,
# separators=(",", ":")) spelled as one reusable encoder (json.dumps builds a new one per call
# for non-default options). Key order never matters. Cycles cannot reach it (_clean recurses).
_canonical_json = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode
# The rows of a write as one json_to_recordset parameter (key order is irrelevant there).
_rows_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
).encode


def _content_hash(key: str, data: dict[str, Any], placement: dict[str, Any]) -> str:
    canonical = _canonical_json([MAPPING_VERSION, key, data, placement])
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _pop_path(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    """Take the field at `path` out of `data` in place; _MISSING when there is none."""
    parent: Any = data
    for name in path[:-1]:
        parent = parent.get(name) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and path[-1] in parent:
        return parent.pop(path[-1])
    return _MISSING


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    parent = data
    for name in path[:-1]:
        child = parent.get(name)
        if not isinstance(child, dict):
            child = parent[name] = {}
        parent = child
    parent[path[-1]] = value


@dataclass(slots=True)
class RowImage:
    """One record as the values of its row (unwrapped), and its derived membership rows.

    `extra` is the extra column without its key order; `order` (the `__order__` entries, or
    None when every object comes back in order by itself) joins it when the row is written.
    """

    entity: str
    key: str
    values: list[Any]
    extra: dict[str, Any]
    placement: dict[str, Any]
    content_hash: str
    memberships: list[tuple[Any, ...]] = field(default_factory=list)
    order: list[list[Any]] | None = None

    @property
    def stored_extra(self) -> dict[str, Any]:
        """The extra column as written: `extra`, plus `__order__` when there is one."""
        if self.order is None:
            return self.extra
        return {**self.extra, ORDER_KEY: self.order}

    def params(self) -> list[Any]:
        """The row as query parameters, in EntityMap.written_columns order."""
        mapping = ENTITY_MAPS[self.entity]
        wrapped = [
            c.type.wrap(v) if c.type.wrap else v
            for c, v in zip(mapping.columns, self.values, strict=True)
        ]
        return [
            self.key,
            *wrapped,
            Jsonb(self.stored_extra),
            Jsonb(self.placement),
            self.content_hash,
        ]

    def selected(self) -> tuple[Any, ...]:
        """The row as a SELECT of EntityMap.selected_columns returns it (for checks in Python;
        objects keep their Python key order here, where jsonb would sort them)."""
        extra = json.loads(json.dumps(self.stored_extra))
        return (self.key, *self.values, extra, dict(self.placement))


_MISSING = object()


_Lifted = tuple[tuple[tuple[str, ...], str | None, str, Callable[[Any], tuple[Any, bool]]], ...]


@functools.cache
def _lifted(entity: str) -> _Lifted:
    """Per column of `entity`: its path, its field name when top-level (popped in one step, a
    nested path goes through _pop_path), its dotted name and its converter."""
    return tuple(
        (
            column.path,
            column.path[0] if len(column.path) == 1 else None,
            column.dotted,
            column.type.convert,
        )
        for column in ENTITY_MAPS[entity].columns
    )


_Path = tuple[str | int, ...]


@functools.cache
def _lifted_leaves(entity: str) -> dict[_Path, tuple[str, ...]]:
    """Per object path holding lifted fields, their names in the order to_record sets them
    back (after the object's other keys): the key field first, then the columns in map order."""
    mapping = ENTITY_MAPS[entity]
    leaves: dict[_Path, list[str]] = {}
    if mapping.key_field:
        leaves[()] = [mapping.key_field]
    for column in mapping.columns:
        leaves.setdefault(column.path[:-1], []).append(column.path[-1])
    return {path: tuple(names) for path, names in leaves.items()}


def _jsonb_key(name: str) -> tuple[int, str]:
    """How jsonb orders object keys: shorter (in UTF-8 bytes) first, then bytewise, which for
    valid Unicode is code point order, Python's string order."""
    return (len(name.encode("utf-8")), name)


def _jsonb_order(names: list[str]) -> list[str]:
    """`names` in jsonb order. For ASCII names (nearly all) two sorts done in C give it: by
    name, then, stably, by length."""
    if "".join(names).isascii():
        return sorted(sorted(names), key=len)
    return sorted(names, key=_jsonb_key)


# Keyed by the shape of an object, which records of one entity share: a write checks each
# shape once, then pays a lookup per object.
@functools.lru_cache(maxsize=8192)
def _comes_back_in_order(lifted: tuple[str, ...] | None, keys: tuple[str, ...]) -> bool:
    """Whether an object with `keys`, in this order, comes back from to_record in the same
    order with no help: its keys in jsonb order, then those of `lifted` (the fields lifted
    out of it, in the order to_record sets them back) it holds."""
    names = list(keys)
    present = [name for name in lifted if name in keys] if lifted else []
    if present:
        rest = [name for name in names if name not in present]
        return _jsonb_order(rest) + present == names
    return _jsonb_order(names) == names


def _key_orders(
    obj: dict[str, Any],
    path: _Path,
    leaves: dict[_Path, tuple[str, ...]],
    out: list[list[Any]],
) -> None:
    """Append `[path, keys]` to `out` for `obj` and every object inside it whose key order
    to_record would not rebuild by itself.

    Without help, an object comes back with its keys in jsonb order, except that the fields
    lifted out of it (`leaves`, for the record itself and parents of nested columns) come
    after the others, in map order. The path is a JSON array (object keys as strings, list
    indices as ints), so it is unambiguous whatever the field names hold.
    """
    if len(obj) > 1:
        keys = tuple(obj)
        if not _comes_back_in_order(leaves.get(path), keys):
            out.append([list(path), list(keys)])
    for name, item in obj.items():
        kind = type(item)
        if kind is dict:
            _key_orders(item, (*path, name), leaves, out)
        elif kind is list:
            _list_key_orders(item, (*path, name), leaves, out)


def _list_key_orders(
    items: list[Any], path: _Path, leaves: dict[_Path, tuple[str, ...]], out: list[list[Any]]
) -> None:
    """_key_orders for the objects inside a list (lists themselves keep their order)."""
    for index, item in enumerate(items):
        kind = type(item)
        if kind is dict:
            _key_orders(item, (*path, index), leaves, out)
        elif kind is list:
            _list_key_orders(item, (*path, index), leaves, out)


def _child(node: Any, step: Any) -> Any:
    """The item `step` (a key or a list index) of `node`, or None when there is none."""
    if type(step) is str and type(node) is dict:
        return node.get(step)
    if type(step) is int and type(node) is list and 0 <= step < len(node):
        return node[step]
    return None


def _restore_key_orders(data: dict[str, Any], orders: Any) -> None:
    """Reorder, in place, each object `orders` lists; keys it does not list (none should)
    go last in their current order, and a path that leads nowhere is passed over."""
    if not isinstance(orders, list):
        return
    for entry in orders:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            continue
        path, keys = entry
        node: Any = data
        for step in path:
            node = _child(node, step)
        if type(node) is not dict or not isinstance(keys, list):
            continue
        ordered = {name: node[name] for name in keys if type(name) is str and name in node}
        if len(ordered) != len(node):
            ordered.update((name, value) for name, value in node.items() if name not in ordered)
        node.clear()
        node.update(ordered)


def lift_columns(
    entity: str,
    key: str,
    data: dict[str, Any],
    pop_nested: Callable[[dict[str, Any], tuple[str, ...]], Any] = _pop_path,
) -> tuple[list[Any], dict[str, Any], list[str]]:
    """Take the key field and the lifted fields out of `data`, which is left as what remains
    for `extra`: (the lifted columns' values, the originals of values a column cannot hold
    exactly, the fields absent). `pop_nested(data, path)` takes a nested field out, _MISSING
    when there is none (by default in `data` itself; the backfill's fast path copies the
    objects on the way instead, so the parsed record is never changed)."""
    mapping = entity_map(entity)
    orig: dict[str, Any] = {}
    absent: list[str] = []
    key_field = mapping.key_field
    if key_field:
        value = data.pop(key_field, _MISSING)
        if value is _MISSING:
            absent.append(key_field)
        elif type(value) is not type(key) or value != key:  # strictly_equal for a str key
            orig[key_field] = value
    values: list[Any] = []
    for path, field_name, dotted, convert in _lifted(entity):
        value = data.pop(field_name, _MISSING) if field_name is not None else pop_nested(data, path)
        if value is _MISSING:
            absent.append(dotted)
            values.append(None)
            continue
        try:
            stored, exact = convert(value)
        except _CONVERSION_ERRORS:
            orig[dotted] = value
            values.append(None)
            continue
        if not exact:
            orig[dotted] = value
        values.append(stored)
    return values, orig, absent


def from_record(record: StoredRecord) -> RowImage:
    """The row image of `record`: plaintext dropped, fields lifted into typed columns."""
    mapping = entity_map(record.entity)
    key, raw, raw_placement = record.key, record.data, record.placement
    if not isinstance(key, str) or not key or "\x00" in key:
        raise RecordMappingError(f"{record.entity}: key {key!r} must be a non-empty string")
    where = f"{record.entity} {key!r}"
    if not key.isascii():
        _check_text(key, f"{where} (the key)")
    if not isinstance(raw, dict):
        raise RecordMappingError(f"{where}: data must be an object, not {type(raw).__name__}")
    if not isinstance(raw_placement, dict):
        raise RecordMappingError(f"{where}: placement must be an object")
    if ORIG_KEY in raw or ABSENT_KEY in raw or ORDER_KEY in raw:
        reserved = sorted(_RESERVED_FIELDS & raw.keys())
        raise RecordMappingError(f"{where}: field name(s) {reserved} are reserved")
    data: dict[str, Any] = _clean(raw, where)
    placement: dict[str, Any] = _clean(raw_placement, f"{where} placement") if raw_placement else {}
    content_hash = _content_hash(key, data, placement)
    memberships = mapping.memberships.derive(key, data) if mapping.memberships else []
    orders: list[list[Any]] = []
    _key_orders(data, (), _lifted_leaves(record.entity), orders)

    # From here `data` is consumed into what remains for `extra`.
    values, orig, absent = lift_columns(record.entity, key, data)
    if orig:
        data[ORIG_KEY] = orig
    if absent:
        data[ABSENT_KEY] = absent
    return RowImage(
        record.entity, key, values, data, placement, content_hash, memberships, orders or None
    )


def to_record(entity: str, row: tuple[Any, ...]) -> StoredRecord:
    """The record a row holds; `row` is a SELECT of EntityMap.selected_columns (consumed)."""
    mapping = entity_map(entity)
    key, *values = row[:-2]
    data: dict[str, Any] = dict(row[-2])
    placement: dict[str, Any] = dict(row[-1])
    orig: dict[str, Any] = data.pop(ORIG_KEY, {})
    absent = set(data.pop(ABSENT_KEY, ()))
    orders = data.pop(ORDER_KEY, None)
    if mapping.key_field and mapping.key_field not in absent:
        data[mapping.key_field] = orig.get(mapping.key_field, key)
    for column, stored in zip(mapping.columns, values, strict=True):
        name = column.dotted
        if name in absent:
            continue
        _set_path(data, column.path, orig[name] if name in orig else column.type.from_db(stored))
    if orders:
        _restore_key_orders(data, orders)
    return StoredRecord(entity, key, data, placement)
