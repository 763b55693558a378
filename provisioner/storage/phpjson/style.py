"""The style a JSON file is written in (indent, escaped slashes and unicode, final newline).

PHP keeps reading the files, so a rewrite keeps each file's own style (docs/data-layer.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

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
