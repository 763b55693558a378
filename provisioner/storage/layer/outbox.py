"""The durable outbox: PostgreSQL writes that could not be made yet, replayed in order.

In the dual-write phases JSON is written first and is the truth; when the PostgreSQL half of
a write fails (for any reason: an outage, a constraint, a value it refuses) or its writer died
half-way (intents.py), the (entity, key) goes here, fsync'ed before the write is acknowledged.
A replay does not trust a stored payload: it upserts the record's *current* JSON state (or
deletes it when JSON no longer has it), so replaying twice, or after newer writes, can never
put an older state back. While the outbox is not empty, writers add to it instead of writing
PostgreSQL directly, so a replay never races a newer direct write.

A damaged file never stops the layer: a torn last line (a process killed mid-append, its write
never acknowledged) is skipped; any other line that is not an entry is kept aside in
`outbox.corrupt` when the outbox is next rewritten, and both are reported by `data health`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.fsutil import append_durably, file_lock, private_dir, write_atomically


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    entity: str
    key: str
    op: str  # "upsert" or "delete": what the JSON write did; replay reads JSON's state anyway
    at: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "entity": self.entity, "key": self.key, "op": self.op, "at": self.at}


class OutboxUnreadable(RuntimeError):
    """The outbox file cannot be read at all (a folder in its place, an I/O error)."""


@dataclass
class Parsed:
    """A JSON-lines file of entries, with what was not an entry."""

    entries: list[OutboxEntry] = field(default_factory=list)
    corrupt: list[bytes] = field(default_factory=list)  # damaged lines, kept for a human
    torn: bool = False  # an unfinished last line: its append was never acknowledged


def _entry(line: bytes) -> OutboxEntry | None:
    try:
        raw = json.loads(line.decode("utf-8"))
        entry = OutboxEntry(**raw)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return None
    fields = (entry.id, entry.entity, entry.key, entry.op, entry.at)
    if not all(isinstance(f, str) for f in fields) or entry.op not in {"upsert", "delete"}:
        return None
    return entry


def parse_lines(raw: bytes) -> Parsed:
    """Entries of a JSON-lines file; bad lines are set aside, never raised on."""
    parsed = Parsed()
    lines = raw.split(b"\n")
    last = len(lines) - 1
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        entry = _entry(line)
        if entry is not None:
            parsed.entries.append(entry)
        elif index == last:  # no newline after it: an append cut short
            parsed.torn = True
        else:
            parsed.corrupt.append(line)
    return parsed


def _lines(entries: list[OutboxEntry]) -> bytes:
    return "".join(json.dumps(e.as_json()) + "\n" for e in entries).encode("utf-8")


class Outbox:
    """A JSON-lines file of pending PostgreSQL writes, under `<data_dir>/.provision/`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "outbox.jsonl"
        self.lock_path = directory / "outbox.lock"
        self.corrupt_path = directory / "outbox.corrupt"
        self._path_str = str(self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.path.parent)
        with file_lock(self.lock_path):
            yield

    def is_empty(self) -> bool:
        """Cheap (one stat): every read in a PostgreSQL-reading phase asks."""
        try:
            return os.stat(self._path_str).st_size == 0
        except FileNotFoundError:
            return True

    def add(self, items: list[tuple[str, str, str]]) -> None:
        """Append (entity, key, op) items durably: returns only once they are on disk."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.add_entries([OutboxEntry(uuid.uuid4().hex, e, k, op, now) for e, k, op in items])

    def add_entries(self, entries: list[OutboxEntry]) -> None:
        """Append entries as they are (intents moving here keep their id and time)."""
        if not entries:
            return
        with self._locked():
            # own_line: a torn last line (a process killed mid-append) must not swallow the
            # first of these entries, which the reader would then skip with it.
            append_durably(self.path, _lines(entries), mode=0o600, own_line=True)

    def _parsed(self) -> Parsed:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Parsed()
        except OSError as exc:
            raise OutboxUnreadable(f"{self.path}: cannot be read ({exc.strerror or exc})") from None
        return parse_lines(raw)

    def entries(self) -> list[OutboxEntry]:
        with self._locked():
            return self._parsed().entries

    def depth(self) -> int:
        if self.is_empty():
            return 0
        return len(self.entries())

    def status(self) -> dict[str, Any]:
        """Depth, the oldest entry's time, damaged lines: what health reports."""
        status: dict[str, Any] = {"depth": 0, "oldest_at": None, "corrupt_lines": 0}
        status["error"] = None
        try:
            kept_aside = self.corrupt_path.read_bytes().count(b"\n")
        except FileNotFoundError:
            kept_aside = 0
        except OSError as exc:
            status["error"] = f"{self.corrupt_path}: {exc.strerror or exc}"
            kept_aside = 0
        parsed = Parsed()
        if not self.is_empty():
            try:
                with self._locked():
                    parsed = self._parsed()
            except OutboxUnreadable as exc:
                status["error"] = str(exc)
        status["depth"] = len(parsed.entries)
        status["oldest_at"] = min((e.at for e in parsed.entries), default=None)
        status["corrupt_lines"] = len(parsed.corrupt) + kept_aside
        status["torn_last_line"] = parsed.torn
        return status

    def drain(
        self, replay: Callable[[list[OutboxEntry]], set[str]], batch: int = 500
    ) -> tuple[int, int]:
        """Replay pending entries oldest first; (entries removed, entries kept).

        `replay` returns the ids of entries it could not settle (kept for next time); the others
        were applied (or quarantined) and are removed. It raises when PostgreSQL is unreachable:
        what was not replayed stays. Holding the lock keeps a second drainer (and new additions)
        out meanwhile. Damaged lines go to `outbox.corrupt` (durably) before the rewrite.
        """
        removed = 0
        with self._locked():
            parsed = self._parsed()
            pending = parsed.entries
            kept: list[OutboxEntry] = []
            try:
                while pending:
                    chunk = pending[:batch]
                    left = replay(chunk)
                    kept.extend(e for e in chunk if e.id in left)
                    removed += len(chunk) - len(left)
                    pending = pending[batch:]
            finally:
                if parsed.corrupt:
                    append_durably(
                        self.corrupt_path, b"".join(line + b"\n" for line in parsed.corrupt)
                    )
                write_atomically(self.path, _lines(kept + pending), mode=0o600)
        return removed, len(kept)
