"""Replaying the outbox into PostgreSQL, and the quarantine of what it refuses for good.

A replay makes PostgreSQL hold each entry's record as JSON has it now (or not at all when JSON
no longer has it), so it can run twice or after newer writes without bringing an old state
back. A batch PostgreSQL refuses for a reason other than being unreachable is replayed record
by record: those it still refuses go to the quarantine (quarantine.py), durably, before they
leave the outbox, and the others are applied; an outage stops the drain and keeps everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from provisioner.storage.events import emit
from provisioner.storage.layer.errors import DataUnavailable, PgDown
from provisioner.storage.layer.outbox import OutboxEntry, OutboxUnreadable
from provisioner.storage.layer.quarantine import QuarantinedRecord, describe_error, now_iso
from provisioner.storage.layer.writes import pg_apply
from provisioner.storage.model import StoredRecord
from provisioner.storage.phpjson.errors import JsonFileError

if TYPE_CHECKING:
    import psycopg

# What a replay does to one record: its current JSON state (None: delete it).
_Target = tuple[str, str, StoredRecord | None]


def _apply(conn: psycopg.Connection[Any], targets: Iterable[_Target]) -> None:
    records = [record for _, _, record in targets if record is not None]
    pg_apply(conn, records, [(entity, key) for entity, key, record in targets if record is None])


class Replays:
    """The replay half of DataLayer (a mixin: the layer provides its stores and connections)."""

    # Provided by DataLayer (and WritePath): json, outbox, quarantine, breaker, _local,
    # _last_drain_try, _pg(), _ordered(entity), _recover_intents().
    json: Any
    outbox: Any
    quarantine: Any
    breaker: Any
    _local: threading.local
    _last_drain_try: float

    def _current(self, entries: Iterable[OutboxEntry]) -> tuple[list[_Target], set[str]]:
        """Each entry's record as JSON has it now; the ids of entries whose file is unreadable
        (kept for a later replay: JSON is the truth and cannot be read)."""
        targets: dict[tuple[str, str], StoredRecord | None] = {}
        unreadable: set[str] = set()
        for entry in entries:
            try:
                targets[(entry.entity, entry.key)] = self.json.get(entry.entity, entry.key)
            except (JsonFileError, OSError):
                unreadable.add(entry.id)
        if unreadable:
            emit("replay_file_unreadable", logging.WARNING, entries=len(unreadable))
        return [(e, k, r) for (e, k), r in targets.items()], unreadable

    def _replay(self, entries: list[OutboxEntry]) -> set[str]:
        """Make PostgreSQL hold JSON's current state for each entry's record; the ids kept.

        PgDown when PostgreSQL is unreachable (nothing is settled then)."""
        targets, kept = self._current(entries)
        if not targets:
            return kept
        try:
            with self._pg() as conn:
                _apply(conn, targets)
            return kept
        except PgDown:
            raise
        except Exception as exc:
            emit("replay_refused", logging.WARNING, entries=len(targets), error=describe_error(exc))
        refused = self._one_by_one(targets)
        first_at: dict[tuple[str, str], str] = {}
        op: dict[tuple[str, str], str] = {}
        for entry in entries:
            pair = (entry.entity, entry.key)
            first_at[pair] = min(first_at.get(pair, entry.at), entry.at)
            op[pair] = entry.op
        now = now_iso()
        self.quarantine.add(
            [
                QuarantinedRecord(e, k, op[(e, k)], error, first_at[(e, k)], now)
                for (e, k), error in refused.items()
            ]
        )
        if refused:
            counts: dict[str, int] = {}
            for entity, _ in refused:
                counts[entity] = counts.get(entity, 0) + 1
            emit("outbox_quarantined", logging.ERROR, count=len(refused), entities=counts)
        return kept

    def _one_by_one(self, targets: list[_Target]) -> dict[tuple[str, str], str]:
        """Apply each target alone; the errors of those PostgreSQL refuses (PgDown propagates)."""
        refused: dict[tuple[str, str], str] = {}
        for target in targets:
            try:
                with self._pg() as conn:
                    _apply(conn, [target])
            except PgDown:
                raise
            except Exception as exc:
                refused[(target[0], target[1])] = describe_error(exc)
        return refused

    def reconcile(self) -> int:
        """Replay the outbox and retry the quarantine now; the number of records settled
        (DataUnavailable when PostgreSQL is down: everything is kept)."""
        try:
            return self._drain() + self._retry_quarantine()
        except PgDown as exc:
            raise DataUnavailable(
                f"PostgreSQL is unavailable ({exc}); the outbox is kept"
            ) from None

    def _retry_quarantine(self) -> int:
        """Each quarantined record again, from its current JSON state, under its entity's write
        lock (no direct write can race the retry); those still refused stay."""
        records: list[QuarantinedRecord] = self.quarantine.records()
        by_entity: dict[str, list[QuarantinedRecord]] = {}
        for record in records:
            by_entity.setdefault(record.entity, []).append(record)
        settled: set[tuple[str, str]] = set()
        still: list[QuarantinedRecord] = []
        for entity, quarantined in by_entity.items():
            with self._ordered(entity):
                # The key stands in for an entry id: _current reports unreadable ones by it.
                entries = [OutboxEntry(r.key, entity, r.key, r.op, r.first_at) for r in quarantined]
                targets, unreadable = self._current(entries)
                refused = self._one_by_one(targets)
            now = now_iso()
            for record in quarantined:
                pair = (record.entity, record.key)
                if pair in refused:
                    error = refused[pair]
                    still.append(
                        QuarantinedRecord(
                            entity, record.key, record.op, error, record.first_at, now
                        )
                    )
                elif record.key not in unreadable:
                    settled.add(pair)
        self.quarantine.remove(settled)
        self.quarantine.add(still)
        if settled:
            emit("quarantine_settled", count=len(settled), left=len(records) - len(settled))
        return len(settled)

    def _drain(self) -> int:
        self._recover_intents()
        if self.outbox.is_empty() or getattr(self._local, "draining", False):
            return 0
        self._local.draining = True  # the replay's own connection must not start another drain
        try:
            applied, kept = self.outbox.drain(self._replay)
        finally:
            self._local.draining = False
        emit("outbox_drained", applied=applied, depth=kept)
        return applied

    def _drain_quietly(self) -> None:
        try:
            self._drain()
        except PgDown as exc:
            emit("outbox_drain_failed", logging.WARNING, error=str(exc))
        except (OutboxUnreadable, OSError) as exc:
            # Reported by health; the writes and logins that got here go on without it.
            emit("outbox_unreadable", logging.ERROR, error=str(exc))

    def _maybe_drain(self) -> None:
        """Try to drain, at most a few times per retry window (writes and reads call this)."""
        now = time.monotonic()
        if now - self._last_drain_try < self.breaker.retry_seconds / 5:
            return
        self._last_drain_try = now
        self._drain_quietly()  # the breaker decides whether this may try the database
