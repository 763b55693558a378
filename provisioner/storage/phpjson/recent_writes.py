"""The ledger of this layer's recent acknowledged writes, and the re-application of those that
the PHP application's stale read-modify-write reverted.

PHP reads a data file under `LOCK_SH`, releases it and writes under a separate `LOCK_EX`,
overwriting whatever was written in between. So every write of this layer is recorded, record
by record, durably before it is acknowledged, and every later look at the file under its lock
checks each record: its new content there is intact, a content it had before is back means
reverted (written again, `write_reapplied`), anything else is a later legitimate change. What
a record is and the ledger's format are in docs/data-layer.md, "Recent writes".
"""

from __future__ import annotations

import copy
import fcntl
import itertools
import json
import logging
import operator
import os
import secrets
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Final

from provisioner.fsutil import (
    append_durably,
    fsync_dir,
    grow_with_zeros,
    open_or_create,
    pwrite_all,
    write_atomically,
)
from provisioner.storage.phpjson import write_ahead

__all__ = [
    "GONE",
    "MAX_AGE_SECONDS",
    "REVERT_WINDOW_SECONDS",
    "Change",
    "Ledger",
    "Prepared",
    "changes_between",
    "health_report",
    "ledger_for",
    "needs_recheck",
    "reapplied_count",
]

# How long after a write a PHP writer that read the file before it may still write: the
# ledger keeps an entry until the record is seen intact this long after the write.
REVERT_WINDOW_SECONDS: float = 60.0
# Entries nobody could check for this long are dropped unchecked (reconcile runs every minute).
MAX_AGE_SECONDS: float = 3600.0
# A bound on the ledger of one file; the oldest entries go first.
MAX_ENTRIES: int = 100_000
# Compaction: when the file holds this many more lines than live entries.
_COMPACT_SLACK: Final = 2000
# The log of re-applied writes, for `data health` in other processes.
_REAPPLIED_LOG = "reapplied.jsonl"
_REAPPLIED_LOG_MAX_BYTES: Final = 1 << 20

_canonical = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


class _Gone:
    def __repr__(self) -> str:
        return "GONE"


GONE: Final[Any] = _Gone()
_WRAPPER_SAMPLE: Final = 8
_PROCESS = secrets.token_hex(4)
_SEQUENCE = itertools.count()


def _text(value: Any) -> str | None:
    """A record's canonical text (type-exact and key-ordered, as PHP rewrites it); None: absent."""
    return None if value is GONE else _canonical(value)


# --------------------------------------------------------------------------------------------
# What a write changed, record by record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One record a write changed: `where` (keys from the top), its texts before and after
    (None: absent); `in_list`: `where` names a list and the record is one of its elements."""

    where: tuple[str, ...]
    in_list: bool
    old: str | None
    new: str | None


def _is_container(value: Any) -> bool:
    return type(value) is dict or type(value) is list


def _is_wrapper(value: Any) -> bool:
    """A container of records (it holds only objects or lists; its first few tell)."""
    if not _is_container(value) or not value:
        return False
    members = value.values() if type(value) is dict else value
    return all(map(_is_container, itertools.islice(members, _WRAPPER_SAMPLE)))


def _dict_members(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(key, old member, new member) for members that are not the same objects; a document
    changed copy-on-write shares every untouched member, so this costs C-speed passes only."""
    old = old if type(old) is dict else {}
    new = new if type(new) is dict else {}
    keys = list(new)
    same = map(operator.is_, map(old.get, keys, repeat(GONE)), new.values())
    changed = list(compress(keys, map(operator.not_, same)))
    out = [(k, old.get(k, GONE), new[k]) for k in changed]
    added = sum(1 for _k, o, _n in out if o is GONE)
    if len(old) > len(new) - added:
        out += [(k, v, GONE) for k, v in old.items() if k not in new]
    return out


def _list_changes(where: tuple[str, ...], old: Any, new: Any, out: list[Change]) -> None:
    old = old if type(old) is list else []
    new = new if type(new) is list else []
    for index in range(max(len(old), len(new))):
        o = old[index] if index < len(old) else GONE
        n = new[index] if index < len(new) else GONE
        if o is not n:
            before, after = _text(o), _text(n)
            if before != after:
                out.append(Change(where, True, before, after))


def _record_change(where: tuple[str, ...], old: Any, new: Any, out: list[Change]) -> None:
    before, after = _text(old), _text(new)
    if before != after:
        out.append(Change(where, False, before, after))


def changes_between(old: Any, new: Any) -> list[Change]:
    """The records `new` changed relative to `old` (two versions of one document)."""
    out: list[Change] = []
    if type(old) is list or type(new) is list:
        _list_changes((), old, new, out)
        return out
    for key, o, n in _dict_members(old, new):
        if not _is_container(o) and not _is_container(n):
            continue  # a file-level stamp such as last_updated
        if _is_wrapper(o) or _is_wrapper(n) or not (o or n):
            inner = n if _is_container(n) and n else o
            if type(inner) is list:
                _list_changes((key,), o, n, out)
            else:
                for member, mo, mn in _dict_members(o, n):
                    _record_change((key, member), mo, mn, out)
        else:
            _record_change((key,), o, n, out)
    return out


# --------------------------------------------------------------------------------------------
# Looking records up and putting them back (copy-on-write: the document may be shared)
# --------------------------------------------------------------------------------------------


class _CannotReapply(Exception):
    """The place of the record no longer has the shape it had (e.g. a wrapper became a list)."""


def _lookup(doc: Any, where: tuple[str, ...]) -> Any:
    node = doc
    for key in where:
        if type(node) is not dict:
            return GONE
        node = node.get(key, GONE)
    return node


class _Rewriter:
    """Puts records back into a document that may be shared: every container on the way to
    a record is copied once (a batch of records costs one copy of their wrapper, not one
    each); everything else stays shared."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self._mine: set[int] = set()  # containers copied here (the originals stay alive)

    def _own(self, value: Any) -> Any:
        if id(value) not in self._mine:
            value = copy.copy(value)
            self._mine.add(id(value))
        return value

    def container(self, where: tuple[str, ...], kind: type) -> Any:
        """The container at `where`, of `kind` (dict or list), made when missing (and from
        PHP's `[]` for an empty object); _CannotReapply when something else is there."""
        if not where:
            if type(self.doc) is not kind:
                if self.doc not in (GONE, [], {}):
                    raise _CannotReapply
                self.doc = kind()
                self._mine.add(id(self.doc))
            self.doc = self._own(self.doc)
            return self.doc
        parent = self.container(where[:-1], dict)
        child = parent.get(where[-1], GONE)
        if type(child) is not kind:
            if child not in (GONE, [], {}):
                raise _CannotReapply
            child = kind()
            self._mine.add(id(child))
        child = self._own(child)
        parent[where[-1]] = child
        return child

    def put(self, entry: _Entry) -> None:
        """Write `entry`'s record (or its deletion) again."""
        value = GONE if entry.new is None else json.loads(entry.new)
        if not entry.in_list:
            parent = self.container(entry.where[:-1], dict)
            if value is GONE:
                parent.pop(entry.where[-1], None)
            else:
                parent[entry.where[-1]] = value
            return
        items = self.container(entry.where, list)
        at = next((i for i, x in enumerate(items) if _canonical(x) in entry.olds), None)
        if value is GONE:
            if at is not None:
                del items[at]
        elif at is not None:
            items[at] = value
        else:
            items.append(value)


@dataclass(slots=True)
class _Entry:
    id: str
    at: float  # wall clock of the write
    where: tuple[str, ...]
    in_list: bool
    new: str | None
    olds: frozenset[str | None]

    def line(self) -> str:
        parts = [
            f'{{"id":{json.dumps(self.id)},"at":{self.at!r},',
            f'"where":{_canonical(list(self.where))},"list":{"true" if self.in_list else "false"}',
        ]
        if self.new is not None:
            parts.append(f',"new":{self.new}')
        known = [t for t in self.olds if t is not None]
        parts.append(f',"olds":[{",".join(known)}]')
        if None in self.olds:
            parts.append(',"was_absent":true')
        return "".join(parts) + "}\n"

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> _Entry:
        olds: set[str | None] = {_canonical(v) for v in item.get("olds", [])}
        if item.get("was_absent"):
            olds.add(None)
        new = _canonical(item["new"]) if "new" in item else None
        return cls(
            str(item["id"]),
            float(item["at"]),
            tuple(item["where"]),
            bool(item["list"]),
            new,
            frozenset(olds),
        )


_INTACT, _REVERTED, _SUPERSEDED = "intact", "reverted", "superseded"


def _state_of(entry: _Entry, doc: Any, list_texts: dict[tuple[str, ...], set[str]]) -> str:
    if not entry.in_list:
        now = _text(_lookup(doc, entry.where))
        if now == entry.new:
            return _INTACT
        return _REVERTED if now in entry.olds else _SUPERSEDED
    texts = list_texts.get(entry.where)
    if texts is None:
        found = _lookup(doc, entry.where)
        texts = {_canonical(x) for x in found} if type(found) is list else set()
        list_texts[entry.where] = texts
    olds_present = any(t in texts for t in entry.olds if t is not None)
    if entry.new is None:
        return _REVERTED if olds_present else _INTACT
    if entry.new in texts:
        return _INTACT
    return _REVERTED if (None in entry.olds or olds_present) else _SUPERSEDED


# --------------------------------------------------------------------------------------------
# The ledger of one data file
# --------------------------------------------------------------------------------------------


_stats_lock = threading.Lock()
_reapplied_total = 0
_recent_reapplied: deque[dict[str, Any]] = deque(maxlen=20)


def reapplied_count() -> int:
    """Records this process has written again since it started (see `health_report` for all)."""
    return _reapplied_total


def _file_marker(data: bytes) -> list[int]:
    return [len(data), zlib.crc32(data)]


@dataclass(frozen=True)
class Prepared:
    """A write's entries, made by `Ledger.prepare`, and the entries they replaced."""

    ids: list[str]
    replaced: list[_Entry]


class Ledger:
    """The recent acknowledged writes to one data file, as this process knows them.

    Used under the data file's `LOCK_EX` only (a thread lock too, for the creation of a new
    file, which runs under its folder's lock instead).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = write_ahead.ledger_file(path)
        self.lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}  # by id, oldest first
        self._latest: dict[tuple[str, ...], str] = {}  # a keyed record -> its entry's id
        self._ino = -1
        self._offset = 0  # the end of the complete lines read so far
        self._end = 0  # the end of what the file holds (zeros follow: see `_append`)
        self._lines = 0
        self._marker: list[int] | None = None  # last content written or found intact
        self._verified: bytes | None = None  # the same content, in this process
        self.verified_key: tuple[int, ...] | None = None
        self._drops: list[str] = []

    # -- the file ----------------------------------------------------------------------------
    def _reset(self) -> None:
        self._entries.clear()
        self._latest.clear()
        self._offset = self._end = self._lines = 0
        self._marker = None

    def load(self) -> None:
        """Read what other processes (and a previous run) wrote since the last look."""
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            if self._ino != -1:
                self._reset()
                self._ino = -1
            return
        if st.st_ino != self._ino or st.st_size < self._offset:
            self._reset()
            self._ino = st.st_ino
        blob = self._read_to_end()
        end = blob.rfind(b"\n") + 1  # a torn last line is left for later (and then skipped)
        floor = time.time() - MAX_AGE_SECONDS
        for line in blob[:end].splitlines():
            self._lines += 1
            try:
                item = json.loads(line)
                if "id" in item:
                    entry = _Entry.from_json(item)
                    if entry.at >= floor:
                        self._put(entry)
                for gone in item.get("drop", ()):
                    self._forget(str(gone))
                if "wrote" in item:
                    self._marker = [int(n) for n in item["wrote"]]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn line: its write was never acknowledged
        self._offset += end
        self._end = self._offset + len(blob) - end

    def _read_to_end(self) -> bytes:
        """The bytes after `_offset` up to the zeros that end what the file holds."""
        chunks = []
        fd = os.open(self.file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            at, want = self._offset, 1 << 12
            while chunk := os.pread(fd, want, at):
                nul = chunk.find(0)
                if nul >= 0:
                    chunks.append(chunk[:nul])
                    break
                chunks.append(chunk)
                at, want = at + len(chunk), 1 << 16
        finally:
            os.close(fd)
        return b"".join(chunks)

    def _append(self, text: str, durable: bool) -> None:
        """Write `text` after what the file holds (fdatasync'ed when `durable`). The file is
        grown with zeros ahead of need and written at an offset rather than appended to, so
        that the sync overwrites blocks it has: no journal commit. Only ever called under the
        data file's lock, after `load`, so `_end` is where the file's content ends."""
        payload = text.encode("ascii")
        if self._end > self._offset:
            payload = b"\n" + payload  # a torn last line stays on its own
        fd, created = open_or_create(
            self.file, os.O_RDWR | os.O_CLOEXEC, 0o600, write_ahead.make_private_folder
        )
        try:
            st = os.fstat(fd)
            if st.st_ino != self._ino:  # made just now: it holds nothing yet
                self._ino, self._offset, self._end = st.st_ino, 0, 0
                payload = text.encode("ascii")
            at = self._end
            grow_with_zeros(fd, at + len(payload))
            pwrite_all(fd, payload, at)
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.file.parent)
        self._lines += text.count("\n")
        self._offset = self._end = at + len(payload)

    def _compact_if_mostly_dropped(self) -> None:
        if self._lines <= 2 * len(self._entries) + _COMPACT_SLACK:
            return
        lines = [entry.line() for entry in self._entries.values()]
        if lines and self._marker is not None:
            lines.append(json.dumps({"wrote": self._marker}) + "\n")
        st = write_atomically(self.file, "".join(lines), mode=0o600)
        self._ino, self._offset, self._end = st.st_ino, st.st_size, st.st_size
        self._lines = len(lines)
        self._drops.clear()

    # -- entries -----------------------------------------------------------------------------
    def _put(self, entry: _Entry) -> None:
        self._entries.pop(entry.id, None)
        if not entry.in_list:
            previous = self._latest.get(entry.where)
            if previous is not None:
                self._entries.pop(previous, None)
            self._latest[entry.where] = entry.id
        self._entries[entry.id] = entry
        while len(self._entries) > MAX_ENTRIES:
            self._drop(next(iter(self._entries)))

    def _forget(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is not None and not entry.in_list and self._latest.get(entry.where) == entry_id:
            del self._latest[entry.where]

    def _drop(self, entry_id: str) -> None:
        self._forget(entry_id)
        self._drops.append(entry_id)

    def _settle(self, now: float) -> None:
        """Entries seen intact (the content is one known to hold them all) long enough after
        their write can no longer be reverted by a stale read."""
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.at + REVERT_WINDOW_SECONDS > now:
                break
            self._drop(oldest.id)

    # -- the checks --------------------------------------------------------------------------
    def check(self, raw: bytes, doc: Any) -> list[_Entry]:
        """The entries a later write reverted in the file's content `raw` (parsed: `doc`);
        the content is looked at only when it is not one this layer wrote or checked."""
        now = time.time()
        self.load()
        if not self._entries:
            return []
        if raw is self._verified or raw == self._verified:
            self._settle(now)
            return []
        if self._marker is not None and self._marker == _file_marker(raw):
            self._verified = raw  # another process of this layer wrote or checked it
            self._settle(now)
            return []
        reverted = []
        list_texts: dict[tuple[str, ...], set[str]] = {}
        for entry in list(self._entries.values()):
            state = _state_of(entry, doc, list_texts)
            if state == _REVERTED:
                reverted.append(entry)
            elif state == _SUPERSEDED or entry.at + REVERT_WINDOW_SECONDS <= now:
                self._drop(entry.id)
        return reverted

    def found_intact(self, raw: bytes, key: tuple[int, ...]) -> None:
        """`raw`, just checked (nothing reverted), holds every live entry: say so in the file
        (unsynced: losing it only costs another process a check). After `check`."""
        known = raw is self._verified or raw == self._verified
        self._verified, self.verified_key = raw, key
        if not self._drops and (known or not self._entries):
            return
        if not known or self._marker is None:
            self._marker = _file_marker(raw)
        self._append(self._tail_line(), durable=False)
        self._compact_if_mostly_dropped()

    def _tail_line(self) -> str:
        tail: dict[str, Any] = {} if self._marker is None else {"wrote": self._marker}
        if self._drops:
            tail["drop"] = self._drops
        text = json.dumps(tail) + "\n"
        self._drops = []
        return text

    def prepare(self, changes: list[Change], size: int, crc: int) -> Prepared | None:
        """The entries of a write that makes `changes` (its content: `size` bytes, CRC-32
        `crc`), written to the ledger file unsynced: `sync` makes them durable beside the
        write's durable copy, before the data file is touched, so before the write is
        acknowledged; `cancel` takes them back when the write fails with the file unchanged.
        A write a crash interrupts is completed from its copy (write_ahead), so entries that
        are durable before their write never stand for a write that does not happen.
        """
        self.load()  # a new data file: `check` did not run
        now = time.time()
        lines, ids, replaced = [], [], []
        for change in changes:
            olds: set[str | None] = {change.old}
            if not change.in_list:
                previous_id = self._latest.get(change.where)
                previous = self._entries.get(previous_id) if previous_id else None
                if previous is not None:  # the states the layer's earlier writes replaced
                    olds |= previous.olds
                    olds.add(previous.new)
                    replaced.append(previous)
            olds.discard(change.new)
            entry = _Entry(
                f"{_PROCESS}-{next(_SEQUENCE):x}",
                now,
                change.where,
                change.in_list,
                change.new,
                frozenset(olds),
            )
            self._put(entry)
            ids.append(entry.id)
            lines.append(entry.line())
        if not lines and not self._entries and not self._drops:
            self._marker = None  # not this content's: computed when it is next needed
            return None
        self._marker = [size, crc]
        lines.append(self._tail_line())
        self._append("".join(lines), durable=False)
        return Prepared(ids, replaced)

    def sync(self) -> None:
        """fdatasync what `prepare` wrote (the caller runs it beside the durable copy's)."""
        fd = os.open(self.file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def cancel(self, prepared: Prepared) -> None:
        """The write `prepare` recorded failed and the file is unchanged: its entries go (and
        those they replaced come back), durably, so that none is ever written again."""
        for entry_id in prepared.ids:
            self._drop(entry_id)
        for entry in prepared.replaced:
            self._put(entry)
        self._marker = None
        lines = "".join(entry.line() for entry in prepared.replaced) + self._tail_line()
        self._append(lines, durable=True)

    def committed(self, data: bytes, key: tuple[int, ...]) -> None:
        """The write `prepare` recorded is durable: `data` holds every live entry."""
        self._verified, self.verified_key = data, key
        self._compact_if_mostly_dropped()

    def reapply(self, doc: Any, entries: list[_Entry]) -> tuple[Any, list[_Entry]]:
        """`doc` with the reverted `entries` written again (copy-on-write), and those done."""
        done = []
        rewriter = _Rewriter(doc)
        for entry in entries:
            try:
                rewriter.put(entry)
            except _CannotReapply:
                self._drop(entry.id)
                _emit(
                    "write_reapply_skipped",
                    logging.WARNING,
                    file=str(self.path),
                    record=list(entry.where),
                    reason="the record's place changed shape",
                )
                continue
            done.append(entry)
        return rewriter.doc, done

    def reapplied(self, entries: list[_Entry]) -> None:
        """Count and log records written again (their write is durable)."""
        global _reapplied_total
        if not entries:
            return
        now = time.time()
        records = [list(e.where) + ([] if not e.in_list else ["[]"]) for e in entries]
        with _stats_lock:
            _reapplied_total += len(entries)
            for record in records:
                _recent_reapplied.append({"at": now, "file": str(self.path), "record": record})
        _emit(
            "write_reapplied",
            logging.WARNING,
            file=str(self.path),
            count=len(entries),
            records=records[:20],
        )
        _log_reapplied(self.path, now, records)


def _emit(event: str, level: int, **fields: Any) -> None:
    from provisioner.storage.events import emit  # rare paths only: keeps imports light

    emit(event, level, **fields)


def _log_reapplied(path: Path, now: float, records: list[list[str]]) -> None:
    """Append to the state folder's log of re-applied writes (what `data health` counts)."""
    log = write_ahead.state_dir(path) / _REAPPLIED_LOG
    lines = "".join(
        json.dumps({"at": round(now, 3), "file": str(path), "record": r}) + "\n" for r in records
    )
    try:
        if log.exists() and log.stat().st_size > _REAPPLIED_LOG_MAX_BYTES:
            kept = log.read_text(encoding="utf-8").splitlines(keepends=True)
            write_atomically(log, "".join(kept[len(kept) // 2 :]), mode=0o600)
        append_durably(log, lines.encode("utf-8"), mode=0o600, own_line=True)
    except OSError as exc:  # the record itself was written; only the count is lost
        _emit("write_reapplied_log_failed", logging.WARNING, file=str(log), error=str(exc))


_ledgers: dict[str, Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger_for(path: Path) -> Ledger:
    """The one Ledger of the data file at `path` (absolute) in this process."""
    key = str(path)
    ledger = _ledgers.get(key)
    if ledger is None:
        with _ledgers_lock:
            ledger = _ledgers.setdefault(key, Ledger(path))
    return ledger


def needs_recheck(path: Path, key: tuple[int, ...] | None = None) -> bool:
    """Should a reader of `path` (absolute; `key`: its stat key, as the writer passes it to
    `record` and `found_intact`) recheck it under `LOCK_EX` before reading? Yes when a write was
    interrupted (a durable copy waits), or when the file has a ledger and its content is not
    the one this process last found every entry intact in."""
    if write_ahead.pending(path):
        return True
    ledger = _ledgers.get(str(path))
    if ledger is not None and key is not None and ledger.verified_key == key:
        return False
    try:
        return os.stat(write_ahead.ledger_file(path)).st_size > 0
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------


def _interrupted(target: Path) -> bool:
    """A durable copy waits and nobody holds the file's lock: a write a crash cut short."""
    if not write_ahead.pending(target):
        return False
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a write in progress
    finally:
        os.close(fd)
    return write_ahead.pending(target)


def health_report(data_dir: Path, recent: int = 5) -> dict[str, Any]:
    """For `provision data health`: records written again because PHP reverted them (all
    processes, from the state folders' logs), the latest few, and data files whose write a
    crash cut short and nobody has repaired yet (`degraded` when there is any)."""
    total = 0
    latest: list[dict[str, Any]] = []
    for state in write_ahead.state_dirs(Path(data_dir)):
        log = state / _REAPPLIED_LOG
        try:
            lines = log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        total += len(lines)
        for line in lines[-recent:]:
            try:
                latest.append(json.loads(line))
            except ValueError:
                continue
    latest.sort(key=lambda item: item.get("at", 0))
    interrupted = [str(p) for p in write_ahead.tracked_files(Path(data_dir)) if _interrupted(p)]
    return {
        "reapplied_writes": total,
        "recent_reapplied": latest[-recent:],
        "interrupted_writes": interrupted,
        "degraded": bool(interrupted),
    }
