"""How the data layer writes: value checks, group commit, and the dual write with its intents.

In the dual-write phases one write is, under the entity's write lock (every process takes
turns, so PostgreSQL receives writes in JSON's order):
1. the intents of the batch (intents.py), durably, in one fsync;
2. the JSON write;
3. the PostgreSQL write, then the intents are cut off.
When step 3 fails, whatever the reason (unreachable, a constraint, a value it refuses), or
when earlier writes are still waiting in the outbox, the intents move to the outbox before the
call returns: JSON, the truth in these phases, has the write, and the outbox replay (replay.py)
brings PostgreSQL in line, or quarantines what it refuses for good. A process killed between
steps 2 and 3 leaves its intents; the next writer of the entity, a read of the record or a
drain moves them to the outbox.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from provisioner.fsutil import LockBusy
from provisioner.storage.events import emit
from provisioner.storage.layer.errors import DataUnavailable, PgDown
from provisioner.storage.layer.intents import Intent
from provisioner.storage.layer.outbox import OutboxEntry
from provisioner.storage.layer.phase import Phase
from provisioner.storage.layer.quarantine import describe_error
from provisioner.storage.model import StoredRecord
from provisioner.storage.pg import records as pg_records
from provisioner.storage.phpjson.files import BatchOutcome
from provisioner.storage.phpjson.group_commit import GroupCommit
from provisioner.storage.values import check_records

if TYPE_CHECKING:
    import psycopg


def pg_apply(
    conn: psycopg.Connection[Any],
    records: list[StoredRecord],
    deleted: list[tuple[str, str]] | None = None,
) -> None:
    """Upsert `records` and delete the `(entity, key)` pairs in `deleted`, atomically."""
    if not deleted and len({r.entity for r in records}) <= 1:
        pg_records.upsert_records(conn, records)  # one atomic statement for one entity
        return
    with conn.transaction():
        if records:
            pg_records.upsert_records(conn, records)
        for entity, key in deleted or ():
            pg_records.delete_record(conn, entity, key)


class WritePath:
    """The write half of DataLayer (a mixin: the layer provides its stores and connections)."""

    # Provided by DataLayer.
    json: Any
    outbox: Any
    intents: Any
    quarantine: Any
    _local: threading.local
    _group_commits: dict[str, GroupCommit[StoredRecord]]
    _group_commits_lock: threading.Lock
    _leftovers_checked: bool
    # And phase(), _pg(), _ordered(entity, timeout); Replays provides _maybe_drain().

    def _write(
        self, entity: str, records: list[StoredRecord], deleted: list[str] | None = None
    ) -> None:
        """Write records (and deletions) to the stores the phase names, once their values are
        known to be storable on both sides (nothing is written otherwise)."""
        check_records(records)
        self._write_checked(entity, records, deleted or [])

    def _write_checked(self, entity: str, records: list[StoredRecord], deleted: list[str]) -> None:
        phase = self.phase().phase
        if phase == Phase.JSON_ONLY:
            self._write_json(entity, records, deleted)
            return
        if phase.writes_json:
            self._recover_once()
            with self._ordered(entity):
                self._dual_write(entity, records, deleted)
            self._after_outbox_add()
            return
        self._write_pg_only(entity, records, deleted)

    def _write_json(self, entity: str, records: list[StoredRecord], deleted: list[str]) -> None:
        if records:
            self.json.upsert(entity, records)
        for key in deleted:
            self.json.delete(entity, key)

    def _write_pg_only(self, entity: str, records: list[StoredRecord], deleted: list[str]) -> None:
        try:
            with self._pg() as conn:
                pg_apply(conn, records, [(entity, key) for key in deleted])
        except PgDown as exc:
            raise DataUnavailable(
                f"PostgreSQL is unavailable and the phase is pg_only: nothing was written ({exc})"
            ) from None

    def _dual_write(self, entity: str, records: list[StoredRecord], deleted: list[str]) -> None:
        """Intents, JSON, PostgreSQL; the caller holds the entity's write lock."""
        self._settle_leftovers(entity)
        items = [(r.key, "upsert") for r in records] + [(k, "delete") for k in deleted]
        intent = self.intents.begin(entity, items)
        try:
            self._write_json(entity, records, deleted)
        except BaseException:
            self.intents.finish(intent)  # JSON refused the write: nothing to bring over
            raise
        self._pg_half(intent, records, deleted)

    def _pg_half(self, intent: Intent, records: list[StoredRecord], deleted: list[str]) -> None:
        """PostgreSQL after JSON: direct, or the intents into the outbox when that fails for
        any reason or when earlier writes are still waiting there."""
        entity = intent.entity
        reason = "earlier writes are waiting in the outbox"
        if self.outbox.is_empty():
            try:
                with self._pg() as conn:
                    # JSON's upsert set each record's placement: PostgreSQL keeps it too.
                    pg_apply(conn, records, [(entity, key) for key in deleted])
            except PgDown as exc:
                reason = f"PostgreSQL unavailable ({exc})"
            except Exception as exc:
                reason = f"PostgreSQL refused the write ({describe_error(exc)})"
                emit("pg_write_refused", logging.WARNING, entity=entity, error=reason)
            else:
                self.intents.finish(intent)
                self._settle_quarantined(entity, {e.key for e in intent.entries})
                return
        self._queue(intent, reason)

    def _settle_quarantined(self, entity: str, keys: set[str]) -> None:
        """A newer state PostgreSQL took replaces a quarantined one."""
        try:
            settled = self.quarantine.keys(entity) & keys
            if settled:
                self.quarantine.remove({(entity, key) for key in settled})
        except OSError as exc:  # reported by health; the write itself is done
            emit("quarantine_unreadable", logging.ERROR, error=exc.strerror or str(exc))

    def _queue(self, intent: Intent, reason: str) -> None:
        """Move a batch's intents into the outbox; if even that fails they stay where they are
        (durable), for the next writer or drain to move."""
        if self._to_outbox(intent.entity, intent.entries):
            self.intents.finish(intent)
            emit(
                "outbox_added",
                logging.WARNING,
                entity=intent.entity,
                count=len(intent.entries),
                reason=reason,
            )

    def _to_outbox(self, entity: str, entries: list[OutboxEntry]) -> bool:
        try:
            self.outbox.add_entries(entries)
        except OSError as exc:
            emit(
                "outbox_unwritable",
                logging.ERROR,
                entity=entity,
                count=len(entries),
                error=exc.strerror or type(exc).__name__,
                kept_in=str(self.intents.path(entity)),
            )
            return False
        self._local.added = True
        return True

    def _settle_leftovers(self, entity: str) -> None:
        """Intents found under the entity's write lock belong to a writer that did not finish:
        into the outbox with them (the caller holds the lock)."""
        if not self.intents.holds(entity):
            return
        leftovers = self.intents.leftovers(entity)
        if leftovers and not self._to_outbox(entity, leftovers):
            return
        self.intents.clear(entity)
        if leftovers:
            emit("intents_recovered", logging.WARNING, entity=entity, count=len(leftovers))

    def _recover_intents(self, entities: list[str] | None = None) -> None:
        """Settle the leftovers of entities nobody is writing now (a writer in flight is left
        alone: its intents are its own)."""
        for entity in self.intents.entities() if entities is None else entities:
            try:
                with self._ordered(entity, timeout=0):
                    self._settle_leftovers(entity)
            except LockBusy:
                continue

    def _recover_once(self) -> None:
        """Once per process, before its first dual write or PostgreSQL read: what writers that
        died before it started left behind."""
        if not self._leftovers_checked:
            self._leftovers_checked = True
            self._recover_intents()

    def _after_outbox_add(self) -> None:
        """Outside the entity lock (a drain takes the outbox lock first), try to drain."""
        if getattr(self._local, "added", False):
            self._local.added = False
            self._maybe_drain()

    # -------------------------------------------------------------------------- group commit
    def _write_grouped(self, record: StoredRecord) -> None:
        """Write one checked record, sharing the file rewrite, the intents' fsync and the round
        trip with concurrent writers.

        Group commit (phpjson/group_commit.py), one per entity: the first writer becomes the
        leader and writes whatever has queued meanwhile in one batch; the others wait for their
        batch to be durable. Each call still returns only once its record is written (or in
        the outbox).
        """
        entity = record.entity
        group = self._group_commits.get(entity)
        if group is None:
            with self._group_commits_lock:
                group = self._group_commits.setdefault(
                    entity, GroupCommit(functools.partial(self._write_batch, entity))
                )
        group.submit(record)

    def _write_batch(self, entity: str, batch: list[StoredRecord]) -> list[BatchOutcome]:
        latest: dict[str, StoredRecord] = {}
        for record in batch:  # a key saved twice in one batch: the later state wins
            latest.pop(record.key, None)
            latest[record.key] = record
        try:
            self._write_checked(entity, list(latest.values()), [])
        except BaseException as exc:
            if len(batch) == 1:
                return [BatchOutcome(error=exc)]
            outcomes = []  # find whose record failed: write them one by one
            for record in batch:
                try:
                    self._write_checked(entity, [record], [])
                except BaseException as one:
                    outcomes.append(BatchOutcome(error=one))
                else:
                    outcomes.append(BatchOutcome())
            return outcomes
        return [BatchOutcome() for _ in batch]
