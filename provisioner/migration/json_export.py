"""PostgreSQL's records written back into the JSON files, as the PHP application reads them.

Used when leaving pg_only: the writes made since JSON stopped being written exist only in
PostgreSQL, and the files must get them before anyone reads JSON again. Each entity is rewritten
through the data layer's JSON store (its shapes, placements, key order and encoding), under the
entity's write turn, so no write of the layer interleaves. The plaintext test passwords that
never entered PostgreSQL are put back from the files where the record is otherwise unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from provisioner.migration.storage_access import (
    ENTITIES,
    PLAINTEXT_PASSWORD_FIELDS,
    AeimsJsonStore,
    StoredRecord,
    entity_turn,
    iter_pg_records,
    json_equal,
    open_layer,
)


def export_to_json(
    conn: psycopg.Connection[Any], data_dir: Path, dsn: str | None
) -> dict[str, int]:
    """Make every entity's file(s) hold PostgreSQL's records; per entity, how many."""
    layer = open_layer(data_dir, dsn)
    store = AeimsJsonStore(data_dir)
    written: dict[str, int] = {}
    try:
        for entity in ENTITIES:
            with entity_turn(layer, entity):
                current = {r.key: r for r in store.load(entity)}
                records = [
                    _with_plaintext(r, current.get(r.key)) for r in iter_pg_records(conn, entity)
                ]
                store.replace_all(entity, records)
            written[entity] = len(records)
    finally:
        layer.close()
    return written


def _with_plaintext(record: StoredRecord, in_file: StoredRecord | None) -> StoredRecord:
    """The record, with the file's plaintext test password fields where they still apply: the
    whole file copy when the record is otherwise the same, else the fields alone when no
    password field changed."""
    if in_file is None:
        return record
    if json_equal(in_file.without_plaintext().data, record.data):
        return StoredRecord(record.entity, record.key, in_file.data, record.placement)
    kept = {k: v for k, v in in_file.data.items() if k in PLAINTEXT_PASSWORD_FIELDS}
    if not kept:
        return record
    changed = any(
        "password" in field and in_file.data.get(field) != record.data.get(field)
        for field in set(in_file.data) | set(record.data)
        if field not in PLAINTEXT_PASSWORD_FIELDS
    )
    if changed:
        return record
    data: dict[str, Any] = {}
    order = list(in_file.data)
    for field, value in record.data.items():
        data[field] = value
    for field, value in kept.items():
        data[field] = value
    position = {field: i for i, field in enumerate(order)}
    ordered = dict(sorted(data.items(), key=lambda item: position.get(item[0], len(order))))
    return StoredRecord(record.entity, record.key, ordered, record.placement)
