"""Operators: one entity in two files (data/operators.json and agents/data/operators.json).

Both copies are read and merged; a save changes, in each file, only the fields the save changed
(a three-way merge against the merged record). docs/data-layer.md, "The AEIMS files".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from provisioner.storage.aeims.catalog import _INF, FileSpec, Layout
from provisioner.storage.aeims.shapes import _Slot
from provisioner.storage.jsonvalues import json_equal

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
