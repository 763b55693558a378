"""PHP-compatible JSON encoding: the bytes PHP's `json_encode` writes, floats and strings included.

docs/data-layer.md, "JSON files", has the conventions this reproduces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii
from typing import Any

from provisioner.storage.phpjson.style import JsonStyle

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
