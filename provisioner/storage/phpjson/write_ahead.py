"""Rewriting a data file in place, the way the PHP application does, with a durable copy first.

In place: PHP writes whatever inode it opened and locked, so a rename while PHP waits would
lose PHP's write; this layer writes the same inode under `LOCK_EX`, as PHP does. A copy first:
a rewrite in place torn by a crash is repaired from `<state>/wal/...`, written and synced
before the file (with the old content from where it differs, to tell a torn rewrite from a
later PHP write). `<state>` is the data folder's `.provision`. docs/data-layer.md, "The durable
copy", has the details.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provisioner.fsutil import fsync_dir, grow_with_zeros, open_or_create, private_dir, pwrite_all

__all__ = [
    "WriteAheadError",
    "ledger_file",
    "pending",
    "repair",
    "state_dir",
    "state_dirs",
    "tracked_files",
    "write_in_place",
]

STATE_NAME = ".provision"
_WAL = "wal"
_LEDGER = "ledger"
_LEDGER_SUFFIX = ".jsonl"
# The file's folder and this many of its parents are searched for an existing state folder.
_PARENTS_SEARCHED = 2

_state_for_folder: dict[str, Path] = {}
_registry_lock = threading.Lock()


class WriteAheadError(OSError):
    """A write failed at `stage` ("copy": the durable copy, before the file was touched;
    "file": the rewrite itself); `unchanged` says whether the file holds its old content
    (else it may be torn until the next access completes it from the durable copy)."""

    def __init__(self, path: Path, cause: OSError, stage: str, unchanged: bool) -> None:
        super().__init__(cause.errno, f"{cause.strerror or cause}", str(path))
        self.cause = cause
        self.stage = stage
        self.unchanged = unchanged


# --------------------------------------------------------------------------------------------
# Where the layer keeps its own files
# --------------------------------------------------------------------------------------------


def state_dir(path: Path) -> Path:
    """The `.provision` folder that holds `path`'s durable copy and ledger (see module doc).

    Found once per folder and remembered: the nearest existing one wins, so once a copy was
    written the answer never changes (a folder made later higher up is farther away).
    """
    folder = path.parent
    key = str(folder)
    found = _state_for_folder.get(key)
    if found is not None:
        return found
    candidate = folder
    found = folder / STATE_NAME
    for _ in range(_PARENTS_SEARCHED + 1):
        if (candidate / STATE_NAME).is_dir():
            found = candidate / STATE_NAME
            break
        if candidate.parent == candidate:
            break
        candidate = candidate.parent
    with _registry_lock:
        _state_for_folder[key] = found
    return found


def _relative(path: Path) -> Path:
    return path.relative_to(state_dir(path).parent)


_wal_files: dict[str, Path] = {}


def wal_file(path: Path) -> Path:
    """The durable copy of `path`'s next content (empty or missing: no write in progress)."""
    found = _wal_files.get(str(path))
    if found is None:
        found = _wal_files[str(path)] = state_dir(path) / _WAL / _relative(path)
    return found


def ledger_file(path: Path) -> Path:
    """The ledger of this layer's recent acknowledged writes to `path` (recent_writes)."""
    relative = _relative(path)
    return state_dir(path) / _LEDGER / relative.with_name(relative.name + _LEDGER_SUFFIX)


def state_dirs(root: Path) -> list[Path]:
    """Every state folder that may serve files under `root` (the root, and two levels down)."""
    found = []
    for pattern in (STATE_NAME, f"*/{STATE_NAME}", f"*/*/{STATE_NAME}"):
        found += [p for p in sorted(root.glob(pattern)) if p.is_dir()]
    return found


def tracked_files(root: Path) -> list[Path]:
    """Data files under `root` with a pending durable copy or a ledger: what a reconcile checks."""
    targets: dict[str, Path] = {}
    for state in state_dirs(root):
        wal_root, ledger_root = state / _WAL, state / _LEDGER
        for copy in sorted(wal_root.rglob("*")):
            if copy.is_file() and _is_pending(copy):
                target = state.parent / copy.relative_to(wal_root)
                targets.setdefault(str(target), target)
        for ledger in sorted(ledger_root.rglob(f"*{_LEDGER_SUFFIX}")):
            relative = ledger.relative_to(ledger_root)
            target = state.parent / relative.with_name(relative.name[: -len(_LEDGER_SUFFIX)])
            targets.setdefault(str(target), target)
    return [p for p in targets.values() if p.exists()]


def make_private_folder(folder: Path) -> None:
    """Make `folder` (0700, its missing parents too) when it is missing; made folders are
    fsync'ed into their parents, so a durable copy written in them survives a crash."""
    if os.path.isdir(folder):
        return
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for made in reversed(missing):  # top down, each 0700 (mkdir's parents would get 0755)
        private_dir(made)
        fsync_dir(made.parent)


# --------------------------------------------------------------------------------------------
# The durable copy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Copy:
    """A pending write: the new content, and the old content from `old_from` on (before it,
    old and new are the same)."""

    dev: int
    ino: int
    content: bytes
    old_from: int
    old_tail: bytes


# The copy's first byte: a write in progress (or cut short), or none. The file is grown in
# steps and never shrunk, and the mark is flipped in place: a rewrite of the copy then only
# overwrites blocks it already has, which costs no journal commit on the fdatasync.
_PENDING, _CLEARED = b"P", b"C"
# A write cut short (a crash stops a write between pages; a power loss keeps any subset of
# sectors) leaves each sector of the file as the new content's or the old content's.
_SECTOR = 512


def _first_difference(old: bytes, new: bytes) -> int:
    """Where `old` and `new` start to differ, rounded down to a sector (memcmp speed:
    `startswith` of a memoryview copies nothing; memoryview `==` compares item by item)."""
    view = memoryview(old)
    limit = min(len(old), len(new))
    at = 0
    for step in (1 << 16, 1 << 12, _SECTOR):
        while at + step <= limit and new.startswith(view[at : at + step], at):
            at += step
    return at


def _header(path: Path, st: os.stat_result, data: bytes, crc: int, old: bytes, at: int) -> bytes:
    fields = {
        "target": str(path),
        "dev": st.st_dev,
        "ino": st.st_ino,
        "length": len(data),
        "crc32": crc,
        "old_from": at,
        "old_length": len(old) - at,
        "old_crc32": zlib.crc32(memoryview(old)[at:]),
    }
    return _PENDING + (json.dumps(fields, ensure_ascii=True) + "\n").encode("ascii")


def _write_copy(
    path: Path,
    st: os.stat_result,
    data: bytes,
    crc: int,
    old: bytes,
    sync_alongside: Callable[[], None] | None,
) -> int:
    """Write and fdatasync the durable copy of the write of `data` (CRC `crc`) over `old`
    for `path`, running `sync_alongside` on another thread meanwhile; returns its fd."""
    copy = wal_file(path)
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    fd, created = open_or_create(copy, flags, 0o600, make_private_folder)
    try:
        at = _first_difference(old, data)
        header = _header(path, st, data, crc, old, at)
        grow_with_zeros(fd, len(header) + len(data) + len(old) - at)
        pwrite_all(fd, header, 0)
        pwrite_all(fd, data, len(header))
        pwrite_all(fd, memoryview(old)[at:], len(header) + len(data))
        alongside = None if sync_alongside is None else _in_background(sync_alongside)
        try:
            os.fdatasync(fd)
        finally:
            if alongside is not None:
                alongside.result()
        if created:
            fsync_dir(copy.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.pwrite(fd, _CLEARED, 0)  # never leave a half-written copy that looks pending
        os.close(fd)
        raise
    return fd


def _read_copy(fd: int) -> _Copy | None:
    """The pending copy in `fd`, or None when there is none or it is incomplete (the process
    died while writing it, before the data file was touched)."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, min(size, 4096), 0)
    if not head.startswith(_PENDING):
        return None
    line, newline, _rest = head[1:].partition(b"\n")
    if not newline:
        return None
    try:
        fields = json.loads(line)
        start = 1 + len(line) + 1
        content = os.pread(fd, int(fields["length"]), start)
        old_tail = os.pread(fd, int(fields["old_length"]), start + len(content))
        complete = (
            len(content) == fields["length"]
            and zlib.crc32(content) == fields["crc32"]
            and len(old_tail) == fields["old_length"]
            and zlib.crc32(old_tail) == fields["old_crc32"]
        )
        copy = _Copy(int(fields["dev"]), int(fields["ino"]), content, fields["old_from"], old_tail)
    except (ValueError, KeyError, TypeError):
        return None
    return copy if complete else None


def _cut_short(raw: bytes, copy: _Copy) -> bool:
    """Is `raw` what the write of `copy` leaves when it is cut short (or never started)?
    Every sector is the new content's, the old content's, or zeros (a power loss may keep a
    size change without its data); a document written since (PHP's) is not."""
    new, at, old = copy.content, copy.old_from, copy.old_tail
    if len(raw) < at or not raw.startswith(memoryview(new)[:at]):
        return False
    zeros = bytes(_SECTOR)
    for start in range(at, len(raw), _SECTOR):
        piece = raw[start : start + _SECTOR]
        if piece in (new[start : start + len(piece)], zeros[: len(piece)]):
            continue
        if piece == old[start - at : start - at + len(piece)]:
            continue
        return False
    return True


def pending(path: Path) -> bool:
    """Is a durable copy of `path` waiting (a write in progress, or one a crash interrupted)?
    One read of one byte: readers ask before reading a file they have not seen yet."""
    return _is_pending(wal_file(path))


def _is_pending(copy: Path) -> bool:
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        return os.pread(fd, 1, 0) == _PENDING
    finally:
        os.close(fd)


def _overwrite(fd: int, data: bytes, size: int) -> None:
    """Rewrite the file (now `size` bytes) with `data` in place, not yet durable. Overwriting
    the blocks the file has (rather than truncating it to 0 first, as PHP does) spares the
    journal commits of freeing and allocating them all again."""
    pwrite_all(fd, data, 0)
    if len(data) < size:
        os.ftruncate(fd, len(data))


def _rewrite(fd: int, data: bytes, size: int) -> None:
    """`_overwrite`, durably."""
    _overwrite(fd, data, size)
    os.fdatasync(fd)


_syncs: ThreadPoolExecutor | None = None


def _in_background(sync: Callable[[], None]) -> Future[None]:
    """Run `sync` (an fdatasync: it releases the GIL) on a helper thread, so that two files'
    syncs overlap: the disk flushes them together."""
    global _syncs
    if _syncs is None:
        with _registry_lock:
            if _syncs is None:
                _syncs = ThreadPoolExecutor(max_workers=4, thread_name_prefix="provision-sync")
    return _syncs.submit(sync)


def _emit(event: str, level: int = logging.INFO, **fields: object) -> None:
    from provisioner.storage.events import emit  # the rare paths only: keeps imports light

    emit(event, level, **fields)


def repair(fd: int, path: Path, raw: bytes) -> bytes:
    """Under `LOCK_EX` on `fd` (the file at `path`, holding `raw`): finish a write a crash cut
    short, or drop a copy that is no longer needed; returns the file's content now.

    The copy is for this inode and the file is what that write leaves when it is cut short
    or never started (`_cut_short`): the write is completed from the copy, as a redo log
    would (its ledger entries may already be durable). The file is the copy's content: the
    write was complete. A document someone wrote since (PHP, after a crash of ours) is left
    alone: the write of ours was never acknowledged. A clearing of the copy that a power loss
    undid is harmless the same way.
    """
    if not pending(path):
        return raw
    try:
        wal_fd = os.open(wal_file(path), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return raw
    try:
        copy = _read_copy(wal_fd)
        st = os.fstat(fd)
        if copy is not None and (copy.dev, copy.ino) == (st.st_dev, st.st_ino):
            if raw != copy.content and _cut_short(raw, copy):
                _rewrite(fd, copy.content, len(raw))
                _emit(
                    "write_repaired",
                    logging.WARNING,
                    file=str(path),
                    found_bytes=len(raw),
                    restored_bytes=len(copy.content),
                )
                raw = copy.content
            elif raw != copy.content:
                _emit("write_copy_dropped", file=str(path), reason="the file was written since")
        os.pwrite(wal_fd, _CLEARED, 0)
        return raw
    finally:
        os.close(wal_fd)


def write_in_place(
    fd: int,
    path: Path,
    data: bytes,
    old: bytes,
    crc: int,
    sync_alongside: Callable[[], None] | None = None,
) -> os.stat_result:
    """Rewrite the file open (read-write, under `LOCK_EX`) as `fd` with `data` (CRC-32 `crc`),
    replacing `old`; returns its stat once `data` is durable.

    The durable copy is written and synced first, `sync_alongside` (the ledger of recent
    writes) on another thread meanwhile; then the file is overwritten and synced; then the
    copy is marked cleared. When the copy or the rewrite fails (a full disk, an I/O error),
    the old bytes are put back if they were touched, and WriteAheadError says whether the file
    is unchanged; if it is not, the copy stays and the next access completes the write.
    """
    st = os.fstat(fd)
    try:
        wal_fd = _write_copy(path, st, data, crc, old, sync_alongside)
    except OSError as exc:
        raise WriteAheadError(path, exc, "copy", unchanged=True) from exc
    try:
        try:
            _rewrite(fd, data, st.st_size)
        except OSError as exc:
            try:
                _rewrite(fd, old, os.fstat(fd).st_size)
            except OSError:
                raise WriteAheadError(path, exc, "file", unchanged=False) from exc
            os.pwrite(wal_fd, _CLEARED, 0)
            raise WriteAheadError(path, exc, "file", unchanged=True) from exc
        os.pwrite(wal_fd, _CLEARED, 0)
        return os.fstat(fd)
    finally:
        os.close(wal_fd)
