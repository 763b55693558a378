"""The five timestamp formats found in AEIMS JSON files, read into aware datetimes and written back
in the format they came in.

AEIMS writers used PHP's `date('c')` (ISO with `+00:00`), hand-written ISO with `Z`, `date('Y-m-d
H:i:s')` (naive, in the *server's* local time zone), date-only values and `time()` epoch ints. A
record written back must keep the format its field already had, or the PHP code that compares
strings (`$a['date'] < $startDate`) or calls `strtotime` on them would change behaviour.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from enum import StrEnum

__all__ = [
    "TimestampFormat",
    "detect_format",
    "format_as",
    "format_like",
    "now_php",
    "parse_timestamp",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)

_ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z")
_ISO_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?[+-]\d{2}:\d{2}")
_NAIVE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class TimestampFormat(StrEnum):
    """How a timestamp value is spelled in an AEIMS file."""

    ISO_Z = "iso_z"  # 2023-08-15T10:30:00Z
    ISO_OFFSET = "iso_offset"  # 2025-10-04T10:13:32+00:00 (PHP date('c'))
    NAIVE = "naive"  # 2025-10-12 09:33:57 (PHP date('Y-m-d H:i:s'), server-local time)
    DATE = "date"  # 2025-06-15
    EPOCH = "epoch"  # 1760349850 (PHP time())


def detect_format(value: object) -> TimestampFormat:
    """Which of the five formats `value` is in; ValueError (naming the value) for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a timestamp: {value!r} (a boolean)")
    if isinstance(value, int):
        return TimestampFormat.EPOCH
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r} (expected a string or an epoch int)")
    if _ISO_Z.fullmatch(value):
        return TimestampFormat.ISO_Z
    if _ISO_OFFSET.fullmatch(value):
        return TimestampFormat.ISO_OFFSET
    if _NAIVE.fullmatch(value):
        return TimestampFormat.NAIVE
    if _DATE.fullmatch(value):
        return TimestampFormat.DATE
    raise ValueError(
        f"not a timestamp: {value!r} (expected ISO 8601 with Z or an offset, "
        "'YYYY-MM-DD HH:MM:SS', 'YYYY-MM-DD' or epoch seconds)"
    )


def parse_timestamp(value: str | int, *, local_tz: tzinfo = UTC) -> datetime:
    """An aware datetime for any AEIMS timestamp value.

    Naive and date-only values are in the server's local time zone (`local_tz`), because PHP's
    `date()` wrote them that way; a date-only value is midnight of that day there.
    """
    fmt = detect_format(value)
    try:
        if fmt is TimestampFormat.EPOCH:
            assert isinstance(value, int)
            return _EPOCH + timedelta(seconds=value)
        assert isinstance(value, str)
        if fmt is TimestampFormat.ISO_Z:
            return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
        if fmt is TimestampFormat.ISO_OFFSET:
            return datetime.fromisoformat(value)
        if fmt is TimestampFormat.NAIVE:
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=local_tz)
        day = date.fromisoformat(value)
        return datetime(day.year, day.month, day.day, tzinfo=local_tz)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {value!r} ({exc})") from None


def format_as(
    dt: datetime,
    fmt: TimestampFormat,
    *,
    local_tz: tzinfo = UTC,
    offset: timedelta | None = None,
) -> str | int:
    """`dt` spelled in `fmt`. `offset` is the UTC offset an ISO_OFFSET value is written with."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"timestamp {dt!r} has no time zone; give an aware datetime")
    if fmt is TimestampFormat.EPOCH:
        return (dt - _EPOCH) // _ONE_SECOND
    if fmt is TimestampFormat.ISO_Z:
        utc = dt.astimezone(UTC)
        return _iso_clock(utc) + "Z"
    if fmt is TimestampFormat.ISO_OFFSET:
        shifted = dt.astimezone(timezone(offset if offset is not None else timedelta(0)))
        return shifted.isoformat(timespec="microseconds" if shifted.microsecond else "seconds")
    local = dt.astimezone(local_tz)
    if fmt is TimestampFormat.NAIVE:
        return (
            f"{local.year:04d}-{local.month:02d}-{local.day:02d} "
            f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
        )
    return local.date().isoformat()


def format_like(dt: datetime, original: str | int, *, local_tz: tzinfo = UTC) -> str | int:
    """`dt` written in the same format as `original` (and, for ISO offsets, the same offset)."""
    fmt = detect_format(original)
    offset = None
    if fmt is TimestampFormat.ISO_OFFSET:
        offset = parse_timestamp(original, local_tz=local_tz).utcoffset()
    return format_as(dt, fmt, local_tz=local_tz, offset=offset)


def now_php(local_tz: tzinfo = UTC) -> str:
    """The current time as PHP's `date('Y-m-d H:i:s')`, the format of AEIMS `last_updated`."""
    value = format_as(datetime.now(UTC), TimestampFormat.NAIVE, local_tz=local_tz)
    assert isinstance(value, str)
    return value


def _iso_clock(dt: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS[.ffffff]` without an offset."""
    naive = dt.replace(tzinfo=None)
    return naive.isoformat(timespec="microseconds" if naive.microsecond else "seconds")
