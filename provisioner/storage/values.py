"""Values neither store can hold, refused before anything is written.

A record is written to the JSON files the PHP application reads and to PostgreSQL. A value one
of them cannot hold must never reach either: PHP's `json_decode` rejects a whole file that holds
one lone surrogate (`"\\ud800"`), so every PHP login would fail; PostgreSQL rejects NUL
characters and cannot give back a float whose JSON form has an exponent; PHP turns an integer
past 64 bits into a float; nobody can write NaN or Infinity as JSON; PHP refuses a document
nested deeper than 512 levels. `check_records` runs on every write path of the data layer
before the first byte is written, so a refused write changes nothing anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from provisioner.storage.model import StoredRecord

# PHP's integers are 64-bit; json_decode turns anything larger into a float.
_PHP_INT_MIN = -(2**63)
_PHP_INT_MAX = 2**63 - 1
# json_decode's default depth is 512 for the whole file; records sit two levels down (the file's
# object, then the wrapper such as {"customers": ...}), so a record may nest this deep.
MAX_RECORD_DEPTH = 500
# Field names pg/rows.py keeps for itself in a row's `extra`.
_RESERVED_TOP_LEVEL = frozenset({"__orig__", "__absent__", "__order__"})


class UnstorableValue(ValueError):
    """A record holds a value the JSON files or PostgreSQL cannot store; nothing was written."""

    def __init__(self, entity: str, key: str, path: str, reason: str) -> None:
        self.entity = entity
        self.key = key
        self.path = path
        self.reason = reason
        where = f"{entity} record {key!r}" + (f" at {path}" if path else "")
        super().__init__(f"{where}: {reason}; nothing was written")


def _text_problem(text: str) -> str | None:
    """Why a string cannot be stored, or None. Plain ASCII without NUL is the fast path."""
    if "\x00" in text:
        return "a NUL character (PostgreSQL rejects it)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return (
                "a lone surrogate (not valid Unicode: PHP's json_decode would reject the "
                "whole file)"
            )
    return None


def _number_problem(value: int | float) -> str | None:
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value!r} (JSON has no NaN or Infinity)"
        if "e+" in repr(value):
            return (
                f"the float {value!r} (PostgreSQL cannot give it back as a float; store it "
                "as a string or an int)"
            )
        return None
    if not _PHP_INT_MIN <= value <= _PHP_INT_MAX:
        return f"the integer {value} (past 64 bits: PHP would read it as a float)"
    return None


def _path(parent: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{parent}[{name}]"
    return f"{parent}.{name}" if parent else name


def _problem(value: Any, where: str, depth: int) -> tuple[str, str] | None:
    """(path, reason) of the first unstorable value under `value`, or None."""
    kind = type(value)
    if kind is str:
        reason = _text_problem(value)
        return None if reason is None else (where, reason)
    if value is None or kind is bool:
        return None
    if kind is int or kind is float:
        reason = _number_problem(value)
        return None if reason is None else (where, reason)
    if kind is dict or kind is list:
        if depth > MAX_RECORD_DEPTH:
            shown = where if len(where) <= 60 else where[:60] + "..."
            return shown, f"nested deeper than {MAX_RECORD_DEPTH} levels (PHP's json_decode limit)"
        items = value.items() if kind is dict else enumerate(value)
        for name, item in items:
            if kind is dict:
                if type(name) is not str:
                    return where, f"the field name {name!r} is not a string"
                reason = _text_problem(name)
                if reason is not None:
                    return where, f"the field name {name!r} holds {reason}"
            found = _problem(item, _path(where, name), depth + 1)
            if found is not None:
                return found
        return None
    return where, f"a {kind.__name__}, which is not a JSON value"


def check_record(record: StoredRecord) -> None:
    """UnstorableValue naming the entity, the record, the field path and why, or nothing."""
    key = record.key
    if not isinstance(key, str) or not key:
        raise UnstorableValue(record.entity, str(key), "", "the key must be a non-empty string")
    reason = _text_problem(key)
    if reason is not None:
        raise UnstorableValue(record.entity, repr(key), "", f"the key holds {reason}")
    if not isinstance(record.data, dict):
        raise UnstorableValue(record.entity, key, "", "the data must be an object")
    reserved = _RESERVED_TOP_LEVEL & record.data.keys()
    if reserved:
        raise UnstorableValue(
            record.entity, key, ", ".join(sorted(reserved)), "reserved field name(s)"
        )
    found = _problem(record.data, "", 1)
    if found is not None:
        raise UnstorableValue(record.entity, key, *found)


def check_records(records: Iterable[StoredRecord]) -> None:
    """Check every record of a write; the first unstorable value stops it before any write."""
    for record in records:
        check_record(record)
