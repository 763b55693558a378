"""Finding, placing and rebuilding records in one document, whatever the file's shape.

Record keys and placements (where a record sits, to put it back there) are described in
docs/data-layer.md, "The AEIMS files".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from provisioner.storage.aeims.catalog import (
    _DIGITS,
    _INF,
    _SYNTHETIC_TOP_KEY,
    JUNK_KEYS,
    FileSpec,
    Layout,
)
from provisioner.storage.jsonvalues import ASCII_WHITESPACE, clone_json, usable_id
from provisioner.storage.model import (
    StoredRecord,
)
from provisioner.storage.phpjson.errors import JsonFileError

# --------------------------------------------------------------------------------------------
# The generic engine: finding, placing and rebuilding records in one document
# --------------------------------------------------------------------------------------------


class _Slot(NamedTuple):
    """Where a value sits: in the top level (container None) or in the wrapper."""

    container: str | None
    index: str | int  # object key, or list index
    position: float  # order within its container (the index in an object)

    def placement(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.container is not None:
            out["wrapper"] = self.container
        if isinstance(self.index, int):
            out["list_index"] = self.index
        else:
            out["file_key"] = self.index
            if self.position != _INF:
                out["position"] = int(self.position)
        return out


class _Found(NamedTuple):
    key: str
    value: Any  # the value in the document (not a copy)
    slot: _Slot


def _is_record_value(fs: FileSpec, value: Any) -> bool:
    if fs.value_field is not None:
        return isinstance(value, list | dict)
    return isinstance(value, dict)


def _is_top_record(fs: FileSpec, key: str, value: Any) -> bool:
    """Is this top-level entry of an object a record (rather than a wrapper or junk)?"""
    if fs.layout in (Layout.FLAT, Layout.KEYED):
        return key not in JUNK_KEYS and _is_record_value(fs, value)
    return key != fs.wrapper and bool(_DIGITS.fullmatch(key)) and isinstance(value, dict)


def _key_for(fs: FileSpec, value: Any, slot: _Slot) -> str:
    if fs.layout is Layout.FLAT and slot.container is None and isinstance(slot.index, str):
        return slot.index
    if fs.id_field is not None and isinstance(value, dict):
        found = usable_id(value.get(fs.id_field))
        if found is not None:
            return found
    if isinstance(slot.index, str):
        if slot.container is not None or fs.layout is Layout.KEYED:
            return slot.index
        return f"#{slot.index}"
    if slot.container is None:
        return f"#[{slot.index}]"
    return f"#{slot.container}[{slot.index}]"


def _where(slot: _Slot) -> str:
    inner = f"[{slot.index}]" if isinstance(slot.index, int) else str(slot.index)
    return inner if slot.container is None else f"{slot.container}/{inner}"


def _iter_slots(fs: FileSpec, doc: Any) -> Iterator[tuple[_Slot, Any]]:
    """Every record value in `doc`, in file order, with its slot."""
    if isinstance(doc, list):
        for i, value in enumerate(doc):
            if _is_record_value(fs, value):
                yield _Slot(None, i, i), value
        return
    if not isinstance(doc, dict):
        return
    for pos, (key, value) in enumerate(doc.items()):
        if fs.wrapper is not None and key == fs.wrapper:
            if isinstance(value, dict):
                for inner_pos, (inner_key, inner) in enumerate(value.items()):
                    if _is_record_value(fs, inner):
                        yield _Slot(key, inner_key, inner_pos), inner
            elif isinstance(value, list):
                for i, inner in enumerate(value):
                    if _is_record_value(fs, inner):
                        yield _Slot(key, i, i), inner
        elif _is_top_record(fs, key, value):
            yield _Slot(None, key, pos), value


def _scan(fs: FileSpec, doc: Any) -> list[_Found]:
    """The records of one document with their keys (unique; see the module docstring)."""
    found: list[_Found] = []
    seen: set[str] = set()
    add = found.append
    id_field = fs.id_field
    wrapper = fs.wrapper
    if (
        id_field is not None
        and fs.value_field is None
        and isinstance(doc, dict)
        and type(doc.get(wrapper)) is dict
    ):
        # The common big case (messages, customers): a wrapper object of records with ids.
        # Same result as the general loop below, without its per-record overhead.
        for pos, (key, value) in enumerate(doc.items()):
            if key != wrapper:
                if _is_top_record(fs, key, value):
                    top_slot = _Slot(None, key, pos)
                    add(_Found(_key_for(fs, value, top_slot), value, top_slot))
                continue
            new = tuple.__new__  # NamedTuple's own __new__ is a Python-level call
            for inner_pos, (inner_key, inner) in enumerate(value.items()):
                if type(inner) is not dict:
                    continue
                record_id = inner.get(id_field)
                slot = new(_Slot, (wrapper, inner_key, inner_pos))
                if type(record_id) is str and record_id.strip(ASCII_WHITESPACE):
                    add(new(_Found, (record_id, inner, slot)))
                else:
                    add(_Found(_key_for(fs, inner, slot), inner, slot))
        if len({f.key for f in found}) == len(found):
            return found
        found = []
    for slot, value in _iter_slots(fs, doc):
        key = _key_for(fs, value, slot)
        if key in seen:
            key = f"{key}@{_where(slot)}"
        seen.add(key)
        add(_Found(key, value, slot))
    return found


def _record_data(fs: FileSpec, slot: _Slot, value: Any) -> dict[str, Any]:
    if fs.value_field is not None:
        assert fs.key_field is not None
        return {fs.key_field: slot.index, fs.value_field: clone_json(value)}
    return clone_json(value)


def _file_value(fs: FileSpec, record: StoredRecord) -> Any:
    if fs.value_field is not None:
        return clone_json(record.data[fs.value_field])
    return clone_json(record.data)


def _hint(fs: FileSpec, placement: dict[str, Any] | None) -> _Slot | None:
    """The slot a placement asks for, when it fits this file's shape; None otherwise."""
    if not placement:
        return None
    container = placement.get("wrapper")
    if container is not None and container != fs.wrapper:
        return None
    if "list_index" in placement:
        index = placement["list_index"]
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            return _Slot(container, index, index)
        return None
    file_key = placement.get("file_key")
    if not isinstance(file_key, str) or file_key in JUNK_KEYS:
        return None
    position = placement.get("position")
    if not isinstance(position, int) or isinstance(position, bool):
        position = _INF
    if (
        container is None
        and fs.layout in (Layout.WRAPPED, Layout.LIST)
        and not _DIGITS.fullmatch(file_key)
    ):
        return None  # only decimal top-level keys hold records in these files
    return _Slot(container, file_key, position)


def _free_key(container: dict[str, Any], wanted: str) -> str:
    """`wanted`, or `wanted~2`, `wanted~3`... when taken: an insert never overwrites."""
    if wanted not in container:
        return wanted
    n = 2
    while f"{wanted}~{n}" in container:
        n += 1
    return f"{wanted}~{n}"


def _next_numeric_key(container: dict[str, Any]) -> str:
    """The key PHP's `$array[] = ...` uses on an object keyed by numbers: max + 1."""
    numbers = [int(k) for k in container if _DIGITS.fullmatch(k)]
    return str(max(numbers) + 1) if numbers else "0"


def _shape_error(path: Path, what: str) -> JsonFileError:
    return JsonFileError(
        path,
        f"unexpected shape: {what}",
        hint="Nothing was changed; fix the file's shape (see aeims/catalog.py) and run again",
    )


def _insert_new(
    fs: FileSpec,
    path: Path,
    doc: Any,
    key: str,
    value: Any,
    hint: _Slot | None,
) -> tuple[Any, _Slot]:
    """Put a new record into `doc` in the file's shape; returns the (maybe new) doc and slot."""
    if isinstance(doc, list):
        wants_top_list = hint is not None and hint.container is None and isinstance(hint.index, int)
        if doc or fs.layout is Layout.LIST or wants_top_list:
            doc.append(value)
            return doc, _Slot(None, len(doc) - 1, len(doc) - 1)
        doc = fs.new_document()  # PHP's `[]` where the DataLayer writes an object
    if not isinstance(doc, dict):
        raise _shape_error(path, f"the file holds a {type(doc).__name__}, not an object or list")
    if fs.layout is Layout.FLAT:
        if key in doc:
            raise _shape_error(path, f"key {key!r} holds a non-record value; not overwriting it")
        doc[key] = value
        return doc, _Slot(None, key, len(doc) - 1)
    if fs.layout is Layout.KEYED:
        wanted = (
            hint.index if hint and hint.container is None and isinstance(hint.index, str) else key
        )
        file_key = _free_key(doc, str(wanted))
        doc[file_key] = value
        return doc, _Slot(None, file_key, len(doc) - 1)
    has_id = fs.id_field is not None and usable_id(value.get(fs.id_field)) is not None
    top_key: str | None = None
    if hint is not None and hint.container is None and isinstance(hint.index, str):
        top_key = hint.index
    elif hint is None and not has_id and (match := _SYNTHETIC_TOP_KEY.fullmatch(key)):
        top_key = match.group(1)
    elif fs.layout is Layout.LIST:
        top_key = _next_numeric_key(doc)
    if top_key is not None:
        if top_key in doc or top_key == fs.wrapper:
            top_key = _next_numeric_key(doc)
        doc[top_key] = value
        return doc, _Slot(None, top_key, len(doc) - 1)
    assert fs.wrapper is not None
    wants_list = (
        hint.container == fs.wrapper and isinstance(hint.index, int)
        if hint is not None
        else fs.wrapper_is_list
    )
    container = doc.get(fs.wrapper)
    if container is None and fs.wrapper not in doc:
        container = [] if wants_list else {}
        doc[fs.wrapper] = container
    elif container == [] and not wants_list:
        container = {}
        doc[fs.wrapper] = container  # PHP's `[]` where an object is meant
    if isinstance(container, list):
        container.append(value)
        return doc, _Slot(fs.wrapper, len(container) - 1, len(container) - 1)
    if isinstance(container, dict):
        wanted = (
            hint.index
            if hint is not None and hint.container == fs.wrapper and isinstance(hint.index, str)
            else key
        )
        file_key = _free_key(container, str(wanted))
        container[file_key] = value
        return doc, _Slot(fs.wrapper, file_key, len(container) - 1)
    raise _shape_error(path, f"{fs.wrapper!r} holds a {type(container).__name__}")


def _ordered(entries: list[tuple[float, int, int, Any, Any]]) -> list[tuple[Any, Any]]:
    """Entries sorted by (position, kept-before-placed, arrival): key/value pairs."""
    return [(k, v) for _, _, _, k, v in sorted(entries, key=lambda e: (e[0], e[1], e[2]))]


def _rebuild(
    fs: FileSpec,
    path: Path,
    current: Any,
    items: list[tuple[str, Any, _Slot | None]],
) -> Any:
    """`current` with its records replaced by `items` (key, file value, hint): file-level keys
    and non-record values stay where they are, records go to their placements in order, and
    records without a usable placement are appended as new ones."""
    unplaced: list[tuple[str, Any, _Slot | None]] = []
    seq = 0
    if isinstance(current, list):
        wants_top_list = any(
            h is not None and h.container is None and isinstance(h.index, int) for _, _, h in items
        )
        if current or fs.layout is Layout.LIST or wants_top_list or not items:
            entries = [
                (float(i), 0, i, None, v)
                for i, v in enumerate(current)
                if not _is_record_value(fs, v)
            ]
            for key, value, hint in items:
                if hint is not None and hint.container is None and isinstance(hint.index, int):
                    seq += 1
                    entries.append((hint.position, 1, seq, None, value))
                else:
                    unplaced.append((key, value, hint))
            doc: Any = [v for _, v in _ordered(entries)]
            for key, value, hint in unplaced:
                doc, _ = _insert_new(fs, path, doc, key, value, hint)
            return doc
        current = fs.new_document()
    if not isinstance(current, dict):
        raise _shape_error(path, f"the file holds a {type(current).__name__}")

    top: list[tuple[float, int, int, Any, Any]] = []
    for pos, (key, value) in enumerate(current.items()):
        if fs.wrapper is not None and key == fs.wrapper:
            top.append((float(pos), 0, pos, key, value))  # rebuilt below
        elif not _is_top_record(fs, key, value):
            top.append((float(pos), 0, pos, key, value))
    taken = {k for _, _, _, k, _ in top}

    wrapper_entries: list[tuple[float, int, int, Any, Any]] = []
    wrapper_taken: set[Any] = set()
    old_container = current.get(fs.wrapper) if fs.wrapper is not None else None
    if isinstance(old_container, dict):
        for pos, (key, value) in enumerate(old_container.items()):
            if not _is_record_value(fs, value):
                wrapper_entries.append((float(pos), 0, pos, key, value))
                wrapper_taken.add(key)
    elif isinstance(old_container, list):
        for i, value in enumerate(old_container):
            if not _is_record_value(fs, value):
                wrapper_entries.append((float(i), 0, i, None, value))
    junk_only_list = isinstance(old_container, list) and bool(wrapper_entries)
    wrapper_kind: type | None = None
    if isinstance(old_container, dict) and old_container:
        wrapper_kind = dict
    elif junk_only_list:
        wrapper_kind = list
    else:
        hinted = [h for _, _, h in items if h is not None and h.container == fs.wrapper]
        if any(isinstance(h.index, int) for h in hinted):
            wrapper_kind = list
        elif hinted:
            wrapper_kind = dict
        elif isinstance(old_container, dict | list):
            wrapper_kind = type(old_container)

    for key, value, hint in items:
        seq += 1
        if fs.layout is Layout.FLAT:
            if key in taken:
                raise _shape_error(path, f"key {key!r} holds a non-record value")
            position = hint.position if hint is not None and hint.container is None else _INF
            top.append((position, 1, seq, key, value))
            taken.add(key)
            continue
        if hint is None:
            unplaced.append((key, value, hint))
        elif hint.container is None and isinstance(hint.index, str) and hint.index not in taken:
            top.append((hint.position, 1, seq, hint.index, value))
            taken.add(hint.index)
        elif hint.container is not None and wrapper_kind is dict and isinstance(hint.index, str):
            if hint.index in wrapper_taken:
                unplaced.append((key, value, hint))
            else:
                wrapper_entries.append((hint.position, 1, seq, hint.index, value))
                wrapper_taken.add(hint.index)
        elif hint.container is not None and wrapper_kind is list and isinstance(hint.index, int):
            wrapper_entries.append((hint.position, 1, seq, None, value))
        else:
            unplaced.append((key, value, hint))

    doc = dict(_ordered(top))
    if fs.wrapper is not None and (wrapper_kind is not None or fs.wrapper in current):
        if wrapper_kind is list:
            doc[fs.wrapper] = [v for _, v in _ordered(wrapper_entries)]
        elif wrapper_kind is dict:
            rebuilt = dict(_ordered(wrapper_entries))
            # PHP's `[]` for an empty object stays `[]` when nothing goes in.
            doc[fs.wrapper] = rebuilt if rebuilt or old_container != [] else []
        else:
            doc[fs.wrapper] = old_container
    for key, value, hint in unplaced:
        doc, _ = _insert_new(fs, path, doc, key, value, hint)
    return doc


def _set_value(doc: Any, slot: _Slot, value: Any) -> None:
    container = doc if slot.container is None else doc[slot.container]
    container[slot.index] = value


def _remove_value(doc: Any, slot: _Slot) -> None:
    container = doc if slot.container is None else doc[slot.container]
    if isinstance(container, list):
        assert isinstance(slot.index, int)
        container.pop(slot.index)
    else:
        del container[slot.index]


def _copied_for_write(fs: FileSpec, doc: Any) -> Any:
    """`doc` with a new top level and a new wrapper container, the records themselves shared:
    all that `_set_value`, `_insert_new`, `_remove_value` and `_touch` change, so that the
    shared cached document is never changed (see files.locked_update_shared)."""
    if type(doc) is list:
        return list(doc)
    if type(doc) is not dict:
        return doc  # not a container: _insert_new reports the shape
    copy = dict(doc)
    if fs.wrapper is not None:
        inner = copy.get(fs.wrapper)
        if type(inner) is dict:
            copy[fs.wrapper] = dict(inner)
        elif type(inner) is list:
            copy[fs.wrapper] = list(inner)
    return copy


def _wrapper_of(fs: FileSpec, doc: Any) -> Any:
    if fs.wrapper is None or not isinstance(doc, dict):
        return None
    return doc.get(fs.wrapper)


def _record_after_wrapper(fs: FileSpec, doc: Any) -> bool:
    """Does a top-level record sit after the wrapper (customer_activity's "0".."9")? Then a
    record added to the wrapper is not the last one in file order."""
    if fs.wrapper is None or not isinstance(doc, dict) or fs.wrapper not in doc:
        return False
    items = iter(doc.items())
    for key, _ in items:
        if key == fs.wrapper:
            break
    return any(_is_top_record(fs, key, value) for key, value in items)


def _counts_as_record(fs: FileSpec, doc: Any, slot: _Slot, value: Any) -> bool:
    """Would a scan of `doc` find `value` at `slot` as a record?"""
    if slot.container is None and isinstance(doc, dict):
        return isinstance(slot.index, str) and _is_top_record(fs, slot.index, value)
    return _is_record_value(fs, value)


@dataclass
class _Slots:
    """Where each record of one shared document sits: `_scan`'s result as a dict (file order),
    kept up to date by upserts so that an update does not scan every record."""

    doc: Any  # the shared document described (identity check)
    found: dict[str, _Found]
    record_after_wrapper: bool
