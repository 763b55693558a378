"""What a read of a JSON data file checks before and after parsing: kind, size, depth, keys.

Only regular files up to `PROVISION_JSON_MAX_BYTES` are read, documents nested deeper than
PHP's `json_decode` accepts are refused, duplicate keys are found, and big parses run with the
garbage collector paused. Everything here returns facts; read.py raises the errors
(docs/data-layer.md, "JSON files").
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------

MAX_BYTES_SETTING: Final = "PROVISION_JSON_MAX_BYTES"
# Far above any AEIMS file (a million customers is about 1 GB pretty-printed), far below what
# would exhaust memory before a parse even starts.
DEFAULT_MAX_BYTES: Final = 2 * 1024**3
# PHP's json_decode default depth. PHP counts the values inside the innermost array or object
# as a level, so it reads at most PHP_MAX_DEPTH - 1 nested arrays and objects ("[[1]]" needs
# depth 3); a file nested deeper is NULL to PHP and unreadable here.
PHP_MAX_DEPTH: Final = 512
# The recursive helpers (clone, compare, encode, redact) take up to 3 frames per level: give
# them room for every document PHP accepts, on top of whatever the caller's stack holds.
_RECURSION_NEEDED: Final = 4 * PHP_MAX_DEPTH + 1000
if sys.getrecursionlimit() < _RECURSION_NEEDED:
    sys.setrecursionlimit(_RECURSION_NEEDED)


def max_file_bytes() -> int:
    """The size limit for data files: `PROVISION_JSON_MAX_BYTES` when set, else 2 GiB.

    Read at each read (not at import) so that an operator's override takes effect in a running
    process's next read; ValueError names the setting when its value is not a positive integer.
    """
    text = os.environ.get(MAX_BYTES_SETTING, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(
            f"{MAX_BYTES_SETTING}={text!r} is not a positive whole number of bytes "
            f"(default {DEFAULT_MAX_BYTES}, 2 GiB)"
        )
    return value


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


_KINDS: Final = (
    (stat.S_ISFIFO, "a FIFO (named pipe): reading it would wait for a writer forever"),
    (stat.S_ISCHR, "a character device: reading it may never end (/dev/zero) or block"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def file_kind_problem(st: os.stat_result) -> str | None:
    """Why a file with this (f)stat is no data file (None: a regular file)."""
    if stat.S_ISREG(st.st_mode):
        return None
    for test, what in _KINDS:
        if test(st.st_mode):
            return f"not a regular file but {what}"
    return f"not a regular file (mode {oct(st.st_mode)})"


def size_problem(size: int, limit: int) -> str | None:
    """Why a file of `size` bytes is not read (None: within `limit`)."""
    if size <= limit:
        return None
    return (
        f"the file is {size} bytes ({_human(size)}), over the {limit}-byte ({_human(limit)}) "
        "limit for JSON data files"
    )


def size_hint() -> str:
    """What to do about a file over the limit."""
    return (
        f"Set {MAX_BYTES_SETTING} to a larger number of bytes if the file is really this big "
        "(its parsed document takes several times its size in memory); nothing was read"
    )


def data_file_problem(st: os.stat_result) -> tuple[str, str] | None:
    """Why a file with this (f)stat is not read and what to do about it; None: read it."""
    problem = file_kind_problem(st)
    if problem is not None:
        return (
            problem,
            "Put the JSON file back (a symlink to a regular file is fine); nothing was read",
        )
    try:
        limit = max_file_bytes()
    except ValueError as exc:
        return str(exc), "Fix the setting; nothing was read"
    problem = size_problem(st.st_size, limit)
    return None if problem is None else (problem, size_hint())


# --------------------------------------------------------------------------------------------
# Depth and member count of a parsed document
# --------------------------------------------------------------------------------------------

_CONTAINERS: Final = frozenset({dict, list})


@dataclass(frozen=True, slots=True)
class DocShape:
    """How deep a document's arrays and objects nest (0: a scalar), and how many members its
    objects hold in all (a duplicate key counts once)."""

    depth: int
    members: int


def shape_of(doc: Any) -> DocShape:
    """The document's shape, level by level (no recursion): about a quarter of the time
    `json.loads` took to build it (a plain loop beats chains of C iterators here)."""
    level = [doc] if type(doc) is dict or type(doc) is list else []
    depth = members = 0
    while level:
        depth += 1
        deeper: list[Any] = []
        add = deeper.append
        for container in level:
            if type(container) is dict:
                members += len(container)
                values = container.values()
            else:
                values = container
            for value in values:
                kind = type(value)
                if kind is dict or kind is list:
                    add(value)
        level = deeper
    return DocShape(depth, members)


def depth_problem(doc: Any, shape: DocShape) -> str | None:
    """Why PHP could not read `doc` for its depth (None: it could)."""
    if shape.depth < PHP_MAX_DEPTH:
        return None
    return (
        f"arrays and objects nested {shape.depth} levels deep (at "
        f"{deep_path(doc, PHP_MAX_DEPTH)}); PHP's json_decode reads at most "
        f"{PHP_MAX_DEPTH - 1} (its depth limit {PHP_MAX_DEPTH} counts the innermost values), "
        "so PHP cannot read this file either"
    )


def deep_path(doc: Any, depth: int) -> str:
    """Where the first container nested `depth` deep sits ("customers/cust_x/a/0/…"), found
    without recursion; for the error message of a document that is too deep."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(doc, 1, ())]
    while stack:
        node, level, where = stack.pop()
        if level >= depth:
            shown = where[:6]
            return "/".join(shown) + ("/…" if len(where) > len(shown) else "") or "(top)"
        items = node.items() if type(node) is dict else enumerate(node)
        for key, value in reversed(list(items)):
            if type(value) in _CONTAINERS:
                stack.append((value, level + 1, (*where, str(key))))
    return "(top)"


# --------------------------------------------------------------------------------------------
# Duplicate keys
# --------------------------------------------------------------------------------------------

_WHITESPACE: Final = b" \t\n\r"


def may_have_duplicates(raw: bytes, members: int) -> bool:
    """False when `raw` provably holds no duplicate key, given the member count of its parse
    (`shape_of`).

    Every object member has one colon outside strings, and between its key's closing quote
    and that colon there is only whitespace: with all whitespace deleted, the text holds at
    least as many `":` as members were written, and those are at least `members` (duplicates
    collapse in the parse). As many as `members` means none collapsed. More (`\":` inside a
    string, or real duplicates) needs `find_duplicate_keys`. Costs about a sixth of the parse.
    """
    return raw.translate(None, _WHITESPACE).count(b'":') != members


def find_duplicate_keys(text: str, limit: int = 5) -> tuple[Any, list[str]]:
    """The document (as `json.loads` reads it: the last value of a duplicate key wins, in the
    place of the first, as in PHP) and where its duplicate keys are, `limit` at most."""
    found: list[tuple[dict[str, Any], list[str]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            twice = [k for k, _ in pairs if k in seen or seen.add(k)]
            found.append((obj, list(dict.fromkeys(twice))))
        return obj

    doc = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=reject_constant)
    if not found:
        return doc, []
    places = _paths_of({id(obj) for obj, _ in found[:limit]}, doc)
    described = [
        f"{', '.join(repr(k) for k in keys)} in "
        + (
            f"the object at {places[id(obj)]}"
            if id(obj) in places
            else "an object that a later duplicate key replaced"
        )
        for obj, keys in found[:limit]
    ]
    if len(found) > limit:
        described.append(f"and {len(found) - limit} more objects")
    return doc, described


def _paths_of(wanted: set[int], doc: Any) -> dict[int, str]:
    """The paths of the containers whose ids are `wanted`, searched without recursion."""
    out: dict[int, str] = {}
    stack: list[tuple[Any, str]] = [(doc, "(top)")]
    while stack and len(out) < len(wanted):
        node, where = stack.pop()
        if id(node) in wanted:
            out[id(node)] = where
        items = node.items() if type(node) is dict else enumerate(node)
        prefix = "" if where == "(top)" else where + "/"
        stack.extend(
            (value, f"{prefix}{key}") for key, value in items if type(value) in _CONTAINERS
        )
    return out


def reject_constant(name: str) -> Any:
    """`parse_constant` for json.loads: NaN and Infinity are no JSON to PHP either."""
    raise ValueError(f"{name} is not valid JSON (PHP's json_decode rejects it)")


# --------------------------------------------------------------------------------------------
# Parsing big files
# --------------------------------------------------------------------------------------------

_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_resume = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a big document is built.

    `json.loads` of a big file creates millions of containers, and the collector, triggered
    over and over by them, walks every one each time: a 100 MB file parses three times faster
    without it. JSON documents hold no cycles (reference counting frees them), so nothing is
    lost; the collector comes back when the last concurrent parse ends, if it was on before.
    """
    global _gc_pausers, _gc_resume
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()
