"""What a read of a JSON data file checks before and after parsing, and how its errors are shown.

The files are shared with the PHP application and with whoever can write the data folder, so a
read must survive anything put in a data file's place, and say what is wrong without leaking:
- only regular files are read (a FIFO would hang the reader, `/dev/zero` would fill memory), up
  to a size limit (`PROVISION_JSON_MAX_BYTES`, 2 GiB by default);
- a document nested as deep as PHP's `json_decode` refuses (its default depth 512) is refused
  here too, before any recursive code meets it; the recursion limit is raised once so that
  every document PHP accepts can be copied, compared, encoded and redacted;
- duplicate keys in an object are found (PHP keeps the last value, as `json.loads` does): a
  read may go on, a rewrite would drop the other values, so writes refuse such a file;
- excerpts of malformed files land in `provision data health`: passwords, hashes and tokens
  are masked in the text around the error before the excerpt is cut from it.

Everything here returns facts (a reason, a count, a text); `jsonfile` raises its errors.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import provisioner.secret_names  # noqa: F401  (registers the AEIMS secret field names)
from provisioner.engine.redact import MASK, redact

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_SETTING",
    "PHP_MAX_DEPTH",
    "DocShape",
    "data_file_problem",
    "deep_path",
    "depth_problem",
    "file_kind_problem",
    "find_duplicate_keys",
    "gc_paused",
    "masked_bytes_excerpt",
    "masked_excerpt",
    "max_file_bytes",
    "may_have_duplicates",
    "reject_constant",
    "shape_of",
    "size_hint",
    "size_problem",
]

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


# --------------------------------------------------------------------------------------------
# Excerpts with secrets masked
# --------------------------------------------------------------------------------------------

# Around the error, this much text is masked before the excerpt is cut from it: a secret has to
# be longer than this to reach into the excerpt from outside.
_REGION: Final = 64 * 1024
_EXCERPT_WIDTH: Final = 40
_SECRET_NAME = re.compile(r"pass|secret|token|hash|pin|credential|api_?key|auth|salt", re.I)
# bcrypt and argon2 hashes wherever they are, PHP's escaped slashes included.
_HASH = re.compile(r"\$(?:2[abxy]?\$\d\d\$|argon2(?:id|i|d)\$)[^\s\"]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}:,]|[^\s"\[\]{},:]+', re.S)


def _secret_name(key: str) -> bool:
    """A key whose value is masked: password-, hash- and token-like names, and every name the
    engine's redaction masks (provisioner.engine.redact, with the AEIMS names registered)."""
    return bool(_SECRET_NAME.search(key)) or redact({key: "?"}).get(key) == MASK


def _tokens(region: str, inside_string: bool) -> list[tuple[int, int, str]]:
    """JSON tokens of `region` as (start, end, text), starting inside a string or not."""
    out: list[tuple[int, int, str]] = []
    at = 0
    if inside_string:
        close = re.search(r'(?<!\\)(?:\\\\)*"', region)
        at = close.end() if close else len(region)
        out.append((0, at, '"' + region[:at]))
    out.extend((m.start(), m.end(), m.group()) for m in _TOKEN.finditer(region, at))
    return out


def _secret_spans(region: str) -> list[tuple[int, int]]:
    """Where `region` holds secrets: values of secret-named keys (whole objects and lists
    included) and strings holding a hash, read as if the region started outside a string and
    as if it started inside one (one of the two is how it is: both are masked)."""
    spans = [m.span() for m in _HASH.finditer(region)]
    for inside in (False, True):
        tokens = _tokens(region, inside)
        for i, (start, end, text) in enumerate(tokens):
            if not text.startswith('"'):
                continue
            if _HASH.search(text):
                spans.append((start, end))
            if i + 2 >= len(tokens) or tokens[i + 1][2] != ":" or not _secret_name(text[1:-1]):
                continue
            value_start, value_end, value = tokens[i + 2]
            if value in ("{", "["):
                value_end = _container_end(tokens, i + 2, len(region))
            spans.append((value_start, value_end))
    return _merged(spans)


def _container_end(tokens: list[tuple[int, int, str]], opener: int, default: int) -> int:
    depth = 0
    for _, end, text in tokens[opener:]:
        if text in ("{", "["):
            depth += 1
        elif text in ("}", "]"):
            depth -= 1
            if depth == 0:
                return end
    return default


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def masked_excerpt(text: str, pos: int) -> str:
    """The line around `pos` in `text`, about 40 characters either side, secrets masked.

    Masking runs on up to 64 KiB either side of `pos` before the excerpt is cut, so a password
    or hash cut by the excerpt's edge (its key or its `$2y$` outside the window) is masked
    all the same; an error inside a secret shows the mask.
    """
    start = max(0, pos - _REGION)
    end = min(len(text), pos + _REGION)
    region = text[start:end]
    at = pos - start
    pieces: list[str] = []
    length = 0
    new_at: int | None = None
    last = 0
    for span_start, span_end in _secret_spans(region):
        if new_at is None and at < span_start:
            new_at = length + at - last
        pieces.append(region[last:span_start])
        length += span_start - last
        if new_at is None and at < span_end:
            new_at = length
        pieces.append(f'"{MASK}"')
        length += len(MASK) + 2
        last = span_end
    if new_at is None:
        new_at = length + at - last
    pieces.append(region[last:])
    masked = "".join(pieces)
    line_start = masked.rfind("\n", 0, new_at) + 1
    line_end = masked.find("\n", new_at)
    if line_end < 0:
        line_end = len(masked)
    cut_start = max(line_start, new_at - _EXCERPT_WIDTH)
    cut_end = min(line_end, new_at + _EXCERPT_WIDTH)
    before = cut_start > line_start or (line_start == 0 and start > 0)
    after = cut_end < line_end or (line_end == len(masked) and end < len(text))
    snippet = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode()
        for ch in masked[cut_start:cut_end]
    )
    return repr(("…" if before else "") + snippet + ("…" if after else ""))


def masked_bytes_excerpt(raw: bytes, offset: int) -> str:
    """`masked_excerpt` at byte `offset` of text that is not valid UTF-8 (bad bytes shown as
    `\\xNN`)."""
    start = max(0, offset - _REGION)
    head = raw[start:offset].decode("utf-8", "backslashreplace")
    tail = raw[offset : offset + _REGION].decode("utf-8", "backslashreplace")
    return masked_excerpt(head + tail, len(head))
