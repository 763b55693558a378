"""JSON files shared with the PHP application: strict reads, PHP-compatible encoding, atomic writes
under the same `flock` PHP takes, and group commit.

Why each piece exists:
- PHP's writers truncate in place and leave empty or half-written files on failure (AEIMS REPORT
  bug 7), so a read never guesses: malformed JSON, invalid UTF-8 or an empty file is a
  `JsonFileError` naming the file, the line and column, and what is there.
- The PHP application keeps reading these files during the whole migration, so a write keeps the
  file's own style (indent, escaped slashes, trailing newline) and PHP's float and string
  conventions, and replaces the file atomically (temp file, fsync, rename, fsync of the folder)
  with its mode and owner kept.
- Read-modify-write runs under `flock(LOCK_EX)` on the data file itself, the lock PHP's
  `flock($fp, LOCK_EX)` takes, so neither side loses the other's update.
- Message traffic needs many small changes per second: `locked_update_many` and `GroupCommitter`
  apply a batch of changes in one read-modify-write, and unchanged files are not parsed again.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import functools
import json
import math
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_STYLE",
    "NO_CHANGE",
    "BatchOutcome",
    "GroupCommitter",
    "JsonFileError",
    "JsonFileMissingError",
    "JsonStyle",
    "clone_json",
    "detect_style",
    "dump_json",
    "encode_php_json",
    "file_style",
    "forget_cached",
    "json_equal",
    "locked_update",
    "locked_update_many",
    "read_json",
    "read_json_shared",
    "write_json",
]


# --------------------------------------------------------------------------------------------
# Errors and sentinels
# --------------------------------------------------------------------------------------------


class JsonFileError(Exception):
    """A JSON file could not be read or written; the message names the file and the position."""

    def __init__(
        self,
        path: Path | str,
        reason: str,
        *,
        line: int | None = None,
        column: int | None = None,
        excerpt: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.line = line
        self.column = column
        self.excerpt = excerpt
        where = str(self.path)
        if line is not None:
            where += f":{line}:{column}" if column is not None else f":{line}"
        message = f"{where}: {reason}"
        if line is not None:
            message += f" (line {line}" + (f", column {column})" if column is not None else ")")
        if excerpt is not None:
            message += f"; near: {excerpt}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class JsonFileMissingError(JsonFileError):
    """The file does not exist (and the caller gave no default)."""


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# Returned by an update function to say "nothing to change": then nothing is written.
NO_CHANGE: Final[Any] = _Sentinel("NO_CHANGE")
# Default for `default=`: a missing file is an error.
_RAISE: Final[Any] = _Sentinel("RAISE")
_UNPARSED: Final[Any] = _Sentinel("UNPARSED")

_FIX_HINT = "Nothing was changed; fix the file (or restore it from a backup) and run again"


# --------------------------------------------------------------------------------------------
# Style
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonStyle:
    """How a file spells its JSON, so that a rewrite looks like the file did.

    indent: spaces per level (PHP's JSON_PRETTY_PRINT is 4; hand-written domains.json uses 2);
    None for compact one-line output (`json_encode` without JSON_PRETTY_PRINT).
    escape_slashes: `/` written as `\\/` (PHP without JSON_UNESCAPED_SLASHES).
    escape_unicode: non-ASCII written as `\\uXXXX` (PHP without JSON_UNESCAPED_UNICODE).
    trailing_newline: the file ends with a newline.
    """

    indent: int | None = 4
    escape_slashes: bool = False
    escape_unicode: bool = False
    trailing_newline: bool = False


# Files created from nothing: PHP's json_encode(JSON_PRETTY_PRINT | JSON_UNESCAPED_UNICODE |
# JSON_UNESCAPED_SLASHES) written with file_put_contents (no trailing newline).
DEFAULT_STYLE: Final = JsonStyle()

_FIRST_INDENT = re.compile(r"\n([ \t]+)\S")
_SLASH = re.compile(r"(\\*)/")
_UNICODE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})")


def detect_style(raw_text: str) -> JsonStyle:
    """The style `raw_text` is written in.

    Escaped slashes follow the file's majority: data/operators.json escapes all 54 of its
    slashes, the agents copy only 4 of 54 (hand-merged), and a file without any slash says
    nothing, so it gets unescaped slashes (JSON_UNESCAPED_SLASHES).
    """
    trailing_newline = raw_text.endswith("\n")
    indent: int | None
    match = _FIRST_INDENT.search(raw_text)
    if match:
        whitespace = match.group(1)
        indent = len(whitespace) if whitespace.strip(" ") == "" else 4
    else:
        body = raw_text.strip()
        # One line holding non-empty containers is compact output; `[]`, `{}` and scalars say
        # nothing about indentation, and PHP's writers pretty-print.
        compact = len(body) > 2 and body[0] in "[{" and body not in ("[]", "{}")
        indent = None if compact else 4
    escaped = unescaped = 0
    if "/" in raw_text:
        for slash in _SLASH.finditer(raw_text):
            if len(slash.group(1)) % 2:
                escaped += 1
            else:
                unescaped += 1
    escape_unicode = False
    if raw_text.isascii() and "\\u" in raw_text:
        escape_unicode = any(
            int(m.group(1), 16) >= 0x80 for m in _UNICODE_ESCAPE.finditer(raw_text)
        )
    return JsonStyle(
        indent=indent,
        escape_slashes=escaped > unescaped,
        escape_unicode=escape_unicode,
        trailing_newline=trailing_newline,
    )


# --------------------------------------------------------------------------------------------
# PHP-compatible encoding
# --------------------------------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Python writes an exponent for floats below 1e-4 or from 1e16 on; PHP spells those otherwise.
_EXPONENT = re.compile(r"[0-9]e[-+]?[0-9]")


def _php_float(value: float) -> str:
    """A float as PHP >= 7.1 writes it with serialize_precision -1, keeping a zero fraction.

    PHP picks the shortest repr that reads back exactly (as Python's repr does) and switches
    to exponent form below 1e-4 or from 1e17 on (`1.0e+25`, `1.0e-5`); Python switches at
    1e16 and spells exponents `1e+25`. A whole float keeps `.0` (JSON_PRESERVE_ZERO_FRACTION)
    so that it stays a float for every reader; plain PHP json_encode would write `5`.
    """
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{value!r} cannot be written as JSON (PHP's json_encode refuses it too)")
    text = repr(value)
    if "e" not in text:
        return text
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text)
    negative = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "")
    sign = "-" if negative else ""
    if exponent == 16:
        # PHP writes 1e16 <= |x| < 1e17 in full: 17 digits, no fraction.
        return sign + digits.ljust(17, "0") + ".0"
    fraction = digits[1:] or "0"
    return f"{sign}{digits[0]}.{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent)}"


def _key_text(key: object) -> str:
    """An object key as json.dumps (and the C encoder) spell non-string keys."""
    if type(key) is str:
        return key  # type: ignore[return-value]
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return _php_float(key)
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"JSON object keys must be strings, not {type(key).__name__} ({key!r})")


def _encode_text(value: Any, indent: int | None, escape_unicode: bool) -> str:
    """The JSON text of `value` with PHP's layout; slashes and U+2028/9 are handled after.

    Containers holding only scalars (most of a record's leaves, and whole message records)
    go through the C encoder with the separators of their depth, several times faster than
    laying them out here.
    """
    enc_str = encode_basestring_ascii if escape_unicode else encode_basestring
    if indent is None and c_make_encoder is not None:
        # Compact output is exactly the C encoder's, except for floats that Python spells
        # with an exponent: none in the text (the usual case) means none in the value.
        try:
            text = "".join(
                c_make_encoder(None, None, enc_str, None, ":", ",", False, False, False)(value, 0)
            )
        except (ValueError, TypeError):
            pass  # NaN, infinity or a non-JSON type: the path below names it
        else:
            if ("e+" not in text and "e-" not in text) or not _EXPONENT.search(text):
                return text
    parts: list[str] = []
    append = parts.append
    key_sep = ":" if indent is None else ": "
    newlines = [""] if indent is None else ["\n"]
    leaf_encoders: list[Any] = []

    def newline(depth: int) -> str:
        if indent is None:
            return ""
        while len(newlines) <= depth:
            newlines.append("\n" + " " * (indent * len(newlines)))
        return newlines[depth]

    def leaf_encoder(depth: int) -> Any:
        while len(leaf_encoders) <= depth:
            item_sep = "," + newline(len(leaf_encoders) + 1)
            leaf_encoders.append(
                c_make_encoder(None, None, enc_str, None, key_sep, item_sep, False, False, False)
            )
        return leaf_encoders[depth]

    def scalar(v: Any) -> str:
        t = type(v)
        if t is str:
            return enc_str(v)
        if t is int:
            return int.__repr__(v)
        if t is bool:
            return "true" if v else "false"
        if v is None:
            return "null"
        if t is float:
            return _php_float(v)
        if isinstance(v, str):
            return enc_str(str(v))
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return int.__repr__(int(v))
        if isinstance(v, float):
            return _php_float(float(v))
        raise TypeError(f"cannot write a {type(v).__name__} as JSON: {v!r:.60}")

    def container(v: Any, depth: int) -> None:
        is_dict = isinstance(v, dict)
        if not v:
            append("{}" if is_dict else "[]")
            return
        inner = newline(depth + 1)
        close = newline(depth) + ("}" if is_dict else "]")
        if c_make_encoder is not None and (type(v) is dict or type(v) is list):
            for x in v.values() if is_dict else v:
                t = type(x)
                if t is str or t is int or t is bool or x is None:
                    continue
                if t is float and (x == 0.0 or 1e-4 <= abs(x) < 1e16):
                    continue  # Python's repr is PHP's spelling for these
                break
            else:
                body = leaf_encoder(depth)(v, 0)[0]
                append(body[0])
                append(inner)
                append(body[1:-1])
                append(close)
                return
        sep = "," + inner
        first = True
        if is_dict:
            append("{")
            for key, item in v.items():
                if first:
                    append(inner)
                    first = False
                else:
                    append(sep)
                append(enc_str(key if type(key) is str else _key_text(key)))
                append(key_sep)
                t = type(item)
                if t is str:
                    append(enc_str(item))
                elif t is dict or t is list or isinstance(item, dict | list | tuple):
                    container(item, depth + 1)
                else:
                    append(scalar(item))
        else:
            append("[")
            for item in v:
                if first:
                    append(inner)
                    first = False
                else:
                    append(sep)
                t = type(item)
                if t is str:
                    append(enc_str(item))
                elif t is dict or t is list or isinstance(item, dict | list | tuple):
                    container(item, depth + 1)
                else:
                    append(scalar(item))
        append(close)

    if isinstance(value, dict | list | tuple):
        container(value, 0)
    else:
        append(scalar(value))
    return "".join(parts)


def _finish(text: str, escape_slashes: bool, escape_unicode: bool) -> str:
    """PHP's escapes that a plain encoder does not make; `/`, U+2028 and U+2029 only ever occur
    inside strings in JSON text, so replacing them in the whole text is exact."""
    if escape_slashes and "/" in text:
        text = text.replace("/", "\\/")
    if not escape_unicode:
        if "\u2028" in text:
            text = text.replace("\u2028", "\\u2028")
        if "\u2029" in text:
            text = text.replace("\u2029", "\\u2029")
    return text


def _to_utf8(text: str) -> tuple[str, bytes]:
    """UTF-8 bytes of `text`; lone surrogates (from `\\udXXX` escapes read in) stay escapes."""
    try:
        return text, text.encode("utf-8")
    except UnicodeEncodeError:
        text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        return text, text.encode("utf-8")


def encode_php_json(
    value: Any,
    *,
    escape_slashes: bool,
    indent: int | None = 4,
    escape_unicode: bool = False,
) -> str:
    """`value` as PHP's `json_encode($x, JSON_PRETTY_PRINT | JSON_UNESCAPED_UNICODE
    [| JSON_UNESCAPED_SLASHES])` writes it: `indent` spaces per level (None: compact),
    `"key": value`, raw UTF-8, `\\/` when `escape_slashes`, empty list `[]`, empty dict `{}`,
    floats as PHP 7.1+ (see `_php_float`). No trailing newline. `json.loads` reads it back equal.
    """
    text = _finish(_encode_text(value, indent, escape_unicode), escape_slashes, escape_unicode)
    return _to_utf8(text)[0]


def dump_json(value: Any, style: JsonStyle) -> str:
    """The full text of a file holding `value` in `style` (trailing newline included)."""
    text = encode_php_json(
        value,
        escape_slashes=style.escape_slashes,
        indent=style.indent,
        escape_unicode=style.escape_unicode,
    )
    return text + "\n" if style.trailing_newline else text


def _dump_bytes(value: Any, style: JsonStyle) -> bytes:
    text = _finish(
        _encode_text(value, style.indent, style.escape_unicode),
        style.escape_slashes,
        style.escape_unicode,
    )
    if style.trailing_newline:
        text += "\n"
    return _to_utf8(text)[1]


# --------------------------------------------------------------------------------------------
# Values: private copies and type-exact equality
# --------------------------------------------------------------------------------------------


def clone_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists, scalars); several times faster than deepcopy."""
    t = type(value)
    if t is dict:
        return {k: clone_json(v) for k, v in value.items()}
    if t is list:
        return [clone_json(v) for v in value]
    if t in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values that, unlike `==`, tells 1, 1.0 and true apart (and keeps dict
    key order out of it): a record whose `entry_fee` went from `0` to `0.0` has changed."""
    ta, tb = type(a), type(b)
    if ta is dict:
        if tb is not dict or len(a) != len(b):
            return False
        return all(key in b and json_equal(value, b[key]) for key, value in a.items())
    if ta is list:
        if tb is not list or len(a) != len(b):
            return False
        return all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is not tb:
        return False
    if ta is float and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_SECRET_VALUE = re.compile(
    r'("[^"]*(?:pass|secret|token|hash|pin|credential|api_key)[^"]*"\s*:\s*)"(?:[^"\\]|\\.)*"?',
    re.IGNORECASE,
)
_BCRYPT = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9\\]*")
_EXCERPT_WIDTH = 40


def _redact_excerpt(text: str) -> str:
    """Excerpts land in logs: values of password-like keys and bcrypt hashes are masked."""
    text = _SECRET_VALUE.sub(r'\1"***"', text)
    return _BCRYPT.sub("$2y$***", text)


def _excerpt(line_text: str, column: int) -> str:
    start = max(0, column - 1 - _EXCERPT_WIDTH)
    end = column - 1 + _EXCERPT_WIDTH
    snippet = line_text[start:end]
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(line_text) else ""
    printable = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in snippet
    )
    return repr(prefix + _redact_excerpt(printable) + suffix)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (PHP's json_decode rejects it)")


def _parse(raw: bytes, path: Path) -> Any:
    """The JSON value in `raw`, or a JsonFileError that says where and what is wrong."""
    if not raw.strip():
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
        around = raw[max(0, exc.start - 20) : exc.start + 20]
        raise JsonFileError(
            path,
            f"invalid UTF-8 at byte offset {exc.start} ({exc.reason})",
            line=line,
            column=column,
            excerpt=repr(_redact_excerpt(around.decode("utf-8", "backslashreplace"))),
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
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        lines = text.splitlines() or [""]
        line_text = lines[exc.lineno - 1] if exc.lineno - 1 < len(lines) else ""
        reason = exc.msg
        if exc.pos >= len(text.rstrip()):
            reason += " (the file ends early: truncated?)"
        raise JsonFileError(
            path,
            f"invalid JSON: {reason}",
            line=exc.lineno,
            column=exc.colno,
            excerpt=_excerpt(line_text, exc.colno),
            hint=_FIX_HINT,
        ) from None
    except ValueError as exc:
        raise JsonFileError(path, f"invalid JSON: {exc}", hint=_FIX_HINT) from None
    except RecursionError:
        raise JsonFileError(path, "invalid JSON: nested too deeply", hint=_FIX_HINT) from None


@dataclass
class _CacheEntry:
    key: tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size
    raw: bytes
    read_at_ns: int  # wall clock when this content was known to be on disk
    doc: Any = _UNPARSED
    style: JsonStyle | None = None


# An unchanged file is not parsed again. Entries hold the raw bytes too: a stat key is not
# proof (a PHP in-place rewrite of the same size inside one timestamp tick keeps it), so a key
# seen within _RACY_NS of the file's mtime is confirmed by comparing the bytes (git's "racily
# clean" rule), and a write always compares the bytes it reads under the lock.
_CACHE: dict[str, _CacheEntry] = {}
_CACHE_LOCK = threading.Lock()
_RACY_NS = 2_000_000_000
# Bigger files are parsed on every read rather than kept in memory for good (a 300 MB
# customers.json parses to several GB of objects).
_CACHE_MAX_BYTES = 64 * 1024 * 1024


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _cache_get(path: Path) -> _CacheEntry | None:
    with _CACHE_LOCK:
        return _CACHE.get(str(path))


def _cache_put(path: Path, entry: _CacheEntry) -> None:
    with _CACHE_LOCK:
        if len(entry.raw) <= _CACHE_MAX_BYTES:
            _CACHE[str(path)] = entry
        else:
            _CACHE.pop(str(path), None)


def forget_cached(path: Path | None = None) -> None:
    """Drop the parse cache for one file (or all files)."""
    with _CACHE_LOCK:
        if path is None:
            _CACHE.clear()
        else:
            _CACHE.pop(str(Path(path).absolute()), None)


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _entry_doc(entry: _CacheEntry, path: Path) -> Any:
    """The entry's parsed document, parsed once and shared (never mutated)."""
    if entry.doc is _UNPARSED:
        entry.doc = _parse(entry.raw, path)
    return entry.doc


def _entry_style(entry: _CacheEntry) -> JsonStyle:
    if entry.style is None:
        entry.style = detect_style(entry.raw.decode("utf-8"))
    return entry.style


def _load_entry(path: Path) -> _CacheEntry | None:
    """The file's current cache entry (reading it under LOCK_SH when needed); None if missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    entry = _cache_get(path)
    key = _stat_key(st)
    if entry is not None and entry.key == key and entry.read_at_ns - st.st_mtime_ns > _RACY_NS:
        return entry
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # PHP's safeFileWrite truncates and rewrites in place under LOCK_EX: a shared lock
        # keeps this read from seeing the half-written file.
        fcntl.flock(fd, fcntl.LOCK_SH)
        st = os.fstat(fd)
        read_at = time.time_ns()
        raw = _read_all(fd)
    finally:
        os.close(fd)
    key = _stat_key(st)
    if entry is not None and entry.raw == raw:
        entry.key = key
        entry.read_at_ns = read_at
        return entry
    entry = _CacheEntry(key=key, raw=raw, read_at_ns=read_at)
    _parse_into(entry, path)
    _cache_put(path, entry)
    return entry


def _parse_into(entry: _CacheEntry, path: Path) -> None:
    entry.doc = _parse(entry.raw, path)


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

    Malformed JSON, invalid UTF-8 and empty files raise JsonFileError naming the file, line,
    column and a short (secret-masked) excerpt. A missing file gives `default` (a copy of it),
    or JsonFileMissingError when no default is given.
    """
    sentinel = object()
    value = read_json_shared(path, default=sentinel)
    if value is sentinel:
        if default is _RAISE:
            raise JsonFileMissingError(Path(path).absolute(), "the file does not exist")
        return clone_json(default)
    return clone_json(value)


def file_style(path: Path | str, *, default: JsonStyle = DEFAULT_STYLE) -> JsonStyle:
    """The style of the file at `path` (`default` when it does not exist)."""
    path = Path(path).absolute()
    entry = _load_entry(path)
    return default if entry is None else _entry_style(entry)


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, like: os.stat_result | None) -> tuple[str, os.stat_result]:
    """A synced temp file beside `path` holding `data`, with `like`'s mode and owner.

    A new file (no `like`) gets the umask's mode and, when running as root, the folder's owner
    and group: the PHP application (www-data) owns the data folder and must be able to write
    the files created in it.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise JsonFileError(
            path,
            f"cannot create a temporary file in {path.parent}",
            hint="Atomic replacement needs write permission on the folder; run as its owner "
            "(or root). Nothing was changed",
        ) from None
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if like is not None:
                mine = os.fstat(fd)
                if (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
                    try:
                        os.fchown(fd, like.st_uid, like.st_gid)
                    except PermissionError:
                        raise JsonFileError(
                            path,
                            f"cannot keep the file's owner uid={like.st_uid} gid={like.st_gid} "
                            "when replacing it",
                            hint="Run as that user (or root) so the PHP application can still "
                            "write the file; nothing was changed",
                        ) from None
                os.fchmod(fd, stat.S_IMODE(like.st_mode))
            else:
                os.fchmod(fd, 0o666 & ~_umask())
                if os.geteuid() == 0:
                    folder = os.stat(path.parent)
                    os.fchown(fd, folder.st_uid, folder.st_gid)
            os.fsync(fd)
            return tmp, os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _replace_atomically(path: Path, data: bytes, like: os.stat_result | None) -> os.stat_result:
    """Replace `path` with `data`: temp file, fsync, rename, fsync of the folder. On any error
    the original is untouched and the temp file is gone."""
    tmp, st = _write_temp(path, data, like)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return st


def _create_exclusively(path: Path, data: bytes) -> os.stat_result | None:
    """Create `path` holding `data` unless it exists (then None): never an empty file on disk."""
    tmp, st = _write_temp(path, data, None)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # A filesystem without hard links: the caller holds the folder lock, and checked
            # that the file is missing, so a rename is safe from our own writers.
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            return st
        _fsync_dir(path.parent)
        return st
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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


def _lock_current_file(path: Path) -> int | None:
    """An fd of the file now at `path`, held under LOCK_EX; None when the file does not exist.

    After a writer's os.replace, a waiter that then gets the lock holds it on the *old* inode,
    which is no longer the file: it checks that its fd is still the file at `path`, and if not,
    drops it and locks the new one.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (mine.st_dev, mine.st_ino) == (
                current.st_dev,
                current.st_ino,
            ):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


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


def _update(
    path: Path | str,
    fns: Sequence[Callable[[Any], Any]],
    *,
    default: Any,
    new_file_style: JsonStyle,
    isolate: bool,
) -> list[BatchOutcome]:
    path = Path(path).absolute()
    while True:
        fd = _lock_current_file(path)
        if fd is None:
            outcome = _update_missing(path, fns, default, new_file_style, isolate)
            if outcome is None:
                continue  # the file appeared meanwhile: update it under its own lock
            return outcome
        try:
            like = os.fstat(fd)
            raw = _read_all(fd)
            entry = _cache_get(path)
            if entry is not None and entry.raw == raw:
                style = _entry_style(entry)
                doc = _parse(raw, path) if entry.doc is _UNPARSED else clone_json(entry.doc)
            else:
                doc = _parse(raw, path)
                entry = _CacheEntry(key=_stat_key(like), raw=raw, read_at_ns=time.time_ns())
                style = _entry_style(entry)
                _cache_put(path, entry)
            new_doc, outcomes, changed = _apply(
                doc, functools.partial(_parse, raw, path), fns, isolate
            )
            if changed:
                data = _dump_bytes(new_doc, style)
                if data != raw:
                    st = _replace_atomically(path, data, like)
                    _cache_put(
                        path,
                        _CacheEntry(
                            key=_stat_key(st), raw=data, read_at_ns=time.time_ns(), style=style
                        ),
                    )
            return outcomes
        finally:
            os.close(fd)


def _update_missing(
    path: Path,
    fns: Sequence[Callable[[Any], Any]],
    default: Any,
    style: JsonStyle,
    isolate: bool,
) -> list[BatchOutcome] | None:
    """Update a file that does not exist yet, under a lock on its folder; None: it exists now."""
    if default is _RAISE:
        raise JsonFileMissingError(
            path, "the file does not exist", hint="Create it, or pass a default"
        )
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise JsonFileMissingError(
            path, "neither the file nor its folder exists", hint="Create the folder first"
        ) from None
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        if path.exists():
            return None
        new_doc, outcomes, changed = _apply(
            clone_json(default), lambda: clone_json(default), fns, isolate
        )
        if changed:
            data = _dump_bytes(new_doc, style)
            st = _create_exclusively(path, data)
            if st is None:
                return None
            _cache_put(
                path,
                _CacheEntry(key=_stat_key(st), raw=data, read_at_ns=time.time_ns(), style=style),
            )
        return outcomes
    finally:
        os.close(dir_fd)


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
    in `new_file_style`, only if `fn` changes it); without a default it is JsonFileMissingError.
    The write keeps the file's own style, mode and owner, and is atomic.

    Why the data file itself is locked: PHP's `flock($fp, LOCK_EX)` on the same path is the
    lock the PHP application already takes, so PHP writers and ours exclude each other with no
    new convention. The lock is held across the whole read-modify-write: a read lock and a
    write lock taken separately (as PHP's DataLayer does) lose updates.

    How the rename interacts with the lock: `os.replace` puts a new inode at the path while we
    still hold the lock on the old one. A writer that was waiting then gets the lock on that
    old, now unlinked inode; so after getting it, a writer compares its fd's inode with the
    path's inode and, if they differ, closes the fd and locks the file again. (PHP code that
    writes in place must do the same check after `flock`, e.g. compare `fstat($fp)['ino']`
    with `fileinode($path)` after `clearstatcache()`, or its write can land on the old inode.)
    """
    outcomes = _update(path, [fn], default=default, new_file_style=new_file_style, isolate=False)
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
    """Replace the file's value under the lock, atomically; `style` only for a new file (an
    existing file keeps its own)."""
    snapshot = clone_json(value)
    locked_update(
        path,
        lambda _current: snapshot,
        default=None,
        new_file_style=style or DEFAULT_STYLE,
    )


# --------------------------------------------------------------------------------------------
# Group commit for many threads
# --------------------------------------------------------------------------------------------


@dataclass
class _Ticket:
    fn: Callable[[Any], Any]
    done: bool = False
    outcome: BatchOutcome = field(default_factory=BatchOutcome)


class GroupCommitter:
    """Many threads' changes to one file, committed in batches: one read-modify-write (and one
    fsync) per batch instead of per change.

    `submit(fn)` blocks until `fn` is on disk and returns its result (or raises its error).
    The first waiting thread leads: it takes every queued change (up to `max_batch`), runs
    `locked_update_many`, and hands out the outcomes; changes that arrive meanwhile form the
    next batch. No background thread, nothing to shut down.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        default: Any = _RAISE,
        new_file_style: JsonStyle = DEFAULT_STYLE,
        max_batch: int = 1000,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.path = Path(path)
        self._default = default
        self._style = new_file_style
        self._max_batch = max_batch
        self._queue: list[_Ticket] = []
        self._leading = False
        self._cond = threading.Condition()
        self.batches = 0  # committed batches, for benchmarks and tests

    def submit(self, fn: Callable[[Any], Any]) -> Any:
        ticket = _Ticket(fn)
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._cond.release()
                try:
                    outcomes = self._commit(batch)
                finally:
                    self._cond.acquire()
                for item, outcome in zip(batch, outcomes, strict=True):
                    item.outcome = outcome
                    item.done = True
                self._leading = False
                self.batches += 1
                self._cond.notify_all()
        if ticket.outcome.error is not None:
            raise ticket.outcome.error
        return ticket.outcome.value

    def _commit(self, batch: list[_Ticket]) -> list[BatchOutcome]:
        try:
            return locked_update_many(
                self.path,
                [t.fn for t in batch],
                default=self._default,
                new_file_style=self._style,
            )
        except BaseException as exc:  # every waiter must wake up, whatever happened
            return [BatchOutcome(error=exc) for _ in batch]
