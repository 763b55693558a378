"""Write-ahead intents of the dual-write phases: which records a write is about to change.

Before the JSON write the (entity, key, op) of each record goes, durably (one sync per batch),
to `<data_dir>/.provision/intents/<entity>.jsonl`, cleared once PostgreSQL has the records, so
a process killed between the two writes cannot leave the stores apart unnoticed. Only the
holder of the entity's write lock writes the file; leftovers found under the lock go to the
outbox. The file format is in docs/data-layer.md, "Intents".
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from provisioner.fsutil import fsync_dir, private_dir
from provisioner.storage.layer.outbox import OutboxEntry, parse_lines

# Room for a batch of about 600 intents without growing the file.
_PREALLOCATED = 64 * 1024


@dataclass
class Intent:
    """One batch's intents, written at `offset` of its entity's file."""

    entity: str
    offset: int
    entries: list[OutboxEntry]


class IntentLog:
    """The per-entity intent files under `<data_dir>/.provision/intents/`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "intents"
        self._fds: dict[str, int] = {}  # one open file per entity, kept for the process
        self._fds_lock = threading.Lock()
        self._paths: dict[str, str] = {}

    def path(self, entity: str) -> Path:
        return self.dir / f"{entity}.jsonl"

    def _path(self, entity: str) -> str:
        """As a str, made once: a missing file is tried again at every read."""
        path = self._paths.get(entity)
        if path is None:
            path = self._paths[entity] = str(self.path(entity))
        return path

    def close(self) -> None:
        with self._fds_lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _fd(self, entity: str, create: bool) -> int | None:
        """The entity's file, open read-write (None when it does not exist and not `create`).
        A file someone removed is opened again."""
        fd = self._fds.get(entity)
        if fd is not None and os.fstat(fd).st_nlink:
            return fd
        with self._fds_lock:
            fd = self._fds.get(entity)
            if fd is not None and os.fstat(fd).st_nlink:
                return fd
            path = self._path(entity)
            try:
                new = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if not create:
                    return None
                new = self._create(path)
            if fd is not None:
                os.close(fd)
            self._fds[entity] = new
            return new

    def _create(self, path: str) -> int:
        private_dir(self.dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not os.fstat(fd).st_size:
                # Zeros written, not fallocated: a first write into an allocated but unwritten
                # block would change metadata, which the per-batch data sync must not need.
                os.pwrite(fd, bytes(_PREALLOCATED), 0)  # an empty intent file
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        fsync_dir(self.dir)
        return fd

    @staticmethod
    def _content(fd: int) -> bytes:
        """The lines before the first NUL."""
        head = os.pread(fd, _PREALLOCATED, 0)
        end = head.find(b"\0")
        if end < 0 and len(head) == _PREALLOCATED:  # a batch grew the file: read it all
            head = os.pread(fd, os.fstat(fd).st_size, 0)
            end = head.find(b"\0")
        return head if end < 0 else head[:end]

    def entities(self) -> list[str]:
        """Entities whose intent file holds something (in flight or left over)."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.endswith(".jsonl") and not name.startswith(".") and self.holds(name[:-6]):
                found.append(name[:-6])
        return found

    def leftovers(self, entity: str) -> list[OutboxEntry]:
        """What the file holds; with the entity's write lock held, writes that did not finish."""
        fd = self._fd(entity, create=False)
        return [] if fd is None else parse_lines(self._content(fd)).entries

    def begin(self, entity: str, items: list[tuple[str, str]]) -> Intent:
        """Write `(key, op)` intents durably after what the file holds; the caller holds the
        entity's write lock."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        entries = [OutboxEntry(uuid.uuid4().hex, entity, key, op, now) for key, op in items]
        data = "".join(json.dumps(e.as_json()) + "\n" for e in entries).encode("utf-8")
        fd = self._fd(entity, create=True)
        assert fd is not None
        held = self._content(fd)
        if held and not held.endswith(b"\n"):
            data = b"\n" + data  # a line torn by a killed writer stays on its own
        os.pwrite(fd, data + b"\0", len(held))
        os.fdatasync(fd)
        return Intent(entity, len(held), entries)

    def finish(self, intent: Intent) -> None:
        """Clear this batch's intents (PostgreSQL has the records, or the outbox does)."""
        fd = self._fd(intent.entity, create=False)
        if fd is not None:
            os.pwrite(fd, b"\0", intent.offset)

    def clear(self, entity: str) -> None:
        """Empty the file once its leftovers are safe elsewhere (caller holds the write lock)."""
        fd = self._fd(entity, create=False)
        if fd is not None:
            os.pwrite(fd, b"\0", 0)

    def holds(self, entity: str) -> bool:
        """Whether the file holds anything (one read of one byte: reads in a PostgreSQL-reading
        phase ask, and it is empty but while a write is in flight)."""
        fd = self._fd(entity, create=False)
        return fd is not None and os.pread(fd, 1, 0) not in (b"", b"\0")

    def pending_keys(self, entity: str) -> frozenset[str]:
        """Keys with an intent in the file."""
        if not self.holds(entity):
            return frozenset()
        fd = self._fd(entity, create=False)
        assert fd is not None
        return frozenset(e.key for e in parse_lines(self._content(fd)).entries)
