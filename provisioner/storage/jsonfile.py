"""JSON files shared with the PHP application: strict reads, PHP-compatible encoding, crash-safe
writes in place under the same `flock` PHP takes, and group commit.

Why each piece exists:
- PHP's writers truncate in place and leave empty or half-written files on failure (AEIMS REPORT
  bug 7), so a read never guesses: malformed JSON, invalid UTF-8 or an empty file is a
  `JsonFileError` naming the file, the line and column, and what is there.
- The PHP application keeps reading these files during the whole migration, so a write keeps the
  file's own style (indent, escaped slashes, trailing newline) and PHP's float and string
  conventions, and rewrites the same inode as PHP does (never a rename PHP could be waiting
  behind), after a durable copy that repairs a rewrite a crash cut short (write_ahead).
- PHP's own read-modify-write takes its read and write locks separately and so reverts what
  was written in between: this layer's writes are recorded per record and written again when
  reverted (recent_writes).
- Read-modify-write runs under `flock(LOCK_EX)` on the data file itself, the lock PHP's
  `flock($fp, LOCK_EX)` takes, so neither side loses the other's update.
- Message traffic needs many small changes per second: `locked_update_many` and `GroupCommitter`
  apply a batch of changes in one read-modify-write, and unchanged files are not parsed again.
- A few new records in a file of thousands must cost about as much as the records themselves:
  `locked_update_shared` hands the update the shared cached document to change copy-on-write,
  caches what it wrote as the file's document (so the next update parses nothing), and
  encodes only the members that are not the same objects as last time (`_Node`), joining the
  rest from the pieces of the previous write; the bytes are exactly the whole encoder's.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import json
import math
import operator
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii
from pathlib import Path
from typing import Any, Final

from provisioner.fsutil import create_atomically, file_lock, lock_current_inode
from provisioner.storage import json_read, recent_writes, write_ahead

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
    "duplicate_keys",
    "encode_php_json",
    "file_style",
    "forget_cached",
    "json_equal",
    "locked_update",
    "locked_update_many",
    "locked_update_shared",
    "read_json",
    "read_json_shared",
    "recheck_recent_writes",
    "reconcile_recent_writes",
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
_ANY_ENTRY: Final[Any] = _Sentinel("ANY_ENTRY")

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


class _TextEncoder:
    """PHP's layout of JSON values in one indent and escaping, for a value at any depth.

    Made once per encoding (its tables of newlines and leaf encoders grow as deeper levels
    appear, so it is not shared between threads). Containers holding only scalars (most of a
    record's leaves, and whole message records) go through the C encoder with the separators
    of their depth, several times faster than laying them out here. `text(value, depth)` is
    exactly what the layout of a whole document holds for `value` at that depth, which is what
    lets a document be encoded in pieces (see `_Node`).
    """

    def __init__(self, indent: int | None, escape_unicode: bool) -> None:
        self.indent = indent
        self.enc_str = encode_basestring_ascii if escape_unicode else encode_basestring
        self.key_sep = ":" if indent is None else ": "
        self._newlines = [""] if indent is None else ["\n"]
        self._leaf_encoders: list[Any] = []
        # Compact output is exactly the C encoder's, except for floats that Python spells with
        # an exponent: none in the text (the usual case) means none in the value.
        self.compact = (
            c_make_encoder(None, None, self.enc_str, None, ":", ",", False, False, False)
            if indent is None and c_make_encoder is not None
            else None
        )

    def newline(self, depth: int) -> str:
        """The line break and indentation before an item at `depth` ("" when compact)."""
        if self.indent is None:
            return ""
        newlines = self._newlines
        while len(newlines) <= depth:
            newlines.append("\n" + " " * (self.indent * len(newlines)))
        return newlines[depth]

    def text(self, value: Any, depth: int = 0) -> str:
        """The JSON text of `value` laid out at `depth`; slashes and U+2028/9 are handled after
        (`_finish`)."""
        if self.compact is not None:
            try:
                text = "".join(self.compact(value, 0))
            except (ValueError, TypeError):
                pass  # NaN, infinity or a non-JSON type: the path below names it
            else:
                if ("e+" not in text and "e-" not in text) or not _EXPONENT.search(text):
                    return text
        parts: list[str] = []
        if isinstance(value, dict | list | tuple):
            self._container(value, depth, parts.append)
        else:
            parts.append(self._scalar(value))
        return "".join(parts)

    def _leaf_encoder(self, depth: int) -> Any:
        leaf_encoders = self._leaf_encoders
        while len(leaf_encoders) <= depth:
            item_sep = "," + self.newline(len(leaf_encoders) + 1)
            leaf_encoders.append(
                c_make_encoder(
                    None, None, self.enc_str, None, self.key_sep, item_sep, False, False, False
                )
            )
        return leaf_encoders[depth]

    def _scalar(self, v: Any) -> str:
        t = type(v)
        if t is str:
            return self.enc_str(v)
        if t is int:
            return int.__repr__(v)
        if t is bool:
            return "true" if v else "false"
        if v is None:
            return "null"
        if t is float:
            return _php_float(v)
        if isinstance(v, str):
            return self.enc_str(str(v))
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return int.__repr__(int(v))
        if isinstance(v, float):
            return _php_float(float(v))
        raise TypeError(f"cannot write a {type(v).__name__} as JSON: {v!r:.60}")

    def _container(self, v: Any, depth: int, append: Callable[[str], Any]) -> None:
        is_dict = isinstance(v, dict)
        if not v:
            append("{}" if is_dict else "[]")
            return
        newlines = self._newlines
        if len(newlines) <= depth + 1:
            self.newline(depth + 1)
        inner = newlines[depth + 1] if self.indent is not None else ""
        close = (newlines[depth] if self.indent is not None else "") + ("}" if is_dict else "]")
        if c_make_encoder is not None and (type(v) is dict or type(v) is list):
            for x in v.values() if is_dict else v:  # as _is_leaf, inline: this runs a lot
                t = type(x)
                if t is str or t is int or t is bool or x is None:
                    continue
                if t is float and (x == 0.0 or 1e-4 <= abs(x) < 1e16):
                    continue  # Python's repr is PHP's spelling for these
                break
            else:
                body = self._leaf_encoder(depth)(v, 0)[0]
                append(body[0])
                append(inner)
                append(body[1:-1])
                append(close)
                return
        enc_str = self.enc_str
        key_sep = self.key_sep
        container = self._container
        scalar = self._scalar
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
                    container(item, depth + 1, append)
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
                    container(item, depth + 1, append)
                else:
                    append(scalar(item))
        append(close)


def _is_leaf(v: Any) -> bool:
    """Is `v` a plain dict or list of scalars that Python spells as PHP does (so the C encoder
    lays it out in one call)?"""
    if type(v) is not dict and type(v) is not list:
        return False
    for x in v.values() if type(v) is dict else v:
        t = type(x)
        if t is str or t is int or t is bool or x is None:
            continue
        if t is float and (x == 0.0 or 1e-4 <= abs(x) < 1e16):
            continue  # Python's repr is PHP's spelling for these
        return False
    return True


def _encode_text(value: Any, indent: int | None, escape_unicode: bool) -> str:
    """The JSON text of `value` with PHP's layout; slashes and U+2028/9 are handled after."""
    return _TextEncoder(indent, escape_unicode).text(value)


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
# Encoding in pieces: a rewrite encodes only what changed
# --------------------------------------------------------------------------------------------


class _NotPiecewise(Exception):
    """A value whose pieces might not add up to its whole encoding (a key that is not a str:
    the C encoder and PHP's spelling of float keys differ)."""


# Nodes for the top level and for the big containers in it (the wrapper of records); records,
# small and replaced whole, are pieces.
_NODE_MAX_DEPTH: Final = 1
_NODE_MIN_MEMBERS: Final = 16
# Joins the texts of many members so that they are finished and encoded in one go; JSON text
# never holds a raw NUL (it is escaped inside strings), so splitting on it is exact.
_JOINER: Final = "\x00"


@dataclass(frozen=True, slots=True)
class _Node:
    """One container of a written document, encoded member by member.

    A document written by `locked_update_shared` becomes the shared cached document and is
    never changed afterwards, so a member of the next version that is the same object as a
    member here has the same encoding: only new and replaced members are encoded again, and
    the file is the pieces joined. `pieces[i]` is member i's finished UTF-8 text (`"key": value`
    in an object) laid out one level deeper than the container; for a member in `children`
    (a big container of the top level, such as the wrapper of all messages) it is only the
    `"key": ` part and the child node holds the rest.
    """

    obj: Any  # the container encoded (kept, so that identity means "unchanged")
    keys: list[str] | None  # an object's keys in order; None for a list
    values: list[Any]
    pieces: list[bytes]
    children: dict[int, _Node]


class _PieceEncoder:
    """Encodes a document as `_Node`s in one style, reusing a previous version's pieces.

    The bytes are exactly `_dump_bytes`': a container's layout is its members' texts joined
    with the separators of its depth, and `_finish` and `_to_utf8` only change text inside
    strings, so they work the same on pieces as on the whole. `base` is a document known to
    be plain JSON (the one the update started from): members found in it need no
    `_is_plain` walk.
    """

    def __init__(self, style: JsonStyle) -> None:
        self.style = style
        self.encoder = _TextEncoder(style.indent, style.escape_unicode)
        # Everything encoded so far is what json.loads gives back (see `_is_plain`).
        self.plain = True

    def _bytes(self, text: str) -> bytes:
        return _to_utf8(_finish(text, self.style.escape_slashes, self.style.escape_unicode))[1]

    def node(self, value: Any, depth: int, old: _Node | None, base: Any) -> _Node | None:
        """A node for `value` at `depth`, reusing `old`'s unchanged members; None when `value`
        is encoded whole (a scalar, an empty or scalar-only container, another type)."""
        if old is not None and value is old.obj:
            return old
        kind = type(value)
        if (kind is not dict and kind is not list) or not value or _is_leaf(value):
            return None
        keys = list(value) if kind is dict else None
        values = list(value.values()) if kind is dict else list(value)
        pieces = [b""] * len(values)
        children: dict[int, _Node] = {}
        old_children: dict[int, _Node] = {}
        todo: list[int]
        if old is None or (keys is None) != (old.keys is None):
            todo = list(range(len(values)))  # nothing to reuse
        else:
            count = len(old.values)
            same: list[bool] = []
            if len(values) >= count and (keys is None or keys[:count] == old.keys):
                same = list(map(operator.is_, old.values, values))
            if same and (keys is not None or same.count(False) <= max(8, count // 8)):
                # The usual change: members replaced where they are, new ones appended.
                pieces[:count] = old.pieces
                children.update(old.children)
                todo = _positions_of_false(same)
                for index in todo:
                    if index in children:
                        old_children[index] = children.pop(index)
                todo.extend(range(count, len(values)))
            else:
                todo = self._reuse_matched(old, keys, values, pieces, children, old_children)
        self._fill(keys, values, todo, depth, pieces, children, old_children, base)
        return _Node(value, keys, values, pieces, children)

    @staticmethod
    def _reuse_matched(
        old: _Node,
        keys: list[str] | None,
        values: list[Any],
        pieces: list[bytes],
        children: dict[int, _Node],
        old_children: dict[int, _Node],
    ) -> list[int]:
        """Members found in `old` (same key and same object) keep their pieces (deleted or
        reordered members around them); returns the positions left to encode."""
        if old.keys is not None:
            assert keys is not None
            where = dict(zip(old.keys, range(len(old.keys)), strict=True))
            probes: list[Any] = keys
        else:
            # Values of a list are found by identity (the old node keeps them alive).
            where = {id(v): i for i, v in enumerate(old.values)}
            probes = list(map(id, values))
        todo: list[int] = []
        for index, (probe, item) in enumerate(zip(probes, values, strict=True)):
            at = where.get(probe)
            if at is None:
                todo.append(index)
                continue
            child = old.children.get(at)
            if old.values[at] is item:
                pieces[index] = old.pieces[at]
                if child is not None:
                    children[index] = child
            else:
                todo.append(index)
                if child is not None:
                    old_children[index] = child
        return todo

    def _fill(
        self,
        keys: list[str] | None,
        values: list[Any],
        todo: list[int],
        depth: int,
        pieces: list[bytes],
        children: dict[int, _Node],
        old_children: dict[int, _Node],
        base: Any,
    ) -> None:
        """Encode the members at `todo`: big containers of the top level as child nodes, the
        rest whole, many at a time."""
        whole = todo
        if depth < _NODE_MAX_DEPTH:
            whole = []
            for index in todo:
                item = values[index]
                kind = type(item)
                if (kind is dict or kind is list) and len(item) >= _NODE_MIN_MEMBERS:
                    key_text = ""
                    base_item = None
                    if keys is not None:
                        key = keys[index]
                        if type(key) is not str:
                            raise _NotPiecewise
                        key_text = self.encoder.enc_str(key) + self.encoder.key_sep
                        base_item = base.get(key) if type(base) is dict else None
                    child = self.node(item, depth + 1, old_children.get(index), base_item)
                    if child is not None:
                        pieces[index] = self._bytes(key_text)
                        children[index] = child
                        continue
                whole.append(index)
        if whole:
            for index, piece in zip(
                whole, self._whole_pieces(keys, values, whole, depth, base), strict=True
            ):
                pieces[index] = piece

    def _whole_pieces(
        self, keys: list[str] | None, values: list[Any], indexes: list[int], depth: int, base: Any
    ) -> list[bytes]:
        """The pieces of the members at `indexes`, each encoded whole one level deeper."""
        items = list(map(values.__getitem__, indexes))
        item_keys = list(map(keys.__getitem__, indexes)) if keys is not None else None
        if item_keys is not None and set(map(type, item_keys)) - {str}:
            raise _NotPiecewise
        self._check_plain(items, item_keys, base)
        texts = self._texts(items, depth + 1)
        if item_keys is not None:
            key_texts = map(self.encoder.enc_str, item_keys)
            prefixes = map(operator.add, key_texts, repeat(self.encoder.key_sep))
            texts = list(map(operator.add, prefixes, texts))
        if len(texts) == 1:
            return [self._bytes(texts[0])]
        return self._bytes(_JOINER.join(texts)).split(_JOINER.encode())

    def _texts(self, items: list[Any], depth: int) -> list[str]:
        """The texts of `items` laid out at `depth`; compact ones in one C call each."""
        encoder = self.encoder
        if encoder.compact is None or len(items) < 2:
            return [encoder.text(item, depth) for item in items]
        try:
            texts = list(map("".join, map(encoder.compact, items, repeat(0))))
        except (ValueError, TypeError):
            return [encoder.text(item, depth) for item in items]  # names what is wrong
        probe = _JOINER.join(texts)
        if ("e+" in probe or "e-" in probe) and _EXPONENT.search(probe):
            for index, text in enumerate(texts):
                if ("e+" in text or "e-" in text) and _EXPONENT.search(text):
                    texts[index] = encoder.text(items[index], depth)  # PHP's float spelling
        return texts

    def _check_plain(self, items: list[Any], item_keys: list[str] | None, base: Any) -> None:
        """Clear `plain` if an item is not plain JSON; items of `base` are known to be."""
        if not self.plain:
            return
        known: list[bool]
        if type(base) is dict and item_keys is not None:
            known = list(map(operator.is_, map(base.get, item_keys), items))
        elif type(base) is list:
            ids = set(map(id, base))
            known = list(map(ids.__contains__, map(id, items)))
        else:
            known = [False] * len(items)
        for index in _positions_of_false(known):
            if not _is_plain(items[index]):
                self.plain = False
                return

    def render(self, node: _Node, depth: int, out: list[bytes]) -> None:
        """Append the container's text to `out` in chunks (joined once, at the end): its
        pieces with the separators of its depth between them, children in their place."""
        inner = self.encoder.newline(depth + 1)
        opener, closer = ("{", "}") if node.keys is not None else ("[", "]")
        sep = ("," + inner).encode()
        pieces = node.pieces
        out.append((opener + inner).encode())
        start = 0
        for index in sorted(node.children):
            _interleave(pieces[start:index], sep, out)
            if index > start:
                out.append(sep)
            out.append(pieces[index])
            self.render(node.children[index], depth + 1, out)
            if index + 1 < len(pieces):
                out.append(sep)
            start = index + 1
        _interleave(pieces[start:], sep, out)
        out.append((self.encoder.newline(depth) + closer).encode())


def _positions_of_false(flags: list[bool]) -> list[int]:
    """Where `flags` holds False, found at C speed (few, in a long list)."""
    found: list[int] = []
    index = -1
    while True:
        try:
            index = flags.index(False, index + 1)
        except ValueError:
            return found
        found.append(index)


def _interleave(pieces: list[bytes], sep: bytes, out: list[bytes]) -> None:
    """out += pieces with `sep` between them, without copying the pieces' bytes."""
    if pieces:
        mixed = [sep] * (2 * len(pieces) - 1)
        mixed[::2] = pieces
        out += mixed


def _is_plain(value: Any) -> bool:
    """Is `value` made only of what json.loads makes (dicts with str keys, lists, str, int,
    float, bool, None)? Only then is a written document the value its file reads back as, and
    fit to be cached as the file's document (a tuple would read back as a list, a key 7 as "7")."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    if kind is list:
        return all(_is_plain(v) for v in value)
    return kind is str or kind is int or kind is float or kind is bool or value is None


def _encode_pieces(
    value: Any, style: JsonStyle, previous: _Node | None, base: Any
) -> tuple[bytes, _Node | None, bool]:
    """`_dump_bytes(value, style)`, the node that lets the next version reuse its pieces
    (`previous`, a node of a document nobody has changed since, lends its unchanged pieces),
    and whether `value` is plain JSON (`_is_plain`) and may be cached as the file's document.
    `base` is a plain document that `value` may share members with (or None).
    """
    pieces = _PieceEncoder(style)
    try:
        node = pieces.node(value, 0, previous, base)
    except _NotPiecewise:
        node = None
    if node is None:
        return _dump_bytes(value, style), None, _is_plain(value)
    out: list[bytes] = []
    pieces.render(node, 0, out)
    if style.trailing_newline:
        out.append(b"\n")
    return b"".join(out), node, pieces.plain


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

_SPACE_TO_END = re.compile(r"\s*\Z")
_GC_PAUSE_BYTES = 1 << 20


def _parse_checked(raw: bytes, path: Path) -> tuple[Any, int]:
    """The JSON value in `raw` and the number of members its objects hold, or a JsonFileError
    that says where and what is wrong.

    As PHP's json_decode reads it: a document nested as deep as PHP refuses is refused before
    any recursive code sees it; of a duplicate key, the last value wins (in the place of the
    first; `_duplicates_in` finds them). Every error excerpt is cut from text whose secrets are
    already masked (`json_read.masked_excerpt`).
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
            excerpt=json_read.masked_bytes_excerpt(raw, exc.start),
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
    paused = json_read.gc_paused() if len(raw) > _GC_PAUSE_BYTES else contextlib.nullcontext()
    with paused:
        doc = _loads(text, path)
        shape = json_read.shape_of(doc)
        too_deep = json_read.depth_problem(doc, shape)
        if too_deep is not None:
            raise JsonFileError(path, too_deep, hint=_FIX_HINT)
    return doc, shape.members


def _duplicates_in(raw: bytes, members: int) -> list[str]:
    """Where the (parsed, valid) `raw` holds duplicate keys; `members`: its parse's count."""
    if not members or not json_read.may_have_duplicates(raw, members):
        return []
    paused = json_read.gc_paused() if len(raw) > _GC_PAUSE_BYTES else contextlib.nullcontext()
    with paused:
        return json_read.find_duplicate_keys(raw.decode("utf-8"))[1]


def _loads(text: str, path: Path) -> Any:
    """`json.loads` with PHP's refusals (NaN, Infinity) and errors that name the place."""
    try:
        return json.loads(text, parse_constant=json_read.reject_constant)
    except json.JSONDecodeError as exc:
        reason = exc.msg
        if exc.pos >= len(text) or _SPACE_TO_END.match(text, exc.pos):
            reason += " (the file ends early: truncated?)"
        raise JsonFileError(
            path,
            f"invalid JSON: {reason}",
            line=exc.lineno,
            column=exc.colno,
            excerpt=json_read.masked_excerpt(text, exc.pos),
            hint=_FIX_HINT,
        ) from None
    except ValueError as exc:
        raise JsonFileError(path, f"invalid JSON: {exc}", hint=_FIX_HINT) from None
    except RecursionError:
        raise JsonFileError(
            path,
            f"arrays and objects nested thousands of levels deep; PHP's json_decode reads at "
            f"most {json_read.PHP_MAX_DEPTH - 1}",
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
    found = json_read.data_file_problem(st)
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
    limit = json_read.max_file_bytes()
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
            problem = json_read.size_problem(offset, limit)
            raise JsonFileError(_named(path, fd), str(problem), hint=json_read.size_hint())
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


def _recheck_before_read(path: Path, st: os.stat_result) -> None:
    """For a reader about to read `path` (`st`: its stat) from disk: complete an interrupted
    write and write again what PHP reverted first, under LOCK_EX, when there may be any
    (`recent_writes.needs_recheck`: two stats when there is nothing). A file this process may
    not write, or cannot rewrite (bad JSON, duplicate keys), is read as it is."""
    if recent_writes.needs_recheck(path, _stat_key(st)):
        with contextlib.suppress(JsonFileError, OSError):
            recheck_recent_writes(path)


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
