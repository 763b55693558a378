"""Reading a data file's records for the sync: by their bytes, or through the data layer.

A pretty-printed file of records in a wrapper object (customers.json as PHP's JSON_PRETTY_PRINT
writes it) is read by its bytes: one regex pass finds where each member of the wrapper starts
(a line indented exactly twice the file's indent, inside the wrapper; JSON strings hold no raw
newline, so nothing else looks like one), each member's bytes are hashed where they sit, and
only the members whose hash changed are parsed. Keys and placements are those the layer's
reader gives (aeims/shapes.py: the id field, else the member key; the wrapper, the member key and
its position), which tests/test_migration_sync.py checks on the real files. Anything else
(compact files, lists, both operator files, a file with duplicate keys or whose rewrite a crash
cut short) is read through the layer's reader and its parsed records are hashed. The syncer
keeps the last scan of such a file (its bytes too, up to KEEP_BYTES_MAX): the next scan finds
where the bytes changed by comparing them, takes the members around the change from the last
scan and scans and hashes only the changed stretch (`scan_spans_since`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.fsutil import lock_current_inode
from provisioner.storage.aeims.catalog import FileSpec, Layout
from provisioner.storage.model import StoredRecord

_WHITESPACE = " \t\n\r\x0b\x0c"
_CANONICAL = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


def _digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(slots=True)
class Span:
    member: bytes  # the member key as written (escapes kept)
    start: int
    end: int
    digest: str
    position: int


_PATTERNS: dict[tuple[int, int], re.Pattern[bytes]] = {}
_DECIMAL = re.compile(rb"[0-9]+")


def _member_pattern(indent: int, depth: int) -> re.Pattern[bytes]:
    """Lines starting a member at `depth` (1: the top-level object's, 2: an object's in it) of
    a file indented by `indent` spaces. JSON strings hold no raw newline, so this finds exactly
    those members."""
    pattern = _PATTERNS.get((indent, depth))
    if pattern is None:
        spaces = b" " * (indent * depth)
        pattern = re.compile(rb"\n" + spaces + rb'"((?:[^"\\\n]|\\.)*)":')
        _PATTERNS[(indent, depth)] = pattern
    return pattern


def eligible_for_spans(fs: FileSpec) -> bool:
    return (
        fs.layout is Layout.WRAPPED
        and fs.wrapper is not None
        and not fs.wrapper_is_list
        and fs.id_field is not None
        and fs.value_field is None
    )


def scan_spans(raw: bytes, fs: FileSpec) -> list[Span] | None:
    """The wrapper's members with the hash of each one's bytes; None when the file is not a
    pretty-printed object this scan can read exactly (then the layer's reader is used)."""
    scanned = _full_scan(raw, fs)
    return None if scanned is None else scanned.spans


@dataclass(slots=True)
class Scan:
    """One scan of a file: its bytes and spans, and where the wrapper's members begin (the
    newline before the first) and where the wrapper closes, for the next scan to start from."""

    raw: bytes
    spans: list[Span]
    indent: int
    first: int
    closed: int


# A file up to this size keeps its bytes (in the syncer, until the next pass) so that the next
# scan compares them rather than scanning the file again.
KEEP_BYTES_MAX = 256 << 20
_BLOCK = 1 << 16


def scan_spans_since(raw: bytes, fs: FileSpec, last: Scan | None) -> Scan | None:
    """scan_spans, given the last scan of the same file: when only bytes between two members
    of the wrapper changed (PHP rewriting a few records in place), the members before and
    after the change are taken from the last scan (those after it moved by the change in
    size) and only the changed stretch is scanned and hashed. Exactly the spans scan_spans
    gives (tests/test_migration_sync_scan.py); None as it gives None."""
    if last is not None and last.spans:
        found = _rescan(raw, fs, last)
        if found is not None:
            return found
    return _full_scan(raw, fs)


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes `a` and `b` share (compared a block at a time, in C)."""
    limit = min(len(a), len(b))
    at = 0
    while at < limit and a[at : at + _BLOCK] == b[at : at + _BLOCK]:
        at += _BLOCK
    if at >= limit:
        return limit
    block_a, block_b = a[at : at + _BLOCK], b[at : at + _BLOCK]
    low, high = 0, min(len(block_a), len(block_b))
    while low < high:  # the first differing byte of the block
        middle = (low + high + 1) // 2
        if block_a[:middle] == block_b[:middle]:
            low = middle
        else:
            high = middle - 1
    return at + low


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """How many trailing bytes `a` and `b` share, at most `limit`."""
    size_a, size_b = len(a), len(b)
    at = 0
    while at < limit:
        step = min(_BLOCK, limit - at)
        if a[size_a - at - step : size_a - at] != b[size_b - at - step : size_b - at]:
            break
        at += step
    else:
        return limit
    step = min(_BLOCK, limit - at)
    block_a = a[size_a - at - step : size_a - at]
    block_b = b[size_b - at - step : size_b - at]
    low, high = 0, step
    while low < high:  # the longest common tail of the block
        middle = (low + high + 1) // 2
        if block_a[step - middle :] == block_b[step - middle :]:
            low = middle
        else:
            high = middle - 1
    return at + low


def _rescan(raw: bytes, fs: FileSpec, last: Scan) -> Scan | None:
    """The incremental scan (see scan_spans_since); None when the change is not strictly
    between the wrapper's first member and its end (the full scan then decides)."""
    old = last.raw
    if raw is old or raw == old:
        return Scan(raw, last.spans, last.indent, last.first, last.closed)
    prefix = _common_prefix(old, raw)
    suffix = _common_suffix(old, raw, min(len(old), len(raw)) - prefix)
    delta = len(raw) - len(old)
    indent = last.indent
    skip = 1 + 2 * indent
    margin = skip + 2
    changed_end = len(old) - suffix  # in the old bytes
    if prefix <= last.first + margin or changed_end + margin >= last.closed:
        return None
    spans = last.spans
    count = len(spans)
    starts = [span.start - skip for span in spans]  # each member's newline

    def stretch_end(index: int) -> int:
        """Where a member's stretch (its newline up to the next member's) ends."""
        return starts[index + 1] if index + 1 < count else last.closed

    # The members before the change, clear of it, then those up to the first one after it.
    before = 0
    while before < count and stretch_end(before) + margin <= prefix:
        before += 1
    if before == count:
        return None
    after = before
    while after < count and starts[after] < changed_end + margin:
        after += 1
    window_start = starts[before]
    window_end = (starts[after] if after < count else last.closed) + delta
    if _member_pattern(indent, 1).search(raw, window_start, window_end) is not None:
        return None  # a top-level member appeared: the full scan reads the file's shape
    inner = list(_member_pattern(indent, 2).finditer(raw, window_start, window_end))
    if not inner and before == 0 and after == count:
        return None
    view = memoryview(raw)
    blake = hashlib.blake2b
    fresh = []
    ends = [m.start() for m in inner[1:]]
    ends.append(window_end)
    for offset, (match, end) in enumerate(zip(inner, ends, strict=True)):
        start = match.start() + skip
        if raw[end - 1] == 44:  # the comma before the next member
            end -= 1
        digest = blake(view[start:end], digest_size=16).hexdigest()
        fresh.append(Span(match.group(1), start, end, digest, before + offset))
    moved = before + len(fresh) - after
    tail = spans[after:]
    if delta or moved:
        tail = [
            Span(
                span.member,
                span.start + delta,
                span.end + delta,
                span.digest,
                span.position + moved,
            )
            for span in tail
        ]
    result = spans[:before] + fresh + tail
    members = [span.member for span in result]
    if len(set(members)) != len(members):
        return None  # duplicate keys: the full scan says so
    return Scan(raw, result, indent, last.first, last.closed + delta)


def _full_scan(raw: bytes, fs: FileSpec) -> Scan | None:
    """scan_spans, keeping what a later scan_spans_since starts from."""
    head = re.match(rb"\{\n( +)\"", raw)
    if head is None or not raw.rstrip().endswith(b"\n}"):
        return None  # not pretty-printed, or not whole (a writer that takes no lock)
    indent = len(head.group(1))
    wrapper = json.dumps(fs.wrapper).encode()[1:-1]
    top = list(_member_pattern(indent, 1).finditer(raw))
    keys = [m.group(1) for m in top]
    if keys.count(wrapper) != 1 or any(_DECIMAL.fullmatch(k) for k in keys):
        return None  # no wrapper, a duplicate one, or records at the top level too
    at = keys.index(wrapper)
    opened = top[at].end()
    value = raw[opened : opened + 3].lstrip(b" ")
    if value.startswith((b"{}", b"[]")):
        return Scan(raw, [], indent, 0, 0)
    if not value.startswith(b"{"):
        return None  # a list wrapper: the layer's reader
    region_end = top[at + 1].start() if at + 1 < len(top) else len(raw)
    closed = raw.rfind(b"\n" + b" " * indent + b"}", opened, region_end)
    inner = list(_member_pattern(indent, 2).finditer(raw, opened, max(closed, 0)))
    if closed < 0 or not inner:
        return None
    members = [m.group(1) for m in inner]
    if len(set(members)) != len(members):
        return None  # duplicate keys: the layer's reader says what PHP reads
    skip = 1 + 2 * indent
    starts = [m.start() + skip for m in inner]
    ends = [m.start() for m in inner[1:]]
    ends.append(closed)
    view = memoryview(raw)
    blake = hashlib.blake2b
    spans = []
    for position, (member, start, end) in enumerate(zip(members, starts, ends, strict=True)):
        if raw[end - 1] == 44:  # the comma before the next member
            end -= 1
        digest = blake(view[start:end], digest_size=16).hexdigest()
        spans.append(Span(member, start, end, digest, position))
    return Scan(raw, spans, indent, inner[0].start(), closed)


def record_of_span(raw: bytes, span: Span, fs: FileSpec, entity: str) -> StoredRecord | None:
    """The record a member holds, keyed and placed as the layer's reader does it (None: not a
    record, e.g. a scalar in the wrapper)."""
    parsed = json.loads(b"{" + raw[span.start : span.end] + b"}")
    ((member, value),) = parsed.items()
    if type(value) is not dict:
        return None
    found = value.get(fs.id_field)
    if type(found) is str and found.strip(_WHITESPACE):
        key = found
    elif type(found) is int:
        key = str(found)
    else:
        key = member
    placement = {"wrapper": fs.wrapper, "file_key": member, "position": span.position}
    return StoredRecord(entity, key, value, placement)


def record_digest(record: StoredRecord) -> str:
    """A record's hash for the diff: its data and where it sits, but not its position, which
    every record after a deleted one changes."""
    placement = {k: v for k, v in record.placement.items() if k != "position"}
    return _digest(_CANONICAL([record.key, record.data, placement]).encode())


def read_locked(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The file's bytes and fstat, read under LOCK_SH on the inode at `path` (PHP's read
    lock); None when there is no file."""
    fd = lock_current_inode(path, exclusive=False)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        chunks, offset = [], 0
        while chunk := os.pread(
            fd, max(st.st_size + 1, 1 << 16) if not offset else 1 << 20, offset
        ):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def keys_unique(snap: Snapshot, records: dict[str, StoredRecord]) -> bool:
    keys = [r.key for r in records.values()]
    keys += [k for t, (_, k) in snap.tracks.items() if k and t not in records]
    return len(keys) == len(set(keys))


def stamp(st: os.stat_result | None) -> list[int] | None:
    return None if st is None else [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


@dataclass
class Snapshot:
    """One entity's records as read now: by track, with how to get each record."""

    mode: str  # "spans" or "records"
    tracks: dict[str, tuple[str, str]]  # track -> (digest, record key); key "" until parsed
    stamps: dict[str, list[int] | None]  # relpath -> stat stamp
    mtime: float  # the latest mtime of its files
    records: dict[str, StoredRecord | None] = field(default_factory=dict)  # track -> record
    loader: Callable[[str], StoredRecord | None] | None = None
    track_file: dict[str, str] = field(default_factory=dict)
