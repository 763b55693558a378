"""The AEIMS JSON files as records: which file holds each entity, in which shape, and a store
that reads and writes them without losing a field, a key or a quirk.

The PHP application keeps reading and writing these files during the whole migration, so a
write changes only what it must: records keep every field (unknown ones and dangling references
included), file-level keys (`_CREDENTIALS_DOCUMENTATION`, `last_updated`) stay, a record stays
where it was, and a file keeps its shape (wrapper, list or object, `[]` where PHP wrote one).

Shapes found in AEIMS (REPORT.md section 1) and how they read:
- wrapped: `{"customers": {id: rec}, "last_updated": ...}`; the wrapper may hold a list
  (`activities`) or PHP's `[]` for an empty object. Decimal top-level keys holding objects are
  records too: PHP turns a list into an object keyed "0", "1" once a string key is added, which
  is how customer_activity.json got its second record shape.
- flat: `{login: rec}` (accounts, account_locks, domains, username_reservations, rate_limits,
  favorites); the record's key is the file key.
- list: `[rec, ...]` (chat_rooms today, room_invites).

Record keys (`StoredRecord.key`): the entity's id field when the record has one (customer_id,
site_id, ...); for flat files the file key (the login or domain). A record without an id gets a
key derived from where it sits, stable as long as it stays there: the file key inside a wrapper
object (PHP uses the map key as the id); `#<file key>` at a decimal top-level key
(customer_activity's "0".."9" are `#0`..`#9`); `#[<i>]` in a top-level list and
`#<wrapper>[<i>]` in a wrapper list (indexes shift when an earlier record is deleted). A second
record with a key already taken gets `<key>@<where it sits>`, so nothing is hidden.

Placements (`StoredRecord.placement`), for putting a record back where it was:
`{"wrapper": "customers", "file_key": "cust_x", "position": 3}` inside a wrapper object,
`{"wrapper": "activities", "list_index": 2}` inside a wrapper list, `{"file_key": "0",
"position": 4}` at the top level of an object, `{"list_index": 1}` in a top-level list.
`position` is the record's index in its object, so a rewrite keeps the order.

Operators are one entity in two files: data/operators.json (`{"operators": {key: rec}}`, keys
"0", "1", "2", usernames, op_test_NNN) and agents/data/operators.json (the same records
unwrapped; 16 of 26 lack `username` there). Identity is the record's `id` (the file keys differ
from it for 16 records). Both files are read and merged: the union of fields, data/'s values
winning. The placement says where each copy sits and how the copies differ, so that writing
regenerates both files: `{"data_key": "0", "data_position": 0, "agents_key": "0",
"agents_position": 0, "agents_absent": ["username"], "data_absent": [],
"agents_values": {field: value}}` (`*_key` None: that file lacks the operator;
`agents_values`, only when present: fields the agents copy holds with another value). Saving
an operator writes data/ and then agents/ (each under its own lock) and, in each file, changes
only the fields the save changed: a field the save left alone keeps that copy's own value or
absence (a three-way merge against the merged record).
data/test_operator_credentials.json holds plaintext passwords and is not an entity: it is never
read here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, NamedTuple

from provisioner.storage.json_read import gc_paused
from provisioner.storage.jsonfile import (
    NO_CHANGE,
    JsonFileError,
    clone_json,
    duplicate_keys,
    json_equal,
    locked_update,
    locked_update_shared,
    read_json_shared,
)
from provisioner.storage.model import (
    CREDENTIAL_DOC_KEYS,
    ENTITIES,
    PLAINTEXT_PASSWORD_FIELDS,
    StoredRecord,
)
from provisioner.storage.timestamps import format_like, now_php

__all__ = [
    "CATALOG",
    "JUNK_KEYS",
    "NOT_ENTITY_FILES",
    "AeimsJsonStore",
    "EntitySpec",
    "FileSpec",
    "Layout",
    "OperatorDifference",
    "normalize_login",
]

LAST_UPDATED: Final = "last_updated"
# File-level keys that sit next to records and are not records; kept on every write.
JUNK_KEYS: Final = frozenset({LAST_UPDATED}) | CREDENTIAL_DOC_KEYS
# Files in the data folder that are deliberately not entities (plaintext test passwords).
NOT_ENTITY_FILES: Final = ("data/test_operator_credentials.json",)

_INF: Final = float("inf")
_DIGITS = re.compile(r"[0-9]+")
_SYNTHETIC_TOP_KEY = re.compile(r"#([0-9]+)")


class Layout(StrEnum):
    """How records sit in a file that is created (or first written over PHP's `[]`)."""

    WRAPPED = "wrapped"  # {"<wrapper>": {id: rec}} (or a list for wrapper_is_list)
    FLAT = "flat"  # {key: rec}, the key being the record's identity (login, domain)
    KEYED = "keyed"  # {any key: rec}, identity from id_field (agents/data/operators.json)
    LIST = "list"  # [rec, ...]


@dataclass(frozen=True)
class FileSpec:
    """One JSON file and the shape its records take in it."""

    relpath: str
    layout: Layout
    wrapper: str | None = None
    wrapper_is_list: bool = False
    id_field: str | None = None
    # Flat files whose values are not objects (favorites: customer_id -> [operator ids]):
    # the record is {key_field: file key, value_field: the value}.
    value_field: str | None = None
    key_field: str | None = None

    def new_document(self) -> Any:
        """What PHP writes into a new (or `[]`) file before its first record."""
        if self.layout is Layout.WRAPPED:
            assert self.wrapper is not None
            return {self.wrapper: [] if self.wrapper_is_list else {}}
        if self.layout is Layout.LIST:
            return []
        return {}


@dataclass(frozen=True)
class EntitySpec:
    """An entity: its file(s), and why it has the shape it has."""

    entity: str
    files: tuple[FileSpec, ...]
    note: str

    @property
    def file(self) -> FileSpec:
        return self.files[0]


def _wrapped(entity: str, wrapper: str, id_field: str, note: str) -> EntitySpec:
    return EntitySpec(
        entity,
        (FileSpec(f"data/{entity}.json", Layout.WRAPPED, wrapper=wrapper, id_field=id_field),),
        note,
    )


def _flat(entity: str, note: str) -> EntitySpec:
    return EntitySpec(entity, (FileSpec(f"data/{entity}.json", Layout.FLAT),), note)


OPERATORS_DATA: Final = FileSpec(
    "data/operators.json", Layout.WRAPPED, wrapper="operators", id_field="id"
)
OPERATORS_AGENTS: Final = FileSpec("agents/data/operators.json", Layout.KEYED, id_field="id")

CATALOG: Final[dict[str, EntitySpec]] = {
    spec.entity: spec
    for spec in (
        _wrapped("sites", "sites", "site_id", "{sites: {site_id: rec}, last_updated}"),
        _flat("domains", "{domain: rec}, hand-written with 2-space indent (kept)"),
        _wrapped(
            "customers",
            "customers",
            "customer_id",
            "{_CREDENTIALS_DOCUMENTATION, customers: {customer_id: rec}, last_updated}",
        ),
        EntitySpec(
            "operators",
            (OPERATORS_DATA, OPERATORS_AGENTS),
            "data/: {operators: {key: rec}} with keys '0','1',usernames (key != id for 16); "
            "agents/data/: the same records unwrapped; identity is the record's id",
        ),
        _flat("accounts", "{_CREDENTIALS_DOCUMENTATION, login: rec}"),
        _flat("account_locks", "{login: rec}, epoch-int times"),
        _wrapped(
            "chat_rooms",
            "rooms",
            "room_id",
            "a plain list today (kept while it holds records); PHP's DataLayer reads and "
            "writes {rooms: {room_id: rec}}, so an empty file becomes that",
        ),
        _wrapped(
            "room_messages",
            "messages",
            "message_id",
            "[] today; DataLayer's missing saveRoomMessage would follow its pattern: "
            "{messages: {message_id: rec}}",
        ),
        EntitySpec(
            "room_invites",
            (FileSpec("data/room_invites.json", Layout.LIST, id_field="invite_id"),),
            "RoomInviteManager appends to a plain list ($invites[] = ...)",
        ),
        _wrapped("conversations", "conversations", "conversation_id", "compact JSON"),
        _wrapped("messages", "messages", "message_id", "compact JSON"),
        _wrapped("content_items", "items", "content_id", "DataLayer: {items: {content_id}}"),
        _wrapped(
            "content_purchases",
            "purchases",
            "purchase_id",
            "DataLayer: {purchases: {purchase_id}}",
        ),
        EntitySpec(
            "favorites",
            (
                FileSpec(
                    "data/favorites.json",
                    Layout.FLAT,
                    value_field="operator_ids",
                    key_field="customer_id",
                ),
            ),
            "DataLayer: {customer_id: [operator_id, ...]}; after array_filter PHP writes the "
            "list as an object keyed '1', '2' (kept as is)",
        ),
        _wrapped(
            "notifications",
            "notifications",
            "notification_id",
            "DataLayer: {notifications: {notification_id}}",
        ),
        _wrapped(
            "transactions",
            "transactions",
            "transaction_id",
            "absent in AEIMS (referenced by code); DataLayer: {transactions: {transaction_id}}",
        ),
        _wrapped(
            "operator_requests", "requests", "request_id", "DataLayer: {requests: {request_id}}"
        ),
        EntitySpec(
            "customer_activity",
            (
                FileSpec(
                    "data/customer_activity.json",
                    Layout.WRAPPED,
                    wrapper="activities",
                    wrapper_is_list=True,
                    id_field="id",
                ),
            ),
            "hybrid: {activities: [rec with id], last_updated, '0'..'9': rec without id}",
        ),
        _wrapped(
            "id_verifications",
            "verifications",
            "verification_id",
            "{verifications: {verification_id: rec}, last_updated}",
        ),
        _wrapped("verification_codes", "codes", "code", "{codes: {code: rec}, last_updated}"),
        _flat("username_reservations", "{username: rec}"),
        _flat(
            "rate_limits",
            "SecurityManager: {'action:identifier': {attempts, blocked_until}}; [] when empty",
        ),
    )
}
assert set(CATALOG) == set(ENTITIES), "every entity of the model has a file"


# --------------------------------------------------------------------------------------------
# Logins: THE matching rule
# --------------------------------------------------------------------------------------------

_ASCII_WHITESPACE: Final = " \t\n\r\x0b\x0c"
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_login(value: object) -> str | None:
    """A username, email or login as compared by `find_by_login`; None: matches nothing.

    THE rule, identical on the JSON and the PostgreSQL side: ints (operator usernames 0, 1, 2)
    become their decimal string; ASCII whitespace is stripped from both ends; ASCII letters
    are lowercased and nothing else is (PostgreSQL: `lower(btrim(x, E' \\t\\n\\r\\x0b\\x0c')
    COLLATE "C")`); an empty result matches nothing. Booleans, null and other types never match.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip(_ASCII_WHITESPACE).translate(_ASCII_LOWER)
    return text or None


def _normalize_id(value: object) -> str | None:
    """Ids match exactly after stripping ASCII whitespace (they are case-sensitive)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    return value.strip(_ASCII_WHITESPACE) or None


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


def _usable_id(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip(_ASCII_WHITESPACE):
        return value
    return None


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
        found = _usable_id(value.get(fs.id_field))
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
                if type(record_id) is str and record_id.strip(_ASCII_WHITESPACE):
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
        hint="Nothing was changed; fix the file's shape (see aeims_json.CATALOG) and run again",
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
    has_id = fs.id_field is not None and _usable_id(value.get(fs.id_field)) is not None
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
    shared cached document is never changed (see jsonfile.locked_update_shared)."""
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


# --------------------------------------------------------------------------------------------
# Operators: one entity in two files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorDifference:
    """How the two copies of one operator differ (`fields`: present in one copy only, or with
    different values); `data_key`/`agents_key` is None when that file lacks the operator."""

    operator_id: str
    data_key: str | None
    agents_key: str | None
    fields: tuple[str, ...]


def _merge_copies(data_copy: dict[str, Any] | None, agents_copy: dict[str, Any] | None) -> dict:
    """The union of both copies; data/'s values win, agents-only fields come last."""
    merged: dict[str, Any] = dict(data_copy or {})
    for field_name, value in (agents_copy or {}).items():
        if field_name not in merged:
            merged[field_name] = value
    return merged


def _three_way(new: dict[str, Any], base: dict[str, Any], copy: dict[str, Any]) -> dict:
    """One file's copy of an operator after a save: fields the save changed (against the
    merged record it started from) take the new value; unchanged fields keep this copy's
    own value, or stay absent where this copy lacked them."""
    out: dict[str, Any] = {}
    for field_name, value in new.items():
        if field_name in base and json_equal(value, base[field_name]):
            if field_name in copy:
                out[field_name] = copy[field_name]
        else:
            out[field_name] = value
    return out


def _without(data: dict[str, Any], absent: Iterable[str]) -> dict[str, Any]:
    skip = set(absent)
    return {k: v for k, v in data.items() if k not in skip}


def _operator_file_placement(
    placement: dict[str, Any], prefix: str, fs: FileSpec
) -> tuple[bool | None, _Slot | None]:
    """From an operator placement: is the record in this file (None: unknown), and where."""
    if not placement:
        return None, None
    if f"{prefix}_index" in placement:
        index = placement[f"{prefix}_index"]
        if isinstance(index, int) and not isinstance(index, bool):
            container = fs.wrapper if fs.layout is Layout.WRAPPED else None
            return True, _Slot(container, index, index)
    if f"{prefix}_key" not in placement:
        return None, None
    key = placement[f"{prefix}_key"]
    if key is None:
        return False, None
    if not isinstance(key, str):
        return None, None
    position = placement.get(f"{prefix}_position")
    if not isinstance(position, int) or isinstance(position, bool):
        position = _INF
    container = fs.wrapper if fs.layout is Layout.WRAPPED else None
    return True, _Slot(container, key, position)


def _slot_fields(slot: _Slot | None, prefix: str) -> dict[str, Any]:
    if slot is None:
        return {f"{prefix}_key": None}
    if isinstance(slot.index, int):
        return {f"{prefix}_key": None, f"{prefix}_index": slot.index}
    out: dict[str, Any] = {f"{prefix}_key": slot.index}
    if slot.position != _INF:
        out[f"{prefix}_position"] = int(slot.position)
    return out


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


@dataclass
class _Index:
    docs: tuple[Any, ...]  # the shared documents this index was built from (identity check)
    records: dict[str, StoredRecord]  # shared data: clone before handing out
    logins: dict[str, list[tuple[int, int, str]]] | None = None
    # With `logins`: each record's rank in file order, and the rank of the next one appended.
    orders: dict[str, int] | None = None
    next_order: int = 0


_LOGIN_FIELDS: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    # entity -> (field, priority); "#key" is the record key (the file key of accounts)
    "customers": (("username", 1), ("email", 2)),
    "operators": (("username", 1), ("email", 2)),
    "accounts": (("#key", 1), ("email", 2)),
}


def _login_entries(entity: str, record: StoredRecord) -> list[tuple[str, int]]:
    """The (normalized login, priority) pairs `record` is found by; ids under "\\0" + id."""
    out: list[tuple[str, int]] = []
    if entity == "operators":
        record_id = _normalize_id(record.data.get("id"))
        if record_id is not None:
            out.append(("\0" + record_id, 0))
    for field_name, priority in _LOGIN_FIELDS.get(entity, ()):
        raw = record.key if field_name == "#key" else record.data.get(field_name)
        normalized = normalize_login(raw)
        if normalized is not None:
            out.append((normalized, priority))
    return out


class AeimsJsonStore:
    """Records of every AEIMS entity, read from and written to an AEIMS application root.

    `data_dir` is the application root (`PROVISION_DATA_DIR`): it holds `data/*.json` and,
    for operators, `agents/data/operators.json`. A missing entity file reads as empty and is
    created on the first write with the wrapper PHP's DataLayer writes (see CATALOG notes).
    Reads share a parse cache and hand out copies; each write is one locked, atomic
    read-modify-write per file (see jsonfile.locked_update). Writes other than the operators'
    change the shared document copy-on-write (jsonfile.locked_update_shared), and an upsert
    that replaces records where they sit and appends new ones carries the slots (`_Slots`) and
    the read index (`_Index`, logins included) over to the document it wrote, so neither the
    next write nor the next lookup scans every record again.

    Naive timestamps (`last_updated`) are written in `local_tz`, the PHP server's zone.
    """

    def __init__(self, data_dir: Path | str, *, local_tz: tzinfo = UTC) -> None:
        root = Path(data_dir)
        if not (root / "data").is_dir():
            raise ValueError(
                f"{root} is not an AEIMS application root: it has no data/ folder. Point "
                "PROVISION_DATA_DIR at the folder holding data/*.json and agents/data/."
            )
        self.data_dir = root.absolute()
        self.local_tz = local_tz
        self._indexes: dict[str, _Index] = {}
        self._slots: dict[str, _Slots] = {}  # by FileSpec.relpath

    # -- catalog --------------------------------------------------------------------------

    @staticmethod
    def spec(entity: str) -> EntitySpec:
        try:
            return CATALOG[entity]
        except KeyError:
            raise ValueError(f"unknown entity {entity!r}; known: {', '.join(ENTITIES)}") from None

    def file_paths(self, entity: str) -> list[Path]:
        """The file(s) holding `entity` (they may not exist yet)."""
        return [self.data_dir / fs.relpath for fs in self.spec(entity).files]

    def _path(self, fs: FileSpec) -> Path:
        return self.data_dir / fs.relpath

    def _agents_writable(self) -> bool:
        """The agents copy is kept only where the application has an agents/data folder."""
        return self._path(OPERATORS_AGENTS).parent.is_dir()

    # -- reading --------------------------------------------------------------------------

    def _doc(self, fs: FileSpec) -> Any:
        """One file's shared document (None: no file). Each entity reads only its own files,
        so one unreadable file (malformed, a FIFO, too big or too deep) fails the reads of its
        entity and of no other: logins of the other kinds go on."""
        return read_json_shared(self._path(fs), default=None)

    def file_problems(self) -> list[str]:
        """What is wrong with each entity file, one line each, for `data health`: unreadable
        files (named with the position and a secret-masked excerpt), and files holding
        duplicate keys (readable with PHP's value, the last; writes to them are refused)."""
        problems: list[str] = []
        for entity in ENTITIES:
            for fs in self.spec(entity).files:
                path = self._path(fs)
                try:
                    self._doc(fs)
                    duplicates = duplicate_keys(path)
                except (JsonFileError, OSError) as exc:
                    problems.append(str(exc))
                    continue
                if duplicates:
                    problems.append(
                        f"{path}: duplicate keys: {'; '.join(duplicates)}. Reads get the last "
                        "value of each, as PHP's json_decode does; writes to the file are "
                        "refused until the duplicates are removed"
                    )
        return problems

    def _index(self, entity: str) -> _Index:
        spec = self.spec(entity)
        docs = tuple(self._doc(fs) for fs in spec.files)
        cached = self._indexes.get(entity)
        if cached is not None and all(a is b for a, b in zip(cached.docs, docs, strict=True)):
            return cached
        with gc_paused():  # an index of a big file is millions of new objects
            if entity == "operators":
                records = self._operator_records(docs[0], docs[1])
            else:
                records = self._file_records(entity, spec.file, docs[0])
        index = _Index(docs, records)
        self._indexes[entity] = index
        return index

    def _file_records(self, entity: str, fs: FileSpec, doc: Any) -> dict[str, StoredRecord]:
        """The records of a one-file entity by key, remembering their slots for writes."""
        records = {}
        found_list = _scan(fs, doc)
        for found in found_list:
            records[found.key] = StoredRecord(
                entity,
                found.key,
                _record_data(fs, found.slot, found.value) if fs.value_field else found.value,
                found.slot.placement(),
            )
        self._slots[fs.relpath] = _Slots(
            doc, {f.key: f for f in found_list}, _record_after_wrapper(fs, doc)
        )
        return records

    def _slots_for(self, fs: FileSpec, doc: Any) -> _Slots:
        """The slots of the shared `doc`: kept from the last update or read, else scanned."""
        cached = self._slots.get(fs.relpath)
        if cached is not None and cached.doc is doc:
            return cached
        slots = _Slots(doc, {f.key: f for f in _scan(fs, doc)}, _record_after_wrapper(fs, doc))
        self._slots[fs.relpath] = slots
        return slots

    def _advance_index(
        self,
        entity: str,
        fs: FileSpec,
        old_doc: Any,
        new_doc: Any,
        changes: list[tuple[str, Any, _Slot]],
    ) -> None:
        """Carry the read index of `old_doc` over to `new_doc` after an upsert that replaced
        records where they sat and appended new ones at the end of the file order: what a
        full rebuild would give, without one. The old index is not changed (readers may be
        using it)."""
        index = self._indexes.get(entity)
        if index is None or len(index.docs) != 1 or index.docs[0] is not old_doc:
            return
        records = dict(index.records)
        logins = dict(index.logins) if index.logins is not None else None
        orders = dict(index.orders) if index.orders is not None else None
        next_order = index.next_order
        if logins is None or orders is None:
            logins = orders = None  # built on the next find_by_login
        copied: set[str] = set()

        def entries(login: str) -> list[tuple[int, int, str]]:
            assert logins is not None
            if login not in copied:
                logins[login] = list(logins.get(login, ()))
                copied.add(login)
            return logins[login]

        for key, value, slot in changes:
            data = _record_data(fs, slot, value) if fs.value_field else value
            record = StoredRecord(entity, key, data, slot.placement())
            previous = records.get(key)
            records[key] = record
            if logins is None or orders is None:
                continue
            if previous is not None:
                order = orders[key]
                for login, _ in _login_entries(entity, previous):
                    kept = [e for e in entries(login) if e[2] != key]
                    logins[login] = kept
            else:
                order = next_order
                next_order += 1
                orders[key] = order
            for login, priority in _login_entries(entity, record):
                entries(login).append((priority, order, key))
        if logins is not None:
            for login in copied:
                if not logins[login]:
                    del logins[login]
        self._indexes[entity] = _Index((new_doc,), records, logins, orders, next_order)

    @staticmethod
    def _operator_records(data_doc: Any, agents_doc: Any) -> dict[str, StoredRecord]:
        data_found = {f.key: f for f in _scan(OPERATORS_DATA, data_doc)}
        agents_found = {f.key: f for f in _scan(OPERATORS_AGENTS, agents_doc)}
        records: dict[str, StoredRecord] = {}
        order = list(data_found) + [k for k in agents_found if k not in data_found]
        for key in order:
            d = data_found.get(key)
            a = agents_found.get(key)
            d_value = d.value if d is not None else None
            a_value = a.value if a is not None else None
            merged = _merge_copies(d_value, a_value)
            placement: dict[str, Any] = {}
            placement |= _slot_fields(d.slot if d else None, "data")
            placement |= _slot_fields(a.slot if a else None, "agents")
            placement["agents_absent"] = (
                [f for f in merged if f not in a_value] if a_value is not None else []
            )
            placement["data_absent"] = (
                [f for f in merged if f not in d_value] if d_value is not None else []
            )
            if d_value is not None and a_value is not None:
                # The agents copy's own values where both copies have a field but disagree,
                # so a copy rebuilt from nothing comes back as it was (plaintext never kept).
                own = {
                    f: v
                    for f, v in a_value.items()
                    if f in d_value
                    and f not in PLAINTEXT_PASSWORD_FIELDS
                    and not json_equal(d_value[f], v)
                }
                if own:
                    placement["agents_values"] = own
            records[key] = StoredRecord("operators", key, merged, placement)
        return records

    @staticmethod
    def _copy(record: StoredRecord) -> StoredRecord:
        return StoredRecord(
            record.entity, record.key, clone_json(record.data), clone_json(record.placement)
        )

    def load(self, entity: str) -> list[StoredRecord]:
        """Every record of `entity`, in file order (private copies)."""
        return [self._copy(r) for r in self._index(entity).records.values()]

    def load_all(self) -> dict[str, list[StoredRecord]]:
        return {entity: self.load(entity) for entity in ENTITIES}

    def get(self, entity: str, key: str) -> StoredRecord | None:
        record = self._index(entity).records.get(key)
        return None if record is None else self._copy(record)

    def find_by_login(self, entity: str, login: str | int) -> StoredRecord | None:
        """The record a person logging in as `login` is, for customers, operators and accounts.

        THE rule (the PostgreSQL side implements the same):
        - customers match on username or email; operators on id, username or email; accounts on
          the file key (the login) or email.
        - usernames, emails and logins compare after `normalize_login` (ASCII whitespace
          stripped, ASCII letters lowercased, ints as decimal strings: operator username 0
          matches "0"); ids compare exactly after stripping whitespace.
        - several matches: an id match wins, then a username (or login key) match, then an
          email match; among equals, the first in file order (for operators, data/ order).
        """
        found = self.login_candidates(entity, login)
        return found[0] if found else None

    def login_candidates(self, entity: str, login: str | int) -> list[StoredRecord]:
        """Every record `login` matches by find_by_login's rule, each once, in rule order (the
        first is find_by_login's answer): a login may then refuse to guess between several."""
        if entity not in _LOGIN_FIELDS:
            raise ValueError(f"find_by_login works on {', '.join(_LOGIN_FIELDS)}, not {entity!r}")
        index = self._index(entity)
        logins = self._logins(entity, index)
        candidates: list[tuple[int, int, str]] = []
        wanted_id = _normalize_id(login) if entity == "operators" else None
        if wanted_id is not None:
            candidates.extend(logins.get("\0" + wanted_id, ()))
        wanted = normalize_login(login)
        if wanted is not None:
            candidates.extend(logins.get(wanted, ()))
        keys = dict.fromkeys(key for _, _, key in sorted(candidates))
        return [self._copy(index.records[key]) for key in keys]

    @staticmethod
    def _logins(entity: str, index: _Index) -> dict[str, list[tuple[int, int, str]]]:
        """normalized login -> [(priority, file order, key)]; ids under "\\0" + id."""
        if index.logins is None:
            logins: dict[str, list[tuple[int, int, str]]] = {}
            orders: dict[str, int] = {}
            with gc_paused():  # a million customers are millions of new objects
                for order, record in enumerate(index.records.values()):
                    orders[record.key] = order
                    for login, priority in _login_entries(entity, record):
                        logins.setdefault(login, []).append((priority, order, record.key))
            index.orders = orders
            index.next_order = len(orders)
            index.logins = logins
        return index.logins

    def operator_file_differences(self) -> list[OperatorDifference]:
        """Operators whose two copies differ (or that only one file holds), in data/ order."""
        data_found = {f.key: f for f in _scan(OPERATORS_DATA, self._doc(OPERATORS_DATA))}
        agents_found = {f.key: f for f in _scan(OPERATORS_AGENTS, self._doc(OPERATORS_AGENTS))}
        out: list[OperatorDifference] = []
        for key in list(data_found) + [k for k in agents_found if k not in data_found]:
            d = data_found.get(key)
            a = agents_found.get(key)
            d_key = str(d.slot.index) if d else None
            a_key = str(a.slot.index) if a else None
            if d is None or a is None:
                out.append(OperatorDifference(key, d_key, a_key, ()))
                continue
            fields = [
                f
                for f in _merge_copies(d.value, a.value)
                if f not in d.value or f not in a.value or not json_equal(d.value[f], a.value[f])
            ]
            if fields:
                out.append(OperatorDifference(key, d_key, a_key, tuple(fields)))
        return out

    # -- writing --------------------------------------------------------------------------

    def _check(self, entity: str, records: Iterable[StoredRecord]) -> list[StoredRecord]:
        """Records fit for writing, or ValueError naming the first that is not."""
        spec = self.spec(entity)
        fs = spec.file
        checked: list[StoredRecord] = []
        seen: set[str] = set()
        for record in records:
            label = f"{entity} record {record.key!r}"
            if record.entity != entity:
                raise ValueError(f"{label} belongs to {record.entity!r}, not {entity!r}")
            if not isinstance(record.key, str) or not record.key:
                raise ValueError(f"{entity} record has no key ({record.key!r})")
            if record.key in seen:
                raise ValueError(f"{label} appears twice in one write")
            seen.add(record.key)
            if not isinstance(record.data, dict):
                raise ValueError(
                    f"{label}: data must be an object, not {type(record.data).__name__}"
                )
            if fs.layout is Layout.FLAT and record.key in JUNK_KEYS:
                raise ValueError(f"{label}: {record.key!r} is a file-level key, not a login")
            if fs.value_field is not None and not isinstance(
                record.data.get(fs.value_field), list | dict
            ):
                raise ValueError(
                    f"{label}: {fs.value_field!r} must hold the list of the file's value"
                )
            if fs.id_field is not None and fs.layout is not Layout.FLAT:
                record_id = _usable_id(record.data.get(fs.id_field))
                if record_id is not None and not (
                    record.key == record_id or record.key.startswith(record_id + "@")
                ):
                    raise ValueError(
                        f"{label}: its {fs.id_field} is {record_id!r}; the key must match it"
                    )
            checked.append(record)
        return checked

    def _touch(self, doc: Any) -> None:
        """PHP's writers stamp `last_updated`; keep doing it, in the value's own format."""
        if isinstance(doc, dict) and LAST_UPDATED in doc:
            old = doc[LAST_UPDATED]
            try:
                doc[LAST_UPDATED] = format_like(datetime.now(UTC), old, local_tz=self.local_tz)
            except ValueError:
                doc[LAST_UPDATED] = now_php(self.local_tz)

    def _update(self, fs: FileSpec, fn: Callable[[Any], Any]) -> Any:
        """A locked update where `fn` gets a private copy of the document."""
        return locked_update(self._path(fs), fn, default=fs.new_document())

    def _update_shared(self, fs: FileSpec, fn: Callable[[Any], Any]) -> Any:
        """A locked update where `fn` gets the shared document and changes it copy-on-write
        (jsonfile.locked_update_shared): for changes to a few records of a big file."""
        return locked_update_shared(self._path(fs), fn, default=fs.new_document())

    def upsert(self, entity: str, records: list[StoredRecord]) -> None:
        """Insert or replace `records` in one locked read-modify-write (per file).

        A record already in the file (same key) is replaced where it sits; a new one goes
        where its placement says if that is free, else at the end in the file's shape. The
        records' placements are updated to where they now are.
        """
        checked = self._check(entity, records)
        if not checked:
            return
        if entity == "operators":
            self._upsert_operators(checked)
            return
        fs = self.spec(entity).file
        path = self._path(fs)
        # Private copies, made once: they become part of the shared cached document.
        wanted = [(r, _file_value(fs, r), _hint(fs, r.placement)) for r in checked]
        placements: dict[str, dict[str, Any]] = {}
        outcome: list[Any] = []  # [old doc, new doc, new slots or None, changes]

        def apply(doc: Any) -> Any:
            placements.clear()
            outcome.clear()
            slots = self._slots_for(fs, doc)
            plan: list[tuple[StoredRecord, Any, _Slot | None, _Found | None]] = []
            for record, value, hint in wanted:
                found = slots.found.get(record.key)
                if found is None:
                    plan.append((record, value, hint, None))
                    continue
                placements[record.key] = found.slot.placement()
                if not json_equal(found.value, value):
                    plan.append((record, value, hint, found))
            if not plan:
                return NO_CHANGE
            new_doc = _copied_for_write(fs, doc)
            found_now = dict(slots.found)
            # Whether found_now is what a scan of new_doc gives: records replaced where they
            # sit, new ones appended at the end of the file order, every key its natural one.
            exact = True
            after_wrapper = slots.record_after_wrapper
            changes: list[tuple[str, Any, _Slot]] = []
            for record, value, hint, found in plan:
                if found is not None:
                    slot = found.slot
                    _set_value(new_doc, slot, value)
                else:
                    before, wrapper = new_doc, _wrapper_of(fs, new_doc)
                    new_doc, slot = _insert_new(fs, path, new_doc, record.key, value, hint)
                    placements[record.key] = slot.placement()
                    if new_doc is not before:
                        exact = False  # PHP's `[]` became the DataLayer's document
                    elif slot.container is None:
                        # Appended to the top level: last in file order, after any wrapper.
                        after_wrapper = after_wrapper or wrapper is not None
                    elif (
                        wrapper is None or _wrapper_of(fs, new_doc) is not wrapper or after_wrapper
                    ):
                        # A new wrapper, or a top-level record follows it: not last in order.
                        exact = False
                if _key_for(fs, value, slot) != record.key or not _counts_as_record(
                    fs, new_doc, slot, value
                ):
                    exact = False
                found_now[record.key] = _Found(record.key, value, slot)
                changes.append((record.key, value, slot))
            self._touch(new_doc)
            slots_now = _Slots(new_doc, found_now, after_wrapper) if exact else None
            outcome[:] = [doc, new_doc, slots_now, changes]
            return new_doc

        self._update_shared(fs, apply)
        for record in checked:
            record.placement = placements[record.key]
        if outcome and outcome[2] is not None:
            old_doc, new_doc, slots_now, changes = outcome
            current = self._slots.get(fs.relpath)
            if current is None or current.doc is old_doc:  # not behind another thread's write
                self._slots[fs.relpath] = slots_now
            self._advance_index(entity, fs, old_doc, new_doc, changes)

    def delete(self, entity: str, key: str) -> bool:
        """Remove the record with `key`; False when there is none."""
        spec = self.spec(entity)
        deleted = False
        for fs in spec.files:
            if fs is OPERATORS_AGENTS and not self._agents_writable():
                continue

            def apply(doc: Any, fs: FileSpec = fs) -> Any:
                found = self._slots_for(fs, doc).found.get(key)
                if found is None:
                    return NO_CHANGE
                new_doc = _copied_for_write(fs, doc)
                _remove_value(new_doc, found.slot)
                self._touch(new_doc)
                return new_doc

            if self._update_shared(fs, apply) is not NO_CHANGE:
                deleted = True
        return deleted

    def replace_all(self, entity: str, records: list[StoredRecord]) -> None:
        """Make the file(s) hold exactly `records` (rolling back from PostgreSQL).

        Records go back to their placements, in order; records without one are appended in
        the file's shape. File-level keys stay; `last_updated` is stamped when something
        changed. A file whose records already equal `records` is not written at all.
        """
        checked = self._check(entity, records)
        if entity == "operators":
            self._replace_operators(checked)
            return
        fs = self.spec(entity).file
        path = self._path(fs)
        items = [(r.key, _file_value(fs, r), _hint(fs, r.placement)) for r in checked]

        def apply(doc: Any) -> Any:
            rebuilt = _rebuild(fs, path, clone_json(doc), items)  # doc itself stays unchanged
            if json_equal(rebuilt, doc):
                return NO_CHANGE
            self._touch(rebuilt)
            return rebuilt

        self._update_shared(fs, apply)

    # -- operators ------------------------------------------------------------------------

    def _operator_copy(
        self,
        record: StoredRecord,
        prefix: str,
        current_copy: dict[str, Any] | None,
        base: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """This file's copy of `record`: three-way against the file's current copy when it has
        one, else the record minus the fields the placement says this file lacks."""
        if current_copy is not None and base is not None:
            return _three_way(record.data, base, current_copy)
        absent = record.placement.get(f"{prefix}_absent") or []
        if not isinstance(absent, list):
            absent = []
        copy = clone_json(_without(record.data, absent))
        own = record.placement.get(f"{prefix}_values")
        if isinstance(own, dict):
            for field_name, value in own.items():
                if field_name in copy:
                    copy[field_name] = clone_json(value)
        return copy

    def _upsert_operators(self, records: list[StoredRecord]) -> None:
        data_before: dict[str, dict[str, Any]] = {}
        agents_now = {f.key: f.value for f in _scan(OPERATORS_AGENTS, self._doc(OPERATORS_AGENTS))}
        new_slots: dict[str, dict[str, Any]] = {}

        def apply_data(doc: Any) -> Any:
            data_before.clear()
            new_slots.clear()
            found = {f.key: f for f in _scan(OPERATORS_DATA, doc)}
            changed = False
            for record in records:
                current = found.get(record.key)
                present, hint = _operator_file_placement(record.placement, "data", OPERATORS_DATA)
                if current is not None:
                    data_before[record.key] = clone_json(current.value)
                    base = _merge_copies(current.value, agents_now.get(record.key))
                    copy = self._operator_copy(record, "data", current.value, base)
                    new_slots[record.key] = _slot_fields(current.slot, "data")
                    if not json_equal(copy, current.value):
                        _set_value(doc, current.slot, copy)
                        changed = True
                elif present is False:
                    new_slots[record.key] = _slot_fields(None, "data")
                else:
                    copy = self._operator_copy(record, "data", None, None)
                    wanted = (
                        hint
                        if hint is not None
                        else _Slot(OPERATORS_DATA.wrapper, record.key, _INF)
                    )
                    doc, slot = _insert_new(
                        OPERATORS_DATA, self._path(OPERATORS_DATA), doc, record.key, copy, wanted
                    )
                    new_slots[record.key] = _slot_fields(slot, "data")
                    changed = True
            return doc if changed else NO_CHANGE

        self._update(OPERATORS_DATA, apply_data)
        if self._agents_writable():

            def apply_agents(doc: Any) -> Any:
                found = {f.key: f for f in _scan(OPERATORS_AGENTS, doc)}
                changed = False
                for record in records:
                    current = found.get(record.key)
                    present, hint = _operator_file_placement(
                        record.placement, "agents", OPERATORS_AGENTS
                    )
                    if current is not None:
                        base = _merge_copies(data_before.get(record.key), current.value)
                        copy = self._operator_copy(record, "agents", current.value, base)
                        new_slots[record.key] |= _slot_fields(current.slot, "agents")
                        if not json_equal(copy, current.value):
                            _set_value(doc, current.slot, copy)
                            changed = True
                    elif present is False:
                        new_slots[record.key] |= _slot_fields(None, "agents")
                    else:
                        copy = self._operator_copy(record, "agents", None, None)
                        doc, slot = _insert_new(
                            OPERATORS_AGENTS,
                            self._path(OPERATORS_AGENTS),
                            doc,
                            record.key,
                            copy,
                            hint,
                        )
                        new_slots[record.key] |= _slot_fields(slot, "agents")
                        changed = True
                return doc if changed else NO_CHANGE

            self._update(OPERATORS_AGENTS, apply_agents)
        # Where each record now sits and how its copies now differ, read back from the files.
        now = self._index("operators").records
        for record in records:
            if record.key in now:
                record.placement = clone_json(now[record.key].placement)
            else:
                record.placement = {**record.placement, **new_slots.get(record.key, {})}

    def _replace_operators(self, records: list[StoredRecord]) -> None:
        data_before: dict[str, dict[str, Any]] = {}
        agents_now = {f.key: f.value for f in _scan(OPERATORS_AGENTS, self._doc(OPERATORS_AGENTS))}

        def items_for(
            fs: FileSpec, prefix: str, doc: Any, other: dict[str, Any]
        ) -> list[tuple[str, Any, _Slot | None]]:
            found = {f.key: f for f in _scan(fs, doc)}
            items: list[tuple[str, Any, _Slot | None]] = []
            for record in records:
                present, hint = _operator_file_placement(record.placement, prefix, fs)
                current = found.get(record.key)
                if present is False and current is None:
                    continue
                if current is not None:
                    if prefix == "data":
                        base = _merge_copies(current.value, other.get(record.key))
                    else:
                        base = _merge_copies(other.get(record.key), current.value)
                    copy = self._operator_copy(record, prefix, current.value, base)
                    if hint is None:
                        hint = current.slot
                else:
                    copy = self._operator_copy(record, prefix, None, None)
                    if hint is None and fs.layout is Layout.WRAPPED:
                        hint = _Slot(fs.wrapper, record.key, _INF)
                items.append((record.key, copy, hint))
            return items

        def apply_data(doc: Any) -> Any:
            data_before.clear()
            data_before.update({f.key: clone_json(f.value) for f in _scan(OPERATORS_DATA, doc)})
            rebuilt = _rebuild(
                OPERATORS_DATA,
                self._path(OPERATORS_DATA),
                clone_json(doc),
                items_for(OPERATORS_DATA, "data", doc, agents_now),
            )
            return NO_CHANGE if json_equal(rebuilt, doc) else rebuilt

        self._update(OPERATORS_DATA, apply_data)
        if self._agents_writable():

            def apply_agents(doc: Any) -> Any:
                rebuilt = _rebuild(
                    OPERATORS_AGENTS,
                    self._path(OPERATORS_AGENTS),
                    clone_json(doc),
                    items_for(OPERATORS_AGENTS, "agents", doc, data_before),
                )
                return NO_CHANGE if json_equal(rebuilt, doc) else rebuilt

            self._update(OPERATORS_AGENTS, apply_agents)
