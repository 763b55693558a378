"""The durable outbox: PostgreSQL writes that could not be made yet, replayed in order.

In the dual-write phases JSON is written first and is the truth; when the PostgreSQL half of
a write fails, the (entity, key) goes here, fsync'ed before the write is acknowledged. A
replay does not trust a stored payload: it upserts the record's *current* JSON state (or
deletes it when JSON no longer has it), so replaying twice, or after newer writes, can never
put an older state back. While the outbox is not empty, writers add to it instead of writing
PostgreSQL directly, so a replay never races a newer direct write.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


class Outbox:
    """A JSON-lines file of pending PostgreSQL writes, under `<data_dir>/.provision/`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "outbox.jsonl"
        self.lock_path = directory / "outbox.lock"
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
        lines = "".join(
            json.dumps(OutboxEntry(uuid.uuid4().hex, e, k, op, now).as_json()) + "\n"
            for e, k, op in items
        )
        with self._locked():
            # own_line: a torn last line (a process killed mid-append) must not swallow the
            # first of these entries, which the reader would then skip with it.
            append_durably(self.path, lines.encode("utf-8"), mode=0o600, own_line=True)

    def _read(self) -> list[OutboxEntry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entries.append(OutboxEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # a torn last line: its write was never acknowledged
        return entries

    def entries(self) -> list[OutboxEntry]:
        with self._locked():
            return self._read()

    def depth(self) -> int:
        if self.is_empty():
            return 0
        return len(self.entries())

    def drain(self, replay: Callable[[list[OutboxEntry]], None], batch: int = 500) -> int:
        """Replay pending entries oldest first; remove each batch only once it is applied.

        `replay` raises when PostgreSQL fails; what was not replayed stays for next time.
        Holding the lock keeps a second drainer (and new additions) out meanwhile.
        """
        done = 0
        with self._locked():
            pending = self._read()
            try:
                while pending:
                    chunk = pending[:batch]
                    replay(chunk)
                    pending = pending[batch:]
                    done += len(chunk)
            finally:
                remaining = "".join(json.dumps(e.as_json()) + "\n" for e in pending)
                write_atomically(self.path, remaining, mode=0o600)
        return done
