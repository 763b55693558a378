"""Records PostgreSQL refuses for good, kept aside instead of lost or blocking the outbox.

A replay that fails because of the data (a constraint, a value the column rejects), not because
the database is unreachable, would fail the same way at every retry: left in the outbox it
would hold every later write behind it; dropped, the divergence would vanish from view. It goes
to `<data_dir>/.provision/quarantine.jsonl` (0600) instead: one line per record, naming the
record and the error's class and SQLSTATE, never a value (the message could quote one). JSON
keeps the record; reads of it come from JSON; `provision data health` reports the quarantine
(degraded) and `provision data reconcile` retries each record from its current JSON state.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.fsutil import append_durably, file_lock, private_dir, write_atomically


def describe_error(exc: BaseException) -> str:
    """An error's class and SQLSTATE (and column), without its message: no value leaks."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    column = getattr(diag, "column_name", None) if diag is not None else None
    constraint = getattr(diag, "constraint_name", None) if diag is not None else None
    parts = [type(exc).__name__]
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
    if constraint:
        parts.append(f"constraint {constraint}")
    if column:
        parts.append(f"column {column}")
    return ", ".join(parts)


@dataclass(frozen=True)
class QuarantinedRecord:
    entity: str
    key: str
    op: str
    error: str
    first_at: str  # when the write that PostgreSQL refused was made
    quarantined_at: str
    attempts: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "key": self.key,
            "op": self.op,
            "error": self.error,
            "first_at": self.first_at,
            "quarantined_at": self.quarantined_at,
            "attempts": self.attempts,
        }


def _record(line: bytes) -> QuarantinedRecord | None:
    try:
        return QuarantinedRecord(**json.loads(line.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None


class Quarantine:
    """The quarantine file: at most one line per (entity, key), the latest error."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "quarantine.jsonl"
        self.lock_path = directory / "quarantine.lock"
        self._path_str = str(self.path)
        self._seen: tuple[tuple[int, int, int], dict[str, frozenset[str]]] | None = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.path.parent)
        with file_lock(self.lock_path):
            yield

    def _read(self) -> list[QuarantinedRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        found = (_record(line) for line in raw.splitlines() if line.strip())
        return [r for r in found if r is not None]

    def records(self) -> list[QuarantinedRecord]:
        with self._locked():
            return self._read()

    def add(self, records: list[QuarantinedRecord]) -> None:
        """Quarantine records durably (a record already there gets the new error)."""
        if not records:
            return
        with self._locked():
            current = self._read()
            known = {(r.entity, r.key): r for r in current}
            if not any((r.entity, r.key) in known for r in records):
                data = "".join(json.dumps(r.as_json()) + "\n" for r in records)
                append_durably(self.path, data.encode("utf-8"), mode=0o600, own_line=True)
                return
            for record in records:
                old = known.get((record.entity, record.key))
                if old is not None:
                    record = QuarantinedRecord(
                        record.entity,
                        record.key,
                        record.op,
                        record.error,
                        old.first_at,
                        record.quarantined_at,
                        old.attempts + 1,
                    )
                known[(record.entity, record.key)] = record
            self._rewrite(list(known.values()))

    def remove(self, pairs: set[tuple[str, str]]) -> None:
        """Forget records PostgreSQL now holds."""
        if not pairs:
            return
        with self._locked():
            current = self._read()
            kept = [r for r in current if (r.entity, r.key) not in pairs]
            if len(kept) != len(current):
                self._rewrite(kept)

    def _rewrite(self, records: list[QuarantinedRecord]) -> None:
        data = "".join(json.dumps(r.as_json()) + "\n" for r in records)
        write_atomically(self.path, data, mode=0o600)

    def keys(self, entity: str) -> frozenset[str]:
        """Quarantined keys of `entity` (one stat when the quarantine is empty)."""
        return self.keys_of((entity,)).get(entity, frozenset())

    def keys_of(self, entities: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """Quarantined keys per entity (one stat when the quarantine is empty, the usual case)."""
        try:
            st = os.stat(self._path_str)
        except FileNotFoundError:
            return {}
        if not st.st_size:
            return {}
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        seen = self._seen
        if seen is None or seen[0] != stamp:
            by_entity: dict[str, set[str]] = {}
            for record in self._read():
                by_entity.setdefault(record.entity, set()).add(record.key)
            seen = (stamp, {e: frozenset(k) for e, k in by_entity.items()})
            self._seen = seen
        return {e: seen[1][e] for e in entities if e in seen[1]}

    def summary(self) -> dict[str, Any]:
        """Counts per entity and the records (no values): what health reports."""
        records = self.records()
        return {
            "count": len(records),
            "by_entity": dict(sorted(Counter(r.entity for r in records).items())),
            "records": [r.as_json() for r in records],
        }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
