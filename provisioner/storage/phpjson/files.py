"""Locked, crash-safe read-modify-writes of JSON files, in place under the `flock` PHP takes.

Writes rewrite the same inode PHP does, after a durable copy (write_ahead), record what they
wrote so a revert by PHP is undone (recent_writes), and keep the file's style. The reasons are
in docs/data-layer.md, "JSON files".
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.fsutil import create_atomically, file_lock, lock_current_inode
from provisioner.storage.jsonvalues import clone_json
from provisioner.storage.phpjson import recent_writes, write_ahead
from provisioner.storage.phpjson.encode import _dump_bytes
from provisioner.storage.phpjson.errors import (
    _RAISE,
    _UNPARSED,
    NO_CHANGE,
    JsonFileError,
    JsonFileMissingError,
)
from provisioner.storage.phpjson.pieces import _encode_pieces
from provisioner.storage.phpjson.read import (
    _cache_get,
    _cache_put,
    _CacheEntry,
    _entry_doc,
    _entry_style,
    _parse,
    _read_all,
    _stat_key,
)
from provisioner.storage.phpjson.style import DEFAULT_STYLE, JsonStyle

# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask without changing it (os.umask would, racily, for other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _create_owned(path: Path, data: bytes) -> os.stat_result | None:
    """Create `path` holding `data` atomically (fsutil's create_atomically; None: it exists
    now), with the umask's mode and, when running as root, the folder's owner and group: the
    PHP application (www-data) owns the data folder and must be able to write the files
    created in it. Existing files are rewritten in place instead (`_write_in_place`).
    """
    temp_made = False

    def keep_owner(fd: int) -> None:
        nonlocal temp_made
        temp_made = True
        if os.geteuid() == 0:
            folder = os.stat(path.parent)
            os.fchown(fd, folder.st_uid, folder.st_gid)

    try:
        return create_atomically(path, data, 0o666 & ~_umask(), prepare=keep_owner)
    except PermissionError:
        if temp_made:
            raise
        raise JsonFileError(
            path,
            f"cannot create a temporary file in {path.parent}",
            hint="Creating a file needs write permission on the folder; run as its owner "
            "(or root). Nothing was changed",
        ) from None


def _lock_for_update(path: Path) -> tuple[int | None, bool]:
    """The file at `path` under LOCK_EX (None: missing) and whether it is open for writing: a
    file we may not write can still be updated with no change."""
    try:
        return lock_current_inode(path, writable=True), True
    except OSError as exc:
        if not isinstance(exc, PermissionError) and exc.errno not in (errno.EROFS, errno.EPERM):
            raise
    return lock_current_inode(path), False


def _write_in_place(
    fd: int,
    path: Path,
    data: bytes,
    raw: bytes,
    ledger: recent_writes.Ledger,
    changes: list[recent_writes.Change],
) -> os.stat_result:
    """Rewrite the locked file (holding `raw`) in place, PHP's way, after its durable copy
    (write_ahead), with the ledger entries of `changes` synced beside the copy; failures
    become JsonFileErrors that say what state the file is in."""
    crc = zlib.crc32(data)
    prepared = ledger.prepare(changes, len(data), crc)
    try:
        st = write_ahead.write_in_place(
            fd, path, data, raw, crc, None if prepared is None else ledger.sync
        )
    except write_ahead.WriteAheadError as exc:
        reason = exc.cause.strerror or str(exc.cause)
        if not exc.unchanged:
            raise JsonFileError(
                path,
                f"writing the file failed ({reason}) and its old content could not be put back",
                hint=f"The next access completes the write from {write_ahead.wal_file(path)}",
            ) from exc
        if prepared is not None:
            ledger.cancel(prepared)
        if exc.stage == "copy":
            what = f"cannot write the durable copy {write_ahead.wal_file(path)} ({reason})"
        else:
            what = f"writing the file failed ({reason}); its old content was put back"
        raise JsonFileError(
            path, what, hint="Nothing was changed; free disk space (or fix the error) and run again"
        ) from exc
    ledger.committed(data, _stat_key(st))
    return st


# --------------------------------------------------------------------------------------------
# Locked read-modify-write
# --------------------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    """What one function of a batch did: its return value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _apply(
    first_doc: Any,
    fresh_doc: Callable[[], Any],
    fns: Sequence[Callable[[Any], Any]],
    isolate: bool,
) -> tuple[Any, list[BatchOutcome], bool]:
    """Run `fns` in order, each on the previous one's result.

    With `isolate`, a function that raises is left out and the batch starts again from a fresh
    copy (it may have changed the value before raising); without, the exception propagates.
    """
    failed: dict[int, BatchOutcome] = {}
    doc = first_doc
    while True:
        outcomes: list[BatchOutcome] = []
        changed = False
        restart = False
        for index, fn in enumerate(fns):
            if index in failed:
                outcomes.append(failed[index])
                continue
            try:
                result = fn(doc)
            except Exception as exc:
                if not isolate:
                    raise
                failed[index] = BatchOutcome(error=exc)
                restart = True
                break
            outcomes.append(BatchOutcome(value=result))
            if result is not NO_CHANGE:
                doc = result
                changed = True
        if not restart:
            return doc, outcomes, changed
        doc = fresh_doc()


def _constant(value: Any) -> Callable[[], Any]:
    """A shared document needs no fresh copy after a failed function: it was not changed."""
    return lambda: value


def _update(
    path: Path | str,
    fns: Sequence[Callable[[Any], Any]],
    *,
    default: Any,
    new_file_style: JsonStyle,
    isolate: bool,
    shared: bool = False,
    reapplied: list[Any] | None = None,
) -> list[BatchOutcome]:
    """The locked read-modify-write behind locked_update*; with `shared`, the functions get the
    shared cached document (copy-on-write) and what they return is cached as written.

    Under the lock, before the functions: an interrupted write is completed (write_ahead),
    and this layer's recent writes that a later write reverted are written again, in the same
    rewrite (recent_writes; their entries are appended to `reapplied`).
    """
    path = Path(path).absolute()
    while True:
        fd, writable = _lock_for_update(path)
        if fd is None:
            outcome = _update_missing(path, fns, default, new_file_style, isolate, shared)
            if outcome is None:
                continue  # the file appeared meanwhile: update it under its own lock
            return outcome
        try:
            like = os.fstat(fd)
            # Read under the lock, always: a stat key is no proof that PHP did not rewrite the
            # file in place (same size, same timestamp tick).
            raw = _read_all(fd, like.st_size, path)
            if writable:
                raw = write_ahead.repair(fd, path, raw)
            entry = _cache_get(path)
            if entry is not None and entry.raw == raw:
                style = _entry_style(entry)
                if shared:
                    doc = _entry_doc(entry, path)
                else:
                    doc = _parse(raw, path) if entry.doc is _UNPARSED else clone_json(entry.doc)
            else:
                doc = _parse(raw, path)
                entry = _CacheEntry(
                    key=_stat_key(like),
                    raw=raw,
                    read_at_ns=time.time_ns(),
                    doc=doc if shared else _UNPARSED,
                )
                style = _entry_style(entry)
                _cache_put(path, entry)
            fresh_doc = _constant(doc) if shared else functools.partial(_parse, raw, path)
            ledger = recent_writes.ledger_for(path)
            with ledger.lock:
                reverted = ledger.check(raw, doc)
                done: list[Any] = []
                if reverted:
                    fns = [_reapplying(ledger, reverted, done), *fns]
                new_doc, outcomes, changed = _apply(doc, fresh_doc, fns, isolate)
                if reverted:
                    outcomes = outcomes[1:]
                data = raw
                if changed:
                    node, plain = None, False
                    if shared:
                        data, node, plain = _encode_pieces(new_doc, style, entry.node, doc)
                    else:
                        data = _dump_bytes(new_doc, style)
                if data == raw:
                    ledger.found_intact(raw, _stat_key(like))
                    return outcomes
                if not writable:
                    raise JsonFileError(
                        path,
                        "the file cannot be written (permission denied, or read-only)",
                        hint="Run as its owner (or root); nothing was changed",
                    )
                before = doc if shared else _parse(raw, path)
                changes = recent_writes.changes_between(before, new_doc)
                st = _write_in_place(fd, path, data, raw, ledger, changes)
                _cache_written(path, st, data, new_doc, style, node, plain)
                ledger.reapplied(done)
                if reapplied is not None:
                    reapplied += done
            return outcomes
        finally:
            os.close(fd)


def _reapplying(
    ledger: recent_writes.Ledger, reverted: list[Any], done: list[Any]
) -> Callable[[Any], Any]:
    """The update that writes the reverted records again (first in the batch); `done` gets
    those it could put back."""

    def reapply(doc: Any) -> Any:
        new_doc, done[:] = ledger.reapply(doc, reverted)
        return new_doc if done else NO_CHANGE

    return reapply


def _cache_written(
    path: Path,
    st: os.stat_result,
    data: bytes,
    new_doc: Any,
    style: JsonStyle,
    node: Any,
    plain: bool,
) -> None:
    """Remember what we just wrote, so the next update neither reads nor parses it again."""
    _cache_put(
        path,
        _CacheEntry(
            key=_stat_key(st),
            raw=data,
            read_at_ns=time.time_ns(),
            doc=new_doc if plain else _UNPARSED,
            style=style,
            node=node if plain else None,
        ),
    )


def _update_missing(
    path: Path,
    fns: Sequence[Callable[[Any], Any]],
    default: Any,
    style: JsonStyle,
    isolate: bool,
    shared: bool,
) -> list[BatchOutcome] | None:
    """Update a file that does not exist yet, under a lock on its folder; None: it exists now."""
    if default is _RAISE:
        raise JsonFileMissingError(
            path, "the file does not exist", hint="Create it, or pass a default"
        )
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(path.parent, create=False))
        except FileNotFoundError:
            raise JsonFileMissingError(
                path, "neither the file nor its folder exists", hint="Create the folder first"
            ) from None
        if path.exists():
            return None
        start = clone_json(default)
        fresh_doc = _constant(start) if shared else functools.partial(clone_json, default)
        new_doc, outcomes, changed = _apply(start, fresh_doc, fns, isolate)
        if changed:
            node, plain = None, False
            if shared:
                data, node, plain = _encode_pieces(new_doc, style, None, None)
            else:
                data = _dump_bytes(new_doc, style)
            changes = recent_writes.changes_between(default, new_doc)
            ledger = recent_writes.ledger_for(path)
            with ledger.lock:  # a new file: created whole, so atomically (no copy needed)
                prepared = ledger.prepare(changes, len(data), zlib.crc32(data))
                if prepared is not None:
                    ledger.sync()
                try:
                    st = _create_owned(path, data)
                except BaseException:
                    if prepared is not None:
                        ledger.cancel(prepared)
                    raise
                if st is None:  # someone else created it: update that file instead
                    if prepared is not None:
                        ledger.cancel(prepared)
                    return None
                ledger.committed(data, _stat_key(st))
            _cache_written(path, st, data, new_doc, style, node, plain)
        return outcomes


def locked_update(
    path: Path | str,
    fn: Callable[[Any], Any],
    *,
    default: Any = _RAISE,
    new_file_style: JsonStyle = DEFAULT_STYLE,
) -> Any:
    """Read-modify-write of one JSON file under `flock(LOCK_EX)` on the file itself.

    `fn` gets a private copy of the parsed file and returns the new value, or NO_CHANGE (then
    nothing is written). If `fn` raises, nothing is written and the exception propagates.
    Returns what `fn` returned. A missing file starts from a copy of `default` (and is created,
    in `new_file_style`, atomically, only if `fn` changes it); without a default it is
    JsonFileMissingError. The write keeps the file's own style, and rewrites the same inode
    (mode, owner and a symlink kept), after a durable copy that repairs it if a crash cuts
    the rewrite short (write_ahead); what it changed is recorded in the ledger of recent
    writes before it returns, so that a PHP write that reverts it is undone (recent_writes).

    Why the data file itself is locked: PHP's `flock($fp, LOCK_EX)` on the same path is the
    lock the PHP application already takes, so PHP writers and ours exclude each other with no
    new convention. The lock is held across the whole read-modify-write: a read lock and a
    write lock taken separately (as PHP's DataLayer does) lose updates.

    Why in place and not by rename: PHP's writer waits for the lock on the inode it opened
    and never checks that it is still the file; a rename while it waits would make it write
    into an unlinked inode. (The inode is still compared after `flock`, against other tools
    that replace the file.)
    """
    outcomes = _update(path, [fn], default=default, new_file_style=new_file_style, isolate=False)
    return outcomes[0].value


def locked_update_shared(
    path: Path | str,
    fn: Callable[[Any], Any],
    *,
    default: Any = _RAISE,
    new_file_style: JsonStyle = DEFAULT_STYLE,
) -> Any:
    """`locked_update` for many small changes to a big file: nothing is copied, parsed or
    encoded but what changes.

    `fn` gets the shared cached document, as `read_json_shared` gives it, and must not change
    it or anything in it: it returns a new document built copy-on-write (new containers where
    something changes, untouched records shared with the input), or NO_CHANGE. What `fn`
    returns is written and becomes the shared cached document: neither `fn` nor the caller may
    change it afterwards (so values put into it must be private copies). In exchange, the next
    update neither parses the file nor re-encodes what did not change, and readers of
    `read_json_shared` go on seeing the old document, never a half-updated one. Locking, the
    inode re-check, in-place rewrite, style and errors are those of `locked_update`.
    """
    outcomes = _update(
        path,
        [fn],
        default=default,
        new_file_style=new_file_style,
        isolate=False,
        shared=True,
    )
    return outcomes[0].value


def locked_update_many(
    path: Path | str,
    fns: Iterable[Callable[[Any], Any]],
    *,
    default: Any = _RAISE,
    new_file_style: JsonStyle = DEFAULT_STYLE,
) -> list[BatchOutcome]:
    """Apply a batch of changes to one file in a single locked read-modify-write (group commit).

    The functions run in order, each on the previous one's result. One that raises is left
    out: the others are applied (the batch reruns from a fresh copy, so a function may run more
    than once and must depend only on the value it is given), and its outcome carries the
    error. Nothing is written when no function changed anything. See `locked_update`.
    """
    fn_list = list(fns)
    if not fn_list:
        return []
    return _update(path, fn_list, default=default, new_file_style=new_file_style, isolate=True)


def write_json(
    path: Path | str,
    value: Any,
    *,
    style: JsonStyle | None = None,
) -> None:
    """Replace the file's value under the lock (see `locked_update`); `style` only for a new
    file (an existing file keeps its own)."""
    snapshot = clone_json(value)
    locked_update(
        path,
        lambda _current: snapshot,
        default=None,
        new_file_style=style or DEFAULT_STYLE,
    )


def recheck_recent_writes(path: Path | str) -> int:
    """Complete an interrupted write of `path` and write again this layer's recent writes
    that a later write reverted, now, under the file's lock; the number of records written
    again. Readers call it when `recent_writes.needs_recheck` says so; `provision data
    reconcile` calls it for every file with a ledger (`reconcile_recent_writes`)."""
    done: list[Any] = []
    try:
        _update(
            path,
            [],
            default=_RAISE,
            new_file_style=DEFAULT_STYLE,
            isolate=True,
            shared=True,
            reapplied=done,
        )
    except JsonFileMissingError:
        return 0
    return len(done)


def reconcile_recent_writes(root: Path | str) -> tuple[int, list[str]]:
    """`recheck_recent_writes` for every data file under `root` that has a ledger or a pending
    durable copy: records written again, and the files that could not be checked (why)."""
    total, errors = 0, []
    for path in write_ahead.tracked_files(Path(root).absolute()):
        try:
            total += recheck_recent_writes(path)
        except (JsonFileError, OSError) as exc:
            errors.append(str(exc))
    return total, errors
