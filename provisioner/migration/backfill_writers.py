"""Backfill batches built and written by forked workers, each on its own connection.

When the backfill has a DSN (not a connection of the caller's) and an entity has many
records, building the rows in workers and COPYing them in the parent leaves the parent as the
bottleneck: every built row crosses the process boundary (pickled, then unpickled under the
parent's GIL) and is then formatted again for COPY, one batch at a time, while PostgreSQL
waits. Here each worker does all of a batch's work instead: it builds the rows from the
records it shares with the parent (forked after the entity's files are parsed, copy on
write), COPYs them into its own staging table and upserts them, exactly as the parent's path
does (`backfill._write_batch`: one transaction per batch, rows PostgreSQL refuses written one
by one and quarantined). Only counts and quarantine lines come back.

Batches of one entity hold distinct keys (the store's records are keyed), so concurrent
batches never touch the same row, membership or digest. Results are handed back in batch
order, so the report, the progress and the quarantine file are those of the parent's path.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import util
from pathlib import Path
from typing import Any

import psycopg

from provisioner.migration.backfill_rows import build_batch
from provisioner.migration.quarantine_file import QuarantineFile
from provisioner.migration.staging import entity_sql
from provisioner.migration.storage_bridge import StoredRecord


@dataclass
class WrittenBatch:
    """What a worker did with one batch: the counts the report adds up, its quarantine lines
    (refused by the mapping first, then by PostgreSQL, as the parent's path orders them)."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    plaintext_dropped: int = 0
    lines: list[str] = field(default_factory=list)


# Set in the parent just before the fork: (entity, records, dry_run).
_SHARED: tuple[str, Sequence[StoredRecord], bool] | None = None
# The worker's own connection (one per worker process, closed when the pool ends).
_CONN: psycopg.Connection | None = None
_STAGED: set[str] = set()  # the entities whose staging table this worker made


def _open_worker_connection(dsn: str) -> None:
    global _CONN
    _CONN = psycopg.connect(
        dsn, autocommit=True, connect_timeout=10, application_name="provision-backfill"
    )
    util.Finalize(None, _CONN.close, exitpriority=10)


def _write_span(span: tuple[int, int]) -> WrittenBatch:
    from provisioner.migration.backfill import EntityLoad, _write_batch

    assert _SHARED is not None and _CONN is not None
    entity, records, dry_run = _SHARED
    batch = records[span[0] : span[1]]
    built = build_batch(entity, batch)
    out = WrittenBatch(plaintext_dropped=built.plaintext_dropped)
    out.lines.extend(line for _key, line in built.refused)
    out.quarantined = len(built.refused)
    if built.rows:
        if entity not in _STAGED:
            with _CONN.transaction():
                _CONN.execute(entity_sql(entity).create_stage)
            _STAGED.add(entity)
        load = EntityLoad(entity, [])
        quarantine = QuarantineFile(Path("/dev/null"))  # collects lines; never written here
        sources = {row.key: batch[row.index] for row in built.rows}
        _write_batch(_CONN, entity, built.rows, sources, load, quarantine, dry_run)
        out.inserted, out.updated, out.unchanged = load.inserted, load.updated, load.unchanged
        out.quarantined += load.quarantined
        out.lines.extend(quarantine.lines)
    return out


def written_batches(
    dsn: str,
    entity: str,
    records: Sequence[StoredRecord],
    batch_size: int,
    workers: int,
    dry_run: bool,
    *,
    meanwhile: Callable[[], None] | None = None,
) -> Iterator[tuple[int, WrittenBatch]]:
    """(start, what was written) for each batch of `records`, in order, the batches built and
    written by `workers` forked processes on connections of their own to `dsn`; `meanwhile`
    runs here once the workers are at work (the backfill parses the next entity)."""
    global _SHARED
    spans = [(s, min(s + batch_size, len(records))) for s in range(0, len(records), batch_size)]
    _SHARED = (entity, records, dry_run)
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(
            min(workers, len(spans)), initializer=_open_worker_connection, initargs=(dsn,)
        ) as pool:
            results = pool.imap(_write_span, spans)
            if meanwhile is not None:
                meanwhile()
            for (start, _stop), result in zip(spans, results, strict=True):
                yield start, result
            pool.close()
            pool.join()  # the workers close their connections as they exit
    finally:
        _SHARED = None


def worker_dsn(target: Any) -> str | None:
    """The DSN the workers connect with: only a DSN given as such (a caller's connection may
    carry settings of its own that a new connection would lack)."""
    return target if isinstance(target, str) else None
