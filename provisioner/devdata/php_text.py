"""JSON spelled the way the AEIMS files spell it, written in chunks so that size costs no memory.

Three spellings occur in the real files (REPORT.md section 1):
- PHP's `json_encode`: pretty-printed (4 spaces) or compact, slashes escaped or not; the
  layer's own encoder (`provisioner.storage.phpjson.encode.dump_json`) writes exactly that, so
  it is used here for every record, chunk by chunk;
- hand-written files (sites.json, domains.json, chat_rooms.json): lists of scalars on one line,
  amounts typed with two decimals (`10.00`), raw slashes (`hand_written`);
- bcrypt hashes in PHP's `$2y$` form, made reproducible by deriving the salt from the seed.

A streamed document is encoded once with a placeholder where its records go; the records are
then encoded a chunk at a time and spliced in, re-indented for their depth. Raw newlines occur
in JSON text only between tokens (a newline inside a string is written `\\n`), so re-indenting
by replacing newlines is exact: the file is byte for byte what `dump_json` writes for the whole
document (the tests check it).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import IO, Any

import bcrypt

from provisioner.storage.phpjson.encode import dump_json
from provisioner.storage.phpjson.style import JsonStyle

__all__ = [
    "Members",
    "Money",
    "bcrypt_hash",
    "hand_written",
    "members_slot",
    "write_streamed",
]

CHUNK = 2000
_SLOT_MARK = "@@MEMBERS{}@@"
_SLOT_RE = re.compile(r'"@@MEMBERS([0-9]+)@@"(?:: 0)?(?::0)?')
_BCRYPT_TABLE = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)


class Money(float):
    """An amount a person typed with two decimals: `hand_written` spells it `10.00`."""


def bcrypt_hash(password: str, rounds: int, salt: bytes) -> str:
    """PHP's `password_hash` output for `password`, with a given 16-byte salt (reproducible)."""
    encoded = base64.b64encode(salt[:16])[:22].translate(_BCRYPT_TABLE)
    setting = b"$2b$%02d$" % rounds + encoded
    hashed = bcrypt.hashpw(password.encode("utf-8"), setting).decode("ascii")
    return "$2y$" + hashed[4:]


def hand_written(value: Any, indent: int, depth: int = 0) -> str:
    """`value` as the hand-edited AEIMS files lay it out: pretty-printed with `indent` spaces,
    lists of scalars on one line (`["a", "b"]`), `Money` with two decimals, raw slashes and
    raw UTF-8."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = " " * (indent * (depth + 1))
        members = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {hand_written(v, indent, depth + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(members) + "\n" + " " * (indent * depth) + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        if not any(isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(hand_written(v, indent, depth) for v in value) + "]"
        inner = " " * (indent * (depth + 1))
        items = [inner + hand_written(v, indent, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "]"
    if isinstance(value, Money):
        return f"{value:.2f}"
    return json.dumps(value, ensure_ascii=False)


class Members:
    """Records to splice into a streamed document: (key, record) pairs for an object, records
    for a list. `style_of(key)` may give some records another spelling (the agents copy of the
    operators escapes slashes in its older records only)."""

    def __init__(
        self,
        items: Iterable[Any],
        *,
        keyed: bool,
        style_of: Callable[[Any], JsonStyle] | None = None,
    ) -> None:
        self.items = items
        self.keyed = keyed
        self.style_of = style_of


def members_slot(index: int, *, keyed: bool) -> Any:
    """The placeholder container for the `index`-th Members of a document."""
    token = _SLOT_MARK.format(index)
    return {token: 0} if keyed else [token]


def _chunks(members: Members, base: JsonStyle) -> Iterator[tuple[list[Any], JsonStyle]]:
    """Runs of at most CHUNK records sharing one style."""
    it = iter(members.items)
    if members.style_of is None:
        while chunk := list(islice(it, CHUNK)):
            yield chunk, base
        return
    run: list[Any] = []
    run_style = base
    for item in it:
        style = members.style_of(item[0] if members.keyed else item)
        if run and (style != run_style or len(run) >= CHUNK):
            yield run, run_style
            run = []
        run_style = style
        run.append(item)
    if run:
        yield run, run_style


def _write_members(out: IO[str], members: Members, pad: str, style: JsonStyle) -> int:
    """Write the members at the indentation `pad` (their first line's, already written)."""
    written = 0
    pretty = style.indent is not None
    indent = style.indent or 0
    shift = "\n" + " " * (len(pad) - indent)
    between = ",\n" + pad if pretty else ","
    for chunk, chunk_style in _chunks(members, style):
        flat = replace(chunk_style, trailing_newline=False)
        text = dump_json(dict(chunk) if members.keyed else chunk, flat)
        body = text[2 + indent : -2].replace("\n", shift) if pretty else text[1:-1]
        if written:
            out.write(between)
        out.write(body)
        written += len(chunk)
    return written


def write_streamed(
    path: Path, document: Any, members: list[Members], style: JsonStyle
) -> list[int]:
    """Write `document` to `path` in `style`, the i-th `members_slot` holding `members[i]`.

    A slot whose members turn out empty is written as PHP writes an empty array: `[]`.
    Returns how many records each slot received.
    """
    flat = replace(style, trailing_newline=False)
    text = dump_json(document, flat)
    counts = [0] * len(members)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as out:
        pos = 0
        for match in _SLOT_RE.finditer(text):
            index = int(match.group(1))
            line_start = text.rfind("\n", 0, match.start()) + 1
            pad = text[line_start : match.start()]
            probe = iter(members[index].items)
            first = next(probe, None)
            if first is None:
                # The container opened on the previous line: rewrite it as PHP's `[]`.
                opening = text.rfind("{" if members[index].keyed else "[", 0, match.start())
                out.write(text[pos:opening])
                out.write("[]")
                closing = text.index("}" if members[index].keyed else "]", match.end())
                pos = closing + 1
                continue
            out.write(text[pos : match.start()])
            rest = Members(
                _prepend(first, probe),
                keyed=members[index].keyed,
                style_of=members[index].style_of,
            )
            counts[index] = _write_members(out, rest, pad if style.indent else "", style)
            pos = match.end()
        out.write(text[pos:])
        if style.trailing_newline:
            out.write("\n")
    return counts


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
