"""The rows of a backfill batch, built from its records, in worker processes when there are many.

Turning records into rows (the layer's `from_record`) is most of a backfill's work, and it is
pure Python: one process does it at the speed of one core while PostgreSQL waits. So for an
entity with many records the backfill forks a few workers once the entity's files are parsed
(the parsed records are shared with them, copy on write: every worker sees the same snapshot
of the files and nothing is parsed twice), they build the rows of the batches, and the parent
COPYs and upserts each batch, in order, as its rows arrive. At most `2 * workers` batches are
in flight, so memory does not grow with the entity.

A built row carries what the COPY sends: the layer's `RowImage.params()` with each jsonb value
already spelled as its JSON text (psycopg's jsonb dumper writes exactly `json.dumps` of it), so
it crosses the process boundary as plain strings; the COPY is told `text` for those columns and
PostgreSQL parses the text as jsonb.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from provisioner.migration.fast_rows import fast_row
from provisioner.migration.quarantine_file import quarantine_line
from provisioner.migration.storage_bridge import (
    PLAINTEXT_PASSWORD_FIELDS,
    RecordMappingError,
    StoredRecord,
    from_record,
)

# What from_record raises for a record it cannot map (a lone surrogate, NUL, NaN, a non-dict).
MAPPING_ERRORS = (RecordMappingError, ValueError, TypeError, RecursionError)
# Fewer records than this are built in the parent: forking costs more than it saves.
PARALLEL_MIN_RECORDS = 4000
MAX_WORKERS = 4


@dataclass(slots=True)
class BuiltRow:
    """One record as its COPY row: `index` is its place in the batch, `params` the written
    columns (jsonb as JSON text), `memberships` its derived membership rows."""

    index: int
    key: str
    params: list[Any]
    memberships: list[tuple[Any, ...]]


@dataclass
class BuiltBatch:
    rows: list[BuiltRow] = field(default_factory=list)
    # (key, quarantine line) of the records the mapping refused.
    refused: list[tuple[str, str]] = field(default_factory=list)
    plaintext_dropped: int = 0


def count_plaintext(value: Any) -> int:
    """How many plaintext password fields `value` holds, at any depth."""
    found = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            for name, inner in item.items():
                if name in PLAINTEXT_PASSWORD_FIELDS:
                    found += 1
                elif type(inner) is dict or type(inner) is list:
                    stack.append(inner)
        elif type(item) is list:
            stack.extend(inner for inner in item if type(inner) is dict or type(inner) is list)
    return found


def mapping_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply to store"
    return str(exc) or type(exc).__name__


_dumps = json.dumps


def build_batch(entity: str, records: Sequence[StoredRecord]) -> BuiltBatch:
    """The rows of `records` through the layer's mapping; refused records as quarantine lines.

    `records` come from the JSON files (json.loads): plain JSON types, which fast_rows needs."""
    out = BuiltBatch()
    rows, refused = out.rows, out.refused
    dropped = 0
    for index, record in enumerate(records):
        fast = fast_row(entity, record)
        if fast is not None:  # no plaintext field in it, nothing to refuse
            rows.append(BuiltRow(index, record.key, *fast))
            continue
        dropped += count_plaintext(record.data)
        try:
            image = from_record(record)
        except MAPPING_ERRORS as exc:
            refused.append(
                (record.key, quarantine_line(entity, record.key, mapping_reason(exc), record.data))
            )
            continue
        params = image.params()
        for position, value in enumerate(params):
            if type(value) is Jsonb:
                params[position] = _dumps(value.obj)
        rows.append(BuiltRow(index, image.key, params, image.memberships))
    out.plaintext_dropped = dropped
    return out


def transport_types(types: list[str]) -> list[str]:
    """The COPY types for built rows: jsonb columns arrive as their JSON text."""
    return ["text" if t == "jsonb" else t for t in types]


def worker_count() -> int:
    """Workers to build rows with: the CPUs this process may use, at most MAX_WORKERS; 0
    (build in the parent) with one CPU, or where processes cannot be forked."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(cpus, MAX_WORKERS)


def parallel_worth_it(records: int, batch_size: int, workers: int) -> bool:
    """Whether to fork workers for an entity: at least two of them and two batches, enough
    records to repay the fork, and this process running one thread (a fork copies locks as
    they are: one another thread holds at that instant stays taken forever in the child)."""
    return (
        workers >= 2
        and records >= PARALLEL_MIN_RECORDS
        and records > batch_size
        and threading.active_count() == 1
    )


# The records the forked workers build from (set in the parent just before the fork).
_SHARED: tuple[str, Sequence[StoredRecord]] | None = None


def _build_shared(span: tuple[int, int]) -> BuiltBatch:
    assert _SHARED is not None
    entity, records = _SHARED
    return build_batch(entity, records[span[0] : span[1]])


def built_batches(
    entity: str, records: Sequence[StoredRecord], batch_size: int, workers: int
) -> Iterator[tuple[int, BuiltBatch]]:
    """(start, built batch) for each batch of `records`, in order; built by `workers` forked
    processes when there are enough records, else here."""
    spans = [(s, min(s + batch_size, len(records))) for s in range(0, len(records), batch_size)]
    if not parallel_worth_it(len(records), batch_size, workers):
        for start, stop in spans:
            yield start, build_batch(entity, records[start:stop])
        return
    yield from _forked(entity, records, spans, workers)


def _forked(
    entity: str,
    records: Sequence[StoredRecord],
    spans: list[tuple[int, int]],
    workers: int,
) -> Iterator[tuple[int, BuiltBatch]]:
    global _SHARED
    _SHARED = (entity, records)
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(min(workers, len(spans))) as pool:
            window = 2 * workers
            pending: list[tuple[int, Callable[[], BuiltBatch]]] = []
            queued = 0
            for start, _stop in spans:
                while queued < len(spans) and len(pending) < window:
                    task = pool.apply_async(_build_shared, (spans[queued],))
                    pending.append((spans[queued][0], task.get))
                    queued += 1
                first, get = pending.pop(0)
                assert first == start
                yield start, get()
    finally:
        _SHARED = None
