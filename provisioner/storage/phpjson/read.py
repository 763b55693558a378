"""Strict reads of JSON data files, with a parse cache that an unchanged file never misses.

Malformed JSON, invalid UTF-8, duplicate keys or an empty file is a `JsonFileError`; callers
get private copies, or the shared document with `read_json_shared` (docs/data-layer.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.fsutil import lock_current_inode
from provisioner.storage.jsonvalues import clone_json
from provisioner.storage.phpjson import recent_writes
from provisioner.storage.phpjson.errors import (
    _ANY_ENTRY,
    _FIX_HINT,
    _RAISE,
    _UNPARSED,
    JsonFileError,
    JsonFileMissingError,
)
from provisioner.storage.phpjson.excerpts import masked_bytes_excerpt, masked_excerpt
from provisioner.storage.phpjson.limits import (
    PHP_MAX_DEPTH,
    data_file_problem,
    depth_problem,
    find_duplicate_keys,
    gc_paused,
    max_file_bytes,
    may_have_duplicates,
    reject_constant,
    shape_of,
    size_hint,
    size_problem,
)
from provisioner.storage.phpjson.pieces import _Node
from provisioner.storage.phpjson.style import DEFAULT_STYLE, JsonStyle, detect_style

# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_SPACE_TO_END = re.compile(r"\s*\Z")
_GC_PAUSE_BYTES = 1 << 20


def _parse_checked(raw: bytes, path: Path) -> tuple[Any, int]:
    """The JSON value in `raw` and the number of members its objects hold, or a JsonFileError
    that says where and what is wrong.

    As PHP's json_decode reads it: a document nested as deep as PHP refuses is refused before
    any recursive code sees it; of a duplicate key, the last value wins (in the place of the
    first; `_duplicates_in` finds them). Every error excerpt is cut from text whose secrets are
    already masked (`masked_excerpt`).
    """
    if not raw or raw.isspace():
        what = "the file is empty (0 bytes)" if not raw else "the file holds only whitespace"
        raise JsonFileError(
            path,
            what,
            line=1,
            column=1,
            hint="A PHP writer that failed mid-write (json_encode error, full disk) leaves such "
            f"a file; restore it from a backup. {_FIX_HINT}",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise JsonFileError(
            path,
            f"invalid UTF-8 at byte offset {exc.start} ({exc.reason})",
            line=line,
            column=column,
            excerpt=masked_bytes_excerpt(raw, exc.start),
            hint=f"JSON files must be UTF-8. {_FIX_HINT}",
        ) from None
    if text.startswith("\ufeff"):
        raise JsonFileError(
            path,
            "the file starts with a UTF-8 byte order mark, which PHP's json_decode rejects",
            line=1,
            column=1,
            hint=f"Remove the first 3 bytes. {_FIX_HINT}",
        )
    paused = gc_paused() if len(raw) > _GC_PAUSE_BYTES else contextlib.nullcontext()
    with paused:
        doc = _loads(text, path)
        shape = shape_of(doc)
        too_deep = depth_problem(doc, shape)
        if too_deep is not None:
            raise JsonFileError(path, too_deep, hint=_FIX_HINT)
    return doc, shape.members


def _duplicates_in(raw: bytes, members: int) -> list[str]:
    """Where the (parsed, valid) `raw` holds duplicate keys; `members`: its parse's count."""
    if not members or not may_have_duplicates(raw, members):
        return []
    paused = gc_paused() if len(raw) > _GC_PAUSE_BYTES else contextlib.nullcontext()
    with paused:
        return find_duplicate_keys(raw.decode("utf-8"))[1]


def _loads(text: str, path: Path) -> Any:
    """`json.loads` with PHP's refusals (NaN, Infinity) and errors that name the place."""
    try:
        return json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        reason = exc.msg
        if exc.pos >= len(text) or _SPACE_TO_END.match(text, exc.pos):
            reason += " (the file ends early: truncated?)"
        raise JsonFileError(
            path,
            f"invalid JSON: {reason}",
            line=exc.lineno,
            column=exc.colno,
            excerpt=masked_excerpt(text, exc.pos),
            hint=_FIX_HINT,
        ) from None
    except ValueError as exc:
        raise JsonFileError(path, f"invalid JSON: {exc}", hint=_FIX_HINT) from None
    except RecursionError:
        raise JsonFileError(
            path,
            f"arrays and objects nested thousands of levels deep; PHP's json_decode reads at "
            f"most {PHP_MAX_DEPTH - 1}",
            hint=_FIX_HINT,
        ) from None


def _parse(raw: bytes, path: Path) -> Any:
    """The JSON value in `raw` for a writer: duplicate keys are a JsonFileError, since the
    document holds one value of each and rewriting it would drop the others (reads go on with
    PHP's value: `_parse_checked`)."""
    doc, members = _parse_checked(raw, path)
    duplicates = _duplicates_in(raw, members)
    if duplicates:
        raise _duplicates_error(path, duplicates)
    return doc


def _duplicates_error(path: Path, duplicates: Sequence[str]) -> JsonFileError:
    return JsonFileError(
        path,
        f"duplicate keys: {'; '.join(duplicates)}. PHP's json_decode keeps the last value of "
        "each, and rewriting the file would drop the others",
        hint="Nothing was changed; remove the duplicates (keeping the value PHP reads, the "
        "last) and run again",
    )


@dataclass
class _CacheEntry:
    key: tuple[int, int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size, st_ctime_ns
    raw: bytes
    read_at_ns: int  # wall clock when this content was known to be on disk
    doc: Any = _UNPARSED
    style: JsonStyle | None = None
    # The pieces of `doc`'s encoding in `style` (only for a document we wrote ourselves through
    # locked_update_shared, which nobody changes afterwards).
    node: _Node | None = None
    # Where the file holds duplicate keys (None: not looked for yet; a reader's parse leaves
    # that to the first writer, see `_entry_duplicates`): `doc` holds PHP's value of each (the
    # last), and a rewrite would drop the others, so `_cache_get` hands such an entry to
    # readers only. `members`: the members of `doc`'s objects, which tells cheaply.
    duplicates: tuple[str, ...] | None = ()
    members: int = 0


# An unchanged file is not parsed again, whatever its size (a million customers parse for
# seconds). Entries hold the raw bytes too: a stat key is not proof (a PHP in-place rewrite of
# the same size inside one timestamp tick keeps it), so a key seen within one tick of the
# file's mtime is confirmed by comparing the bytes (git's "racily clean" rule), and a write
# always compares the bytes it reads under the lock.
_CACHE: dict[str, _CacheEntry] = {}
_CACHE_LOCK = threading.Lock()
# A tick of a file system that keeps whole seconds (or FAT's two), and one that keeps ns: its
# timestamps come from the kernel's coarse clock, a jiffy (at most 10 ms) behind.
_RACY_NS = 2_000_000_000
_RACY_FINE_NS = 100_000_000


def _racy_ns(mtime_ns: int) -> int:
    """How long after `mtime_ns` another write may still get the same timestamp."""
    return _RACY_NS if mtime_ns % 1_000_000_000 == 0 else _RACY_FINE_NS


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def _cache_get(path: Path, *, reading: bool = False) -> _CacheEntry | None:
    """The cached entry for `path`; an entry with duplicate keys only when `reading` (a writer
    gets None, parses the file itself and is refused: see `_parse`)."""
    with _CACHE_LOCK:
        entry = _CACHE.get(str(path))
    if entry is not None and not reading and _entry_duplicates(entry):
        return None
    return entry


def _entry_duplicates(entry: _CacheEntry) -> tuple[str, ...]:
    """Where the entry's file holds duplicate keys, looked for once (a few seconds for a
    gigabyte; none of it on the read path: reads get PHP's values either way)."""
    if entry.duplicates is None:
        entry.duplicates = tuple(_duplicates_in(entry.raw, entry.members))
    return entry.duplicates


def _cache_put(path: Path, entry: _CacheEntry, *, replacing: Any = _ANY_ENTRY) -> None:
    """Cache `entry` for `path`; with `replacing`, only if the cached entry is still that one
    (a reader must not put back an older version than a writer has just cached)."""
    with _CACHE_LOCK:
        if replacing is not _ANY_ENTRY and _CACHE.get(str(path)) is not replacing:
            return
        _CACHE[str(path)] = entry


def forget_cached(path: Path | None = None) -> None:
    """Drop the parse cache for one file (or all files)."""
    with _CACHE_LOCK:
        if path is None:
            _CACHE.clear()
        else:
            _CACHE.pop(str(Path(path).absolute()), None)


def _check_data_file(st: os.stat_result, path: Path | None, fd: int | None = None) -> None:
    """JsonFileError unless the (f)stat is a regular file within the size limit: a FIFO would
    hang the reader and a device (/dev/zero) would fill memory, before any byte is read.
    `path` names the file in the error (else the fd's target)."""
    found = data_file_problem(st)
    if found is not None:
        raise JsonFileError(_named(path, fd), found[0], hint=found[1])


def _named(path: Path | None, fd: int | None) -> Path:
    if path is None and fd is not None:
        with contextlib.suppress(OSError):
            return Path(os.readlink(f"/proc/self/fd/{fd}"))
    return path or Path("?")


def _read_all(fd: int, size: int = 0, path: Path | None = None) -> bytes:
    """Everything in the file, after `_check_data_file` on its fstat (`path` names it in the
    error); one read takes it all, uncopied. `size`: its fstat size, when the caller has it."""
    st = os.fstat(fd)
    _check_data_file(st, path, fd)
    limit = max_file_bytes()
    chunks = []
    offset = 0
    size = size or st.st_size
    want = max(size + 1, 1 << 16) if size else 1 << 20
    while True:
        chunk = os.pread(fd, want, offset)
        if not chunk:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
        if offset > limit:  # it grew while being read
            problem = size_problem(offset, limit)
            raise JsonFileError(_named(path, fd), str(problem), hint=size_hint())
        want = 1 << 20


def _entry_doc(entry: _CacheEntry, path: Path) -> Any:
    """The entry's parsed document, parsed once and shared (never mutated)."""
    if entry.doc is _UNPARSED:
        entry.doc = _parse(entry.raw, path)
    return entry.doc


def _entry_style(entry: _CacheEntry) -> JsonStyle:
    if entry.style is None:
        entry.style = detect_style(entry.raw.decode("utf-8"))
    return entry.style


def _read_current(path: Path) -> tuple[bytes, os.stat_result, int] | None:
    """The bytes of the file now at `path` (None: missing), its fstat and the time they were
    known to be on disk, read under LOCK_SH.

    PHP's safeFileWrite truncates and rewrites in place under LOCK_EX: the shared lock keeps
    this read from seeing a half-written file.
    """
    fd = lock_current_inode(path, exclusive=False)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        read_at = time.time_ns()
        return _read_all(fd, st.st_size, path), st, read_at
    finally:
        os.close(fd)


def _load_entry(path: Path) -> _CacheEntry | None:
    """The file's current cache entry (reading it under LOCK_SH when needed); None if missing.

    The stat is checked first (`_check_data_file`): what is not a regular file of a sane size
    is never opened, so a FIFO in a data file's place cannot block the open.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    _check_data_file(st, path)
    entry = _cache_get(path, reading=True)
    key = _stat_key(st)
    if (
        entry is not None
        and entry.key == key
        and entry.read_at_ns - st.st_mtime_ns > _racy_ns(st.st_mtime_ns)
    ):
        return entry
    _recheck_before_read(path, st)
    current = _read_current(path)
    if current is None:
        return None
    raw, st, read_at = current
    key = _stat_key(st)
    if entry is not None and entry.raw == raw:
        entry.key = key
        entry.read_at_ns = read_at
        return entry
    fresh = _CacheEntry(key=key, raw=raw, read_at_ns=read_at)
    _parse_into(fresh, path)
    _cache_put(path, fresh, replacing=entry)
    return fresh


def _parse_into(entry: _CacheEntry, path: Path) -> None:
    """Parse for a reader: duplicate keys are looked for when a writer or `duplicate_keys`
    asks (`_entry_duplicates`), not refused."""
    entry.doc, entry.members = _parse_checked(entry.raw, path)
    entry.duplicates = None


def read_json_shared(path: Path | str, *, default: Any = _RAISE) -> Any:
    """The parsed file, shared with the cache: callers must not change it (use `read_json`
    for a private copy). A missing file gives `default`, or JsonFileMissingError without one."""
    path = Path(path).absolute()
    entry = _load_entry(path)
    if entry is None:
        if default is _RAISE:
            raise JsonFileMissingError(path, "the file does not exist")
        return default
    return _entry_doc(entry, path)


def read_json(path: Path | str, *, default: Any = _RAISE) -> Any:
    """The parsed file as a private copy the caller may change.

    Malformed JSON, invalid UTF-8, empty files, documents nested deeper than PHP reads, and
    anything but a regular file within the size limit raise JsonFileError naming the file
    (line, column and a short, secret-masked excerpt where they apply). A missing file gives
    `default` (a copy of it), or JsonFileMissingError when no default is given. Duplicate keys
    read as PHP reads them (the last value wins); `duplicate_keys` says where they are.
    """
    sentinel = object()
    value = read_json_shared(path, default=sentinel)
    if value is sentinel:
        if default is _RAISE:
            raise JsonFileMissingError(Path(path).absolute(), "the file does not exist")
        return clone_json(default)
    return clone_json(value)


def duplicate_keys(path: Path | str) -> tuple[str, ...]:
    """Where the file holds duplicate keys (empty: none, or no file). Reads get PHP's value of
    each (the last); every write to the file is refused until they are removed."""
    entry = _load_entry(Path(path).absolute())
    return () if entry is None else _entry_duplicates(entry)


def file_style(path: Path | str, *, default: JsonStyle = DEFAULT_STYLE) -> JsonStyle:
    """The style of the file at `path` (`default` when it does not exist)."""
    path = Path(path).absolute()
    entry = _load_entry(path)
    return default if entry is None else _entry_style(entry)


def _recheck_before_read(path: Path, st: os.stat_result) -> None:
    """For a reader about to read `path` (`st`: its stat) from disk: complete an interrupted
    write and write again what PHP reverted first, under LOCK_EX, when there may be any
    (`recent_writes.needs_recheck`: two stats when there is nothing). A file this process may
    not write, or cannot rewrite (bad JSON, duplicate keys), is read as it is."""
    if recent_writes.needs_recheck(path, _stat_key(st)):
        # Rare, and a write: imported here, as files.py builds on this module.
        from provisioner.storage.phpjson.files import recheck_recent_writes

        with contextlib.suppress(JsonFileError, OSError):
            recheck_recent_writes(path)
