"""Operators: one entity in two files (data/operators.json and agents/data/operators.json).

Both copies are read and merged; a save changes, in each file, only the fields the save changed
(a three-way merge against the merged record). docs/data-layer.md, "The AEIMS files".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.storage.aeims.catalog import (
    _INF,
    OPERATORS_AGENTS,
    OPERATORS_DATA,
    FileSpec,
    Layout,
)
from provisioner.storage.aeims.shapes import _insert_new, _rebuild, _scan, _set_value, _Slot
from provisioner.storage.jsonvalues import clone_json, json_equal
from provisioner.storage.model import PLAINTEXT_PASSWORD_FIELDS, StoredRecord
from provisioner.storage.phpjson.errors import NO_CHANGE

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


class OperatorFiles:
    """Reading and writing the operators' two files: the part of AeimsJsonStore that knows
    operators are one entity in two files (a mixin: the store provides documents and updates)."""

    # Provided by AeimsJsonStore.
    _doc: Callable[[FileSpec], Any]
    _path: Callable[[FileSpec], Path]
    _update: Callable[[FileSpec, Callable[[Any], Any]], Any]
    _index: Callable[[str], Any]
    _agents_writable: Callable[[], bool]

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
        known = self._index("operators").records
        for record in records:
            if not record.placement and record.key in known:
                # A save that brings no placement (the layer's read-modify-write) keeps the
                # record in the files it is in: an agents-only operator stays out of data/.
                record.placement = clone_json(known[record.key].placement)
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
