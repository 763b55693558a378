"""Everything the backfill and the validation take from `provisioner.storage`, in one place.

When the storage package's paths move, this import block is the one to change. Three helpers
reach past the public API, each with a public fallback, so a rename costs speed, never
correctness:
- `json_records`: the store's records without the private copy `load()` makes of each (the
  backfill and the validation only read them, and from_record copies what it keeps);
- `record_hash`: the layer's content hash of a record without the full row conversion;
- `mapping_internals`: the pieces of `from_record` that `fast_rows` reuses (None when one is
  missing: every row then goes through from_record).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from provisioner.storage.aeims.catalog import CATALOG, NOT_ENTITY_FILES
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.layer.datalayer import write_turn
from provisioner.storage.model import (
    ENTITIES,
    PLAINTEXT_PASSWORD_FIELDS,
    StoredRecord,
    strip_plaintext,
)
from provisioner.storage.pg import columns as pg_columns
from provisioner.storage.pg import rows as pg_rows
from provisioner.storage.pg.columns import ORDER_KEY, RecordMappingError
from provisioner.storage.pg.maps import ENTITY_MAPS, EntityMap
from provisioner.storage.pg.rows import RowImage, from_record, to_record
from provisioner.storage.pg.schema_versions import (
    MigrationError,
    apply_migrations,
    pending_migrations,
)
from provisioner.storage.pg.statements import conflict_updates
from provisioner.storage.phpjson.errors import JsonFileError
from provisioner.storage.phpjson.limits import gc_paused
from provisioner.storage.phpjson.read import forget_cached
from provisioner.storage.timestamps import parse_timestamp

__all__ = [
    "CATALOG",
    "ENTITIES",
    "ENTITY_MAPS",
    "NOT_ENTITY_FILES",
    "ORDER_KEY",
    "PLAINTEXT_PASSWORD_FIELDS",
    "AeimsJsonStore",
    "EntityMap",
    "JsonFileError",
    "MigrationError",
    "RecordMappingError",
    "RowImage",
    "StoredRecord",
    "apply_migrations",
    "conflict_updates",
    "data_files",
    "forget_entity_files",
    "from_record",
    "gc_paused",
    "json_equal",
    "json_records",
    "mapping_internals",
    "parse_timestamp",
    "pending_migrations",
    "record_hash",
    "strip_plaintext",
    "to_record",
    "write_turn",
]


def json_records(store: AeimsJsonStore, entity: str) -> Iterable[StoredRecord]:
    """The records of `entity` in file order, shared with the store's index: read, never change.

    JsonFileError when a file of the entity cannot be read."""
    index = getattr(store, "_index", None)
    if index is not None:
        try:
            return list(index(entity).records.values())
        except AttributeError:
            pass
    return store.load(entity)


def data_files(store: AeimsJsonStore) -> list[tuple[str, str]]:
    """(entity, relative path) of every JSON file the data layer knows, in entity order."""
    return [(entity, fs.relpath) for entity in ENTITIES for fs in CATALOG[entity].files]


def forget_entity_files(store: AeimsJsonStore, entity: str) -> None:
    """Drop the parse cache of an entity's files once it is done (a big file's cache holds
    several times its size); the next reader parses them again."""
    for path in store.file_paths(entity):
        forget_cached(path)
    indexes = getattr(store, "_indexes", None)
    if isinstance(indexes, dict):
        indexes.pop(entity, None)


_content_hash: Any = getattr(pg_rows, "_content_hash", None)


def record_hash(record: StoredRecord) -> str:
    """The content hash the row of `record` stores (plaintext passwords never hashed).

    RecordMappingError when the record cannot be stored. Records without plaintext at the top
    level take the fast path; any other goes through from_record, which strips at any depth."""
    data = record.data
    if _content_hash is not None and type(data) is dict and type(record.key) is str:
        if not PLAINTEXT_PASSWORD_FIELDS.isdisjoint(data):
            data = {k: v for k, v in data.items() if k not in PLAINTEXT_PASSWORD_FIELDS}
        try:
            return str(_content_hash(record.key, data, record.placement))
        except (TypeError, ValueError):
            pass  # not encodable as given: from_record says why
    return from_record(record).content_hash


_INTERNAL_NAMES = {
    "version": "MAPPING_VERSION",
    "canonical": "_canonical_json",
    "reserved": "_RESERVED_FIELDS",
    "key_orders": "_key_orders",
    "leaves": "_lifted_leaves",
    "lift_columns": "lift_columns",
    "missing": "_MISSING",
    "orig_key": "ORIG_KEY",
    "absent_key": "ABSENT_KEY",
    "order_key": "ORDER_KEY",
}


def mapping_internals() -> SimpleNamespace | None:
    """The mapping's own pieces the fast row path is made of, or None when one is gone."""
    found = {
        name: getattr(pg_rows, attr, None) or getattr(pg_columns, attr, None)
        for name, attr in _INTERNAL_NAMES.items()
    }
    if any(value is None for value in found.values()):
        return None
    return SimpleNamespace(**found)
