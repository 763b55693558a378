"""The backfill: every AEIMS JSON record into PostgreSQL, in batches, idempotently.

Public API (used by the backfill phase step and `provision migrate backfill`):

    backfill(target, data_dir, *, batch_size=5000, quarantine_path=None, progress=None,
             entities=None, dry_run=False, workers=None) -> BackfillReport

- `target`: a DSN or an open psycopg connection (left open; it must not be inside a
  transaction of the caller's). The schema is brought up to date first (apply_migrations).
- `data_dir`: the AEIMS application root (`data/*.json`, `agents/data/operators.json`); every
  file the data layer knows is read (the 23 of `data_files`, one entity after another: only
  one entity's files are parsed in memory at a time).
- Every record goes through the layer's own mapping (`from_record`: plaintext test passwords
  dropped at any depth, fields lifted into typed columns), is COPYed into a TEMP staging table
  and moved into place by one INSERT ... SELECT ... ON CONFLICT DO UPDATE per batch that
  writes only rows whose content differs; a batch is one transaction (memberships of changed
  rows rewritten in it). Running it again changes nothing (not even a row's xmin).
- A record the mapping or PostgreSQL refuses goes to the quarantine file
  (`quarantine_file.py`; default `<data_dir>/.provision/backfill-quarantine.jsonl`) and the
  load goes on. A file that cannot be read at all fails its entity (`EntityLoad.error`) and
  the others go on.
- `progress(entity, done, total)` is called after each batch (the CLI draws a rich bar).
- `workers`: processes building rows for an entity with many records; given a DSN, each
  also writes its batches on a connection of its own (`backfill_writers.py`), given a
  connection, they build and this process writes (`backfill_rows.py`). None: one per CPU this
  process may use (at most 4), 0: none (all in this process).
- `dry_run=True` (`--plan`): every batch is rolled back instead of committed, so the counts
  are exactly what a run would do, and nothing is written (no quarantine file either).
- BackfillReport: per entity `inserted`, `updated`, `unchanged`, `quarantined`,
  `plaintext_dropped` (plaintext password fields left out), and `to_json()`.

Raises `BackfillInputError` (bad data folder) and psycopg.OperationalError (PostgreSQL down).
The backfill records a digest of every row it writes (migration_row_digests, in the statement
that writes the row), so the first validation after it does not have to rebuild those rows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from provisioner.migration.backfill_rows import (
    BuiltRow,
    built_batches,
    count_plaintext,
    parallel_worth_it,
    transport_types,
    worker_count,
)
from provisioner.migration.backfill_writers import worker_dsn, written_batches
from provisioner.migration.quarantine_file import QuarantineFile, default_quarantine_path
from provisioner.migration.staging import copy_types, entity_sql
from provisioner.migration.storage_bridge import (
    ENTITIES,
    AeimsJsonStore,
    JsonFileError,
    StoredRecord,
    apply_migrations,
    data_files,
    forget_entity_files,
    gc_paused,
    json_records,
)

__all__ = ["BackfillInputError", "BackfillReport", "EntityLoad", "backfill", "count_plaintext"]

ProgressCallback = Callable[[str, int, int], None]
DEFAULT_BATCH_SIZE = 5000
# What PostgreSQL raises for a row it refuses (a value, a constraint): one record's fault.
_ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


class BackfillInputError(ValueError):
    """The backfill cannot start: the message says what is wrong and how to fix it."""


@dataclass
class EntityLoad:
    """What the backfill did with one entity."""

    entity: str
    files: list[str]
    records: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    plaintext_dropped: int = 0
    error: str | None = None


@dataclass
class BackfillReport:
    """The outcome of one backfill (or of its plan, with `dry_run`)."""

    data_dir: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    seconds: float = 0.0
    schema_applied: list[str] = field(default_factory=list)
    quarantine_path: str | None = None
    entities: dict[str, EntityLoad] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("records", "inserted", "updated", "unchanged", "quarantined", "plaintext_dropped")
        return {k: sum(getattr(e, k) for e in self.entities.values()) for k in keys}

    @property
    def errors(self) -> dict[str, str]:
        return {e.entity: e.error for e in self.entities.values() if e.error}

    @property
    def ok(self) -> bool:
        """No entity failed (quarantined records do not make a backfill fail)."""
        return not self.errors

    @property
    def changed(self) -> bool:
        totals = self.totals
        return bool(totals["inserted"] or totals["updated"])

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": round(self.seconds, 3),
            "schema_applied": self.schema_applied,
            "quarantine_path": self.quarantine_path,
            "totals": self.totals,
            "entities": {name: asdict(load) for name, load in self.entities.items()},
            "errors": self.errors,
        }


@contextmanager
def connection(target: str | psycopg.Connection, purpose: str) -> Iterator[psycopg.Connection]:
    """`target` itself, or a new autocommit connection to the DSN, closed afterwards."""
    if isinstance(target, psycopg.Connection):
        yield target
        return
    conn = psycopg.connect(
        target, autocommit=True, connect_timeout=10, application_name=f"provision-{purpose}"
    )
    try:
        yield conn
    finally:
        conn.close()


def open_store(data_dir: Path | str) -> AeimsJsonStore:
    """The data layer's JSON store on `data_dir`; BackfillInputError when it is no AEIMS root."""
    root = Path(data_dir)
    if not root.is_dir():
        raise BackfillInputError(
            f"data folder {root} does not exist; set PROVISION_DATA_DIR to the AEIMS "
            "application root (the folder holding data/*.json)"
        )
    try:
        return AeimsJsonStore(root)
    except ValueError as exc:
        raise BackfillInputError(str(exc)) from None


def require_tables(conn: psycopg.Connection, fix: str) -> None:
    """BackfillInputError unless the entity tables and the migration's own (0003) exist."""
    with conn.transaction():
        row = conn.execute(
            "SELECT to_regclass('customers') IS NOT NULL, "
            "to_regclass('migration_row_digests') IS NOT NULL"
        ).fetchone()
    if not row or not all(row):
        raise BackfillInputError(f"PostgreSQL has no migrated AEIMS schema yet; {fix}")


def backfill(
    target: str | psycopg.Connection,
    data_dir: Path | str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    quarantine_path: Path | str | None = None,
    progress: ProgressCallback | None = None,
    entities: list[str] | None = None,
    dry_run: bool = False,
    workers: int | None = None,
) -> BackfillReport:
    """Load every record of the JSON files into PostgreSQL (see the module docstring)."""
    if batch_size < 1:
        raise BackfillInputError(f"batch size {batch_size} must be at least 1")
    wanted = list(ENTITIES) if entities is None else list(entities)
    unknown = [e for e in wanted if e not in ENTITIES]
    if unknown:
        raise BackfillInputError(
            f"unknown entity {unknown[0]!r}; known entities: {', '.join(ENTITIES)}"
        )
    store = open_store(data_dir)
    quarantine = QuarantineFile(
        Path(quarantine_path) if quarantine_path else default_quarantine_path(store.data_dir)
    )
    report = BackfillReport(
        data_dir=str(store.data_dir),
        dry_run=dry_run,
        started_at=datetime.now(UTC),
        quarantine_path=None if dry_run else str(quarantine.path),
    )
    files: dict[str, list[str]] = {}
    for entity, relpath in data_files(store):
        files.setdefault(entity, []).append(relpath)
    started = time.perf_counter()
    dsn = worker_dsn(target)
    with connection(target, "backfill") as conn:
        if dry_run:
            require_tables(
                conn,
                "a plan needs them: run the backfill without --plan (it "
                "applies the schema) or the schema phase first",
            )
        else:
            report.schema_applied = apply_migrations(conn)
        # Rows, images and batches are millions of short-lived objects beside the parsed
        # files' millions, none in cycles: the cyclic collector would walk them all, over and
        # over (and in forked workers, write to every page they share with this process).
        with gc_paused():
            upcoming = _Upcoming(store)
            for position, entity in enumerate(wanted):
                load = EntityLoad(entity, files[entity])
                report.entities[entity] = load
                following = wanted[position + 1] if position + 1 < len(wanted) else None
                _load_entity(
                    conn,
                    store,
                    load,
                    batch_size,
                    quarantine,
                    progress,
                    dry_run,
                    workers,
                    dsn,
                    upcoming,
                    following,
                )
    if not dry_run:
        quarantine.write()
    report.finished_at = datetime.now(UTC)
    report.seconds = time.perf_counter() - started
    return report


def _load_entity(
    conn: psycopg.Connection,
    store: AeimsJsonStore,
    load: EntityLoad,
    batch_size: int,
    quarantine: QuarantineFile,
    progress: ProgressCallback | None,
    dry_run: bool,
    workers: int | None,
    dsn: str | None = None,
    upcoming: _Upcoming | None = None,
    following: str | None = None,
) -> None:
    entity = load.entity
    try:
        records = upcoming.take(entity) if upcoming else list(json_records(store, entity))
    except (JsonFileError, OSError) as exc:
        load.error = str(exc)
        return
    load.records = total = len(records)
    if progress:
        progress(entity, 0, total)
    workers = worker_count() if workers is None else workers
    if dsn is not None and parallel_worth_it(total, batch_size, workers):
        meanwhile = None
        if upcoming is not None and following is not None:
            meanwhile = functools.partial(upcoming.parse, following)
        batches = written_batches(
            dsn, entity, records, batch_size, workers, dry_run, meanwhile=meanwhile
        )
        for start, written in batches:
            load.plaintext_dropped += written.plaintext_dropped
            load.inserted += written.inserted
            load.updated += written.updated
            load.unchanged += written.unchanged
            load.quarantined += written.quarantined
            for line in written.lines:
                quarantine.add_line(line)
            if progress:
                progress(entity, min(start + batch_size, total), total)
        del records
        forget_entity_files(store, entity)
        return
    if total:
        with conn.transaction():
            conn.execute(entity_sql(entity).create_stage)
    for start, built in built_batches(entity, records, batch_size, workers):
        load.plaintext_dropped += built.plaintext_dropped
        for _key, line in built.refused:
            load.quarantined += 1
            quarantine.add_line(line)
        batch = records[start : start + batch_size]
        sources = {row.key: batch[row.index] for row in built.rows}
        _write_batch(conn, entity, built.rows, sources, load, quarantine, dry_run)
        if progress:
            progress(entity, min(start + batch_size, total), total)
    del records
    forget_entity_files(store, entity)


class _Upcoming:
    """The next entity's records, parsed while the workers write the current one's (its
    files are then read once, as ever; a file that cannot be read fails that entity when its
    turn comes, as it would have)."""

    def __init__(self, store: AeimsJsonStore) -> None:
        self.store = store
        self.parsed: dict[str, list[StoredRecord] | JsonFileError | OSError] = {}

    def parse(self, entity: str) -> None:
        try:
            self.parsed[entity] = list(json_records(self.store, entity))
        except (JsonFileError, OSError) as exc:
            self.parsed[entity] = exc

    def take(self, entity: str) -> list[StoredRecord]:
        found = self.parsed.pop(entity, None)
        if found is None:
            return list(json_records(self.store, entity))
        if isinstance(found, list):
            return found
        raise found


def _pg_reason(exc: psycopg.Error) -> str:
    """Why PostgreSQL refused a row, without quoting any value (it could be a secret)."""
    diag = exc.diag
    parts = [f"PostgreSQL refused the row: SQLSTATE {exc.sqlstate or '?'} ({type(exc).__name__})"]
    if diag.constraint_name:
        parts.append(f"constraint {diag.constraint_name}")
    if diag.column_name:
        parts.append(f"column {diag.column_name}")
    return ", ".join(parts)


def _write_batch(
    conn: psycopg.Connection,
    entity: str,
    images: list[BuiltRow],
    sources: dict[str, StoredRecord],
    load: EntityLoad,
    quarantine: QuarantineFile,
    dry_run: bool,
) -> None:
    """Write one batch in one transaction; when PostgreSQL refuses a row, write the batch's
    records one by one so that only the refused ones are quarantined."""
    if not images:
        return
    latest = {image.key: image for image in images}
    try:
        inserted, updated = _upsert(conn, entity, list(latest.values()), dry_run)
    except _ROW_ERRORS as exc:
        if len(latest) == 1:
            (key,) = latest
            load.quarantined += 1
            quarantine.add(entity, key, _pg_reason(exc), sources[key].data)
            return
        for image in latest.values():
            _write_batch(conn, entity, [image], sources, load, quarantine, dry_run)
        return
    load.inserted += inserted
    load.updated += updated
    load.unchanged += len(latest) - inserted - updated


def _upsert(
    conn: psycopg.Connection, entity: str, images: list[BuiltRow], dry_run: bool
) -> tuple[int, int]:
    """COPY `images` into the staging table and upsert them; (inserted, updated)."""
    statements = entity_sql(entity)
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(statements.copy_stage) as copy:
            copy.set_types(transport_types(copy_types(entity)))
            write_row = copy.write_row
            for image in images:
                write_row(image.params)
        changed = cur.execute(statements.upsert_from_stage).fetchall()
        inserted = [key for key, is_new in changed if is_new]
        updated = [key for key, is_new in changed if not is_new]
        changed_keys = inserted + updated
        if statements.membership_copy is not None and changed_keys:
            by_key = {image.key: image for image in images}
            if updated and statements.membership_delete is not None:
                cur.execute(statements.membership_delete, [updated])
            rows = [row for key in changed_keys for row in by_key[key].memberships]
            if rows:
                with cur.copy(statements.membership_copy) as copy:
                    copy.set_types(list(statements.membership_types))
                    for row in rows:
                        copy.write_row(row)
        if dry_run:
            raise psycopg.Rollback()
    return len(inserted), len(updated)
