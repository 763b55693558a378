"""Encoding in pieces: a rewrite encodes only the members that changed since the last write.

The members that are the same objects as last time are joined from the previous write's
pieces; the bytes are exactly the whole encoder's (docs/data-layer.md, "JSON files").
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final

from provisioner.storage.phpjson.encode import (
    _EXPONENT,
    _dump_bytes,
    _finish,
    _is_leaf,
    _TextEncoder,
    _to_utf8,
)
from provisioner.storage.phpjson.style import JsonStyle

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
