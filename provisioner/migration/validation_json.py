"""The JSON side of the validation, one entity at a time, in worker processes when there are CPUs.

Reading an entity's files and hashing its records is most of a validation's work, pure Python,
and each entity's is independent of the others': so while this process compares one entity
with PostgreSQL, workers (one per CPU, at most four) read and hash the next ones. A
worker sends back only what the comparison needs: each key's content hash, the membership rows
each record derives, the values other entities may name (for a target of a reference) and the
values each record names (the parent filters them with the targets: a worker does not know
them yet). Results come back in entity order. With one CPU, or where processes cannot be
forked, the same function runs here.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from provisioner.migration.backfill_rows import worker_count
from provisioner.migration.storage_bridge import (
    ENTITY_MAPS,
    AeimsJsonStore,
    JsonFileError,
    RecordMappingError,
    forget_entity_files,
    json_records,
    record_hash,
)
from provisioner.migration.validation_refs import (
    REFERENCES,
    TARGETS,
    Reference,
    json_orphans,
    target_values,
)

MAPPING_ERRORS = (RecordMappingError, ValueError, TypeError, RecursionError)


@dataclass
class JsonSide:
    """What the JSON files hold of one entity, as the comparison needs it."""

    entity: str
    error: str | None = None
    records: int = 0
    # key -> the layer's content hash of its record (None: the mapping refuses the record)
    hashes: dict[str, str | None] = field(default_factory=dict)
    # key -> the membership rows its record derives (records with any)
    memberships: dict[str, set[tuple[Any, ...]]] = field(default_factory=dict)
    # what references to this entity may name (targets of a reference only)
    targets: set[str] | None = None
    # per reference from this entity (not memberships): every (key, value) a record names
    named: dict[Reference, set[tuple[str, str]]] = field(default_factory=dict)

    def orphans(self, ref: Reference, targets: set[str]) -> set[tuple[str, str]]:
        """(key, value) of the references of `ref` that name nothing in `targets`."""
        if ref.membership:
            return json_orphans(ref, (), targets, derived=self.memberships)
        return {pair for pair in self.named[ref] if pair[1] not in targets}


def read_json_side(store: AeimsJsonStore, entity: str) -> JsonSide:
    """Read and hash the records of `entity` (see the module docstring)."""
    side = JsonSide(entity)
    try:
        records = json_records(store, entity)
    except (JsonFileError, OSError) as exc:
        side.error = str(exc)
        return side
    side.records = len(records)
    hashes = side.hashes
    for record in records:
        try:
            hashes[record.key] = record_hash(record)
        except MAPPING_ERRORS:
            hashes[record.key] = None
    mapping = ENTITY_MAPS[entity]
    if mapping.memberships is not None:
        derive = mapping.memberships.derive
        for record in records:
            rows = derive(record.key, record.data)
            if rows:
                side.memberships[record.key] = set(rows)
    if entity in TARGETS:
        side.targets = target_values(entity, records)
    for ref in REFERENCES:
        if ref.child == entity and not ref.membership:
            # Every value named: with no target known here, all of them are "orphans".
            side.named[ref] = json_orphans(ref, records, set())
    del records
    forget_entity_files(store, entity)
    return side


# The worker's own store of the data folder (one per worker process).
_STORE: AeimsJsonStore | None = None


def _open_store(data_dir: str) -> None:
    global _STORE
    _STORE = AeimsJsonStore(data_dir)


def _read_in_worker(entity: str) -> JsonSide:
    assert _STORE is not None
    return read_json_side(_STORE, entity)


def json_sides(
    store: AeimsJsonStore, entities: list[str], workers: int | None = None
) -> Iterator[JsonSide]:
    """The JSON side of each of `entities`, in order; read by worker processes when `workers`
    (None: one per CPU, at most four) is at least two."""
    count = worker_count() if workers is None else workers
    if count < 2 or len(entities) < 2:
        for entity in entities:
            yield read_json_side(store, entity)
        return
    # A fork copies locks as they are: taken by another thread of this process at that
    # instant (a writer of the data layer beside the validation), they stay taken forever in
    # the child. Forked only when this process runs one thread; else started afresh.
    method = "fork" if threading.active_count() == 1 else "spawn"
    context = multiprocessing.get_context(method)
    with context.Pool(
        min(count, len(entities)), initializer=_open_store, initargs=(str(store.data_dir),)
    ) as pool:
        yield from pool.imap(_read_in_worker, entities)
        pool.close()
        pool.join()
