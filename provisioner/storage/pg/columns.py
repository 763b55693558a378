"""Column types: a SQL type and a converter each way, checked to give back the very value.

A converter whose way back is not identical to the value (type included) keeps the original
in the row's `extra["__orig__"]` (the round-trip rule, docs/data-layer.md, "PostgreSQL").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from psycopg.types.json import Jsonb

from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.timestamps import TimestampFormat, format_as, parse_timestamp

# Part of every content hash: bump it when a map changes so a re-upsert rewrites every row.
MAPPING_VERSION = 1
ORIG_KEY = "__orig__"
ABSENT_KEY = "__absent__"
ORDER_KEY = "__order__"
_RESERVED_FIELDS = frozenset({ORIG_KEY, ABSENT_KEY, ORDER_KEY})
_CONVERSION_ERRORS = (TypeError, ValueError, ArithmeticError)


class RecordMappingError(ValueError):
    """A record cannot be stored as given; the message names the record, the field and why."""


# ---------------------------------------------------------------------------------------------
# Column types: a SQL type and a converter each way
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    """How one JSON value becomes one column value and back.

    `sql_type` is spelled as PostgreSQL's format_type() prints it, so the schema can be checked
    against the maps. `to_db` raises TypeError/ValueError/ArithmeticError for a value the column
    cannot hold (the value then lives only in extra.__orig__); `from_db` receives what
    PostgreSQL returns. `wrap` adapts a value to a query parameter (jsonb).

    The rest only makes writes cheaper, never different (tests/test_pg_records_speed_paths.py
    checks each against the generic to_db/from_db round trip):
    - `verbatim_types`: a value of exactly one of these types that `to_db` accepts comes back
      from `from_db(to_db(value))` unchanged, so the back-conversion check is skipped for it;
    - `convert_scalar`: a memoized `value -> (column value, exact round trip)` for str and int
      values (timestamps, whose parse and format dominate a write and repeat often);
    - `to_json`: the column value as JSON text for json_to_recordset (None: already JSON).
    """

    sql_type: str
    to_db: Callable[[Any], Any]
    from_db: Callable[[Any], Any]
    wrap: Callable[[Any], Any] | None = None
    verbatim_types: frozenset[type] = frozenset()
    convert_scalar: Callable[[Any], tuple[Any, bool]] | None = None
    to_json: Callable[[Any], Any] | None = None

    def convert(self, value: Any) -> tuple[Any, bool]:
        """(column value, whether from_db gives `value` back exactly); _CONVERSION_ERRORS when
        the column cannot hold `value`. None is always stored as NULL and given back as None."""
        if value is None:
            return None, True
        kind = type(value)
        if kind in self.verbatim_types:
            return self.to_db(value), True
        if self.convert_scalar is not None and (kind is str or kind is int):
            return self.convert_scalar(value)
        stored = self.to_db(value)
        return stored, json_equal(self.from_db(stored), value)

    @property
    def copy_type(self) -> str:
        """The type name psycopg's COPY wants."""
        if self.sql_type == "timestamp with time zone":
            return "timestamptz"
        return self.sql_type.split("(")[0]


def _identity(value: Any) -> Any:
    return value


def _text_to_db(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # An int username (0, 1, 2) is matched by its string form; extra keeps the int. Other
        # types get no column value, so, as on the JSON side, they never match a login.
        return str(value)
    raise TypeError(f"{type(value).__name__} in a text column")


def _bool_to_db(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"{type(value).__name__} in a boolean column")


_INT4 = (-(2**31), 2**31 - 1)


def _int_to_db(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a boolean in an integer column")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"{type(value).__name__} in an integer column")
    if not _INT4[0] <= value <= _INT4[1]:
        raise OverflowError(f"{value} does not fit an integer column")
    return value


_NUMERIC_TEXT = re.compile(r"-?\d+(\.\d+)?")


def _numeric(precision: int, scale: int, back: str) -> ColumnType:
    """numeric(precision, scale); `back` is "float" or "int" (int when the value is whole)."""
    quantum = Decimal(1).scaleb(-scale)
    integer_digits = precision - scale

    def to_db(value: Any) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise TypeError("a boolean in a numeric column")
        if isinstance(value, int):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        elif isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value):
            number = Decimal(value)
        else:
            raise TypeError(f"{type(value).__name__} in a numeric column")
        rounded = number.quantize(quantum, rounding=ROUND_HALF_EVEN)
        if rounded and rounded.adjusted() >= integer_digits:
            raise OverflowError(f"{value} does not fit numeric({precision},{scale})")
        return rounded

    def from_db(value: Decimal | None) -> int | float | None:
        if value is None:
            return None
        if back == "int" and value == value.to_integral_value():
            return int(value)
        return float(value)

    return ColumnType(f"numeric({precision},{scale})", to_db, from_db, to_json=str)


def _timestamp(fmt: TimestampFormat) -> ColumnType:
    """timestamptz read from any of the five AEIMS forms (naive taken as UTC), written back in
    `fmt`, the form most records of that field use; the others come back from extra.__orig__."""

    def to_db(value: Any) -> datetime | None:
        if value is None:
            return None
        if type(value) is str:
            # The common forms parsed in C (parse_timestamp's strptime costs the hot path).
            spelled = _common_timestamp(value)
            if spelled is not None:
                return spelled[0]
        return parse_timestamp(value)

    def from_db(value: datetime | None) -> str | int | None:
        return None if value is None else format_as(value, fmt)

    # Keyed by type too, so that 1 and True (equal, same hash) are never confused.
    @functools.lru_cache(maxsize=4096, typed=True)
    def cached_scalar(value: str | int) -> tuple[datetime | None, bool]:
        stored = to_db(value)
        return stored, json_equal(from_db(stored), value)

    def convert_scalar(value: str | int) -> tuple[datetime | None, bool]:
        # Most values are unique to the second, so the cache misses: the three common
        # spellings are parsed in C, and their round trip is exact exactly when the spelling
        # is the one this column writes back (what from_db would have said).
        if type(value) is str:
            spelled = _common_timestamp(value)
            if spelled is not None:
                stored, spelling = spelled
                return stored, spelling is fmt
        return cached_scalar(value)

    return ColumnType(
        "timestamp with time zone",
        to_db,
        from_db,
        convert_scalar=convert_scalar,
        to_json=datetime.isoformat,
    )


_COMMON_TIMESTAMPS = (
    (re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"), TimestampFormat.NAIVE),
    (
        re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\+00:00"),
        TimestampFormat.ISO_OFFSET,
    ),
    (re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"), TimestampFormat.ISO_Z),
)


def _common_timestamp(value: str) -> tuple[datetime, TimestampFormat] | None:
    """(instant, spelling) of a timestamp in one of the three common spellings, to the second
    (naive taken as UTC, as to_db takes it), which format_as writes back character for
    character in that spelling; None for anything else (the generic path decides)."""
    for pattern, spelling in _COMMON_TIMESTAMPS:
        if pattern.fullmatch(value):
            try:
                if spelling is TimestampFormat.ISO_OFFSET:
                    return datetime.fromisoformat(value), spelling
                clock = value[:-1] if spelling is TimestampFormat.ISO_Z else value
                return datetime.fromisoformat(clock).replace(tzinfo=UTC), spelling
            except ValueError:
                return None  # out of range: the generic path gives its own error
    return None


def _text_array_to_db(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise TypeError("not a list of strings")


def _wrap_jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


_JSON_TYPES = frozenset({dict, list, str, int, float, bool})
TEXT = ColumnType("text", _text_to_db, _identity, verbatim_types=frozenset({str}))
BOOL = ColumnType("boolean", _bool_to_db, _identity, verbatim_types=frozenset({bool}))
INT = ColumnType("integer", _int_to_db, _identity, verbatim_types=frozenset({int}))
JSONB = ColumnType("jsonb", _identity, _identity, _wrap_jsonb, verbatim_types=_JSON_TYPES)
TEXT_ARRAY = ColumnType("text[]", _text_array_to_db, _identity, verbatim_types=frozenset({list}))
# Money and credits. Whole amounts come back as int where the files hold ints (credits).
MONEY = _numeric(12, 2, back="float")
MONEY_INT = _numeric(12, 2, back="int")
RATIO = _numeric(7, 4, back="float")
TS_NAIVE = _timestamp(TimestampFormat.NAIVE)
TS_ISO = _timestamp(TimestampFormat.ISO_OFFSET)
TS_ISO_Z = _timestamp(TimestampFormat.ISO_Z)
TS_DATE = _timestamp(TimestampFormat.DATE)
TS_EPOCH = _timestamp(TimestampFormat.EPOCH)
