"""The PostgreSQL side of the data layer: AEIMS records to normalized rows and back.

Every entity has a declarative map: its table, its key column, and the JSON fields lifted into
typed columns, each with a converter both ways. The rule every map obeys (the round-trip rule):

    to_record(from_record(r)) == r.without_plaintext()

exactly: same keys in the same order, same values, same Python types, same timestamp strings.
It holds for any record, not only for the shapes the maps were written for, because it is
enforced generically: after converting a field to its column value, the converter converts it
back; when that is not identical (type included) to the original, as for an int `0` in a
numeric column or a naive timestamp in a column whose usual form is ISO, the original is kept
in `extra["__orig__"]`.
Fields with no column stay in `extra` as they are (nested fields lifted into columns are taken
out of their parent there); columns whose field the record lacks are listed in
`extra["__absent__"]`. The columns still hold the converted value for queries and analytics.

Key order survives too, at every depth, although jsonb reorders object keys and to_record puts
lifted fields back after the others: every object whose order would not come back by itself
has its keys listed in `extra["__order__"]` (see _key_orders), and to_record rebuilds it in
that order. Order is not part of the content hash (equal data hashes equally whatever its
order); an upsert also rewrites a row whose stored order differs from the one given.

Plaintext test passwords (`model.PLAINTEXT_PASSWORD_FIELDS`, at any depth) are dropped before
anything is stored, hashed or compared, so they never reach PostgreSQL (REPORT section 4).

Writes are upserts keyed by the AEIMS id with a content hash, so re-sending an unchanged record
changes nothing (not even the row's xmin), and every value is a bound parameter: the rows of a
write travel as one JSON parameter to a single statement per entity, whatever the batch size.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from provisioner.storage.model import ENTITIES, PLAINTEXT_PASSWORD_FIELDS, StoredRecord
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
# Strict comparison
# ---------------------------------------------------------------------------------------------


def strictly_equal(a: Any, b: Any) -> bool:
    """JSON equality that also compares types: `0 != 0.0 != False`, `"0" != 0`."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strictly_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


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
        return stored, strictly_equal(self.from_db(stored), value)

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


_NAIVE_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _timestamp(fmt: TimestampFormat) -> ColumnType:
    """timestamptz read from any of the five AEIMS forms (naive taken as UTC), written back in
    `fmt`, the form most records of that field use; the others come back from extra.__orig__."""

    def to_db(value: Any) -> datetime | None:
        if value is None:
            return None
        if type(value) is str and _NAIVE_TIME.fullmatch(value):
            # The commonest form, parsed in C (parse_timestamp's strptime costs the hot path).
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return parse_timestamp(value)

    def from_db(value: datetime | None) -> str | int | None:
        return None if value is None else format_as(value, fmt)

    # Keyed by type too, so that 1 and True (equal, same hash) are never confused.
    @functools.lru_cache(maxsize=4096, typed=True)
    def cached_scalar(value: str | int) -> tuple[datetime | None, bool]:
        stored = to_db(value)
        return stored, strictly_equal(from_db(stored), value)

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


# ---------------------------------------------------------------------------------------------
# Entity maps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One typed column and the JSON field (a path into the record) it holds."""

    name: str
    path: tuple[str, ...]
    type: ColumnType

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def col(name: str, path: str | None = None, kind: ColumnType = TEXT) -> Column:
    """A column named `name` holding the field at dotted `path` (default: the same name)."""
    return Column(name, tuple((path or name).split(".")), kind)


@dataclass(frozen=True)
class MembershipMap:
    """Rows derived from a record and rewritten with it (customer_sites, operator_sites)."""

    table: str
    owner_column: str
    columns: tuple[tuple[str, str], ...]  # (name, SQL type) after the owner column
    derive: Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class EntityMap:
    """How one entity's records become rows of one table."""

    entity: str
    table: str
    key_column: str
    # The JSON field that normally repeats the key (customer_id, id, site_id...), if any.
    key_field: str | None
    columns: tuple[Column, ...]
    # find_by_login: a column matched exactly (after trimming) before anything else, then the
    # columns compared by normalize_login, in this order (the key column may be one).
    login_columns: tuple[str, ...] = ()
    login_id_column: str | None = None
    memberships: MembershipMap | None = None

    @property
    def selected_columns(self) -> list[str]:
        return [self.key_column, *(c.name for c in self.columns), "extra", "placement"]

    @property
    def written_columns(self) -> list[str]:
        return [
            self.key_column,
            *(c.name for c in self.columns),
            "extra",
            "placement",
            "content_hash",
        ]

    @property
    def written_types(self) -> list[str]:
        return ["text", *(c.type.sql_type for c in self.columns), "jsonb", "jsonb", "text"]


def _normalize_domain(raw: Any) -> str | None:
    """Domains are case-insensitive; memberships hold them trimmed and lower-case."""
    if not isinstance(raw, str):
        return None
    domain = raw.strip().lower()
    return domain or None


def _domain_list(value: Any) -> list[str]:
    """The domains of a `sites` list (or the object PHP makes of a list with string keys)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [d for d in (_normalize_domain(item) for item in items) if d]


def _customer_sites(key: str, data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per domain the customer lists in `sites` or registered on (`site_domain`)."""
    flags: dict[str, list[bool]] = {}
    for domain in _domain_list(data.get("sites")):
        flags.setdefault(domain, [False, False])[0] = True
    home = _normalize_domain(data.get("site_domain"))
    if home:
        flags.setdefault(home, [False, False])[1] = True
    return [(key, domain, listed, is_home) for domain, (listed, is_home) in flags.items()]


def _try_time(value: Any) -> datetime | None:
    try:
        return None if value is None else parse_timestamp(value)
    except ValueError:
        return None


def _dict_at(data: Any, name: str) -> dict[str, Any]:
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _operator_sites(key: str, data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per domain in the operator's `domains` map, with its per-domain profile."""
    domains = data.get("domains")
    profile = _dict_at(data, "profile")
    names, bios = _dict_at(profile, "display_names"), _dict_at(profile, "bios")
    if isinstance(domains, dict):
        entries = list(domains.items())
    elif isinstance(domains, list):  # an older shape: a plain list of domains
        entries = [(d, None) for d in domains]
    else:
        entries = []
    rows: dict[str, tuple[Any, ...]] = {}
    for raw, info in entries:
        domain = _normalize_domain(raw)
        if not domain:
            continue
        details = info if isinstance(info, dict) else {}
        role, active = details.get("role"), details.get("active")
        name, bio = names.get(raw), bios.get(raw)
        rows[domain] = (
            key,
            domain,
            role if isinstance(role, str) else None,
            active if isinstance(active, bool) else None,
            _try_time(details.get("joined")),
            name if isinstance(name, str) else None,
            bio if isinstance(bio, str) else None,
        )
    return list(rows.values())


_MAPS: tuple[EntityMap, ...] = (
    EntityMap(
        "sites",
        "sites",
        "site_id",
        "site_id",
        (
            col("domain"),
            col("name"),
            col("description"),
            col("template"),
            col("active", kind=BOOL),
            col("created_at", kind=TS_NAIVE),
            col("categories", kind=TEXT_ARRAY),
            col("theme", kind=JSONB),
            col("features", kind=JSONB),
            col("per_minute_rate", "billing.per_minute_rate", MONEY),
            col("minimum_purchase", "billing.minimum_purchase", MONEY),
            col("currency", "billing.currency"),
            col("operator_commission", "billing.operator_commission", RATIO),
            col("total_customers", "stats.total_customers", INT),
            col("total_operators", "stats.total_operators", INT),
            col("active_operators", "stats.active_operators", INT),
            col("total_calls", "stats.total_calls", INT),
            col("total_revenue", "stats.total_revenue", MONEY),
        ),
    ),
    EntityMap(
        "domains",
        "domains",
        "domain",
        "domain",
        (
            col("theme"),
            col("description"),
            col("services", kind=TEXT_ARRAY),
            col("status"),
            col("ssl_status"),
            col("ssl_expires", kind=TS_DATE),
            col("created_at", kind=TS_ISO_Z),
            col("last_updated", kind=TS_ISO_Z),
            col("monthly_revenue", kind=MONEY),
            col("monthly_calls", kind=INT),
            col("monthly_messages", kind=INT),
            col("uptime_percentage", kind=RATIO),
            col("operators_count", kind=INT),
            col("cross_site_operators", kind=INT),
            col("active_users", kind=INT),
        ),
    ),
    EntityMap(
        "customers",
        "customers",
        "customer_id",
        "customer_id",
        (
            col("username"),
            col("email"),
            col("password_hash"),
            col("site_domain"),
            col("sites", kind=TEXT_ARRAY),
            col("registration_ip"),
            col("active", kind=BOOL),
            col("verified", kind=BOOL),
            col("created_at", kind=TS_NAIVE),
            col("display_name", "profile.display_name"),
            col("age_verified", "profile.age_verified", BOOL),
            col("credits", "billing.credits", MONEY_INT),
            col("total_spent", "billing.total_spent", MONEY_INT),
            col("last_activity", "stats.last_activity", TS_NAIVE),
        ),
        login_columns=("username", "email"),
        memberships=MembershipMap(
            "customer_sites",
            "customer_id",
            (("domain", "text"), ("listed", "boolean"), ("home", "boolean")),
            _customer_sites,
        ),
    ),
    EntityMap(
        "operators",
        "operators",
        "operator_id",
        "id",
        (
            col("username"),
            col("name"),
            col("email"),
            col("password_hash"),
            col("status"),
            col("phone"),
            col("verified", kind=BOOL),
            col("created_at", kind=TS_ISO),
            col("services", kind=TEXT_ARRAY),
            col("domains", kind=JSONB),
        ),
        login_columns=("username", "email"),
        login_id_column="operator_id",
        memberships=MembershipMap(
            "operator_sites",
            "operator_id",
            (
                ("domain", "text"),
                ("role", "text"),
                ("active", "boolean"),
                ("joined", "timestamp with time zone"),
                ("display_name", "text"),
                ("bio", "text"),
            ),
            _operator_sites,
        ),
    ),
    EntityMap(
        "accounts",
        "accounts",
        "login",
        None,
        (
            col("account_id", "id"),
            col("name"),
            col("account_type", "type"),
            col("password_hash", "password"),
            col("email"),
            col("status"),
            col("created_at", kind=TS_ISO),
            col("permissions", kind=TEXT_ARRAY),
            col("domains", kind=TEXT_ARRAY),
        ),
        login_columns=("login", "email"),
    ),
    EntityMap(
        "account_locks",
        "account_locks",
        "login",
        None,
        (
            col("attempts", kind=INT),
            col("first_attempt", kind=TS_EPOCH),
            col("last_attempt", kind=TS_EPOCH),
            col("locked_at", kind=TS_EPOCH),
        ),
    ),
    EntityMap(
        "chat_rooms",
        "chat_rooms",
        "room_id",
        "room_id",
        (
            col("operator_id"),
            col("room_name"),
            col("description"),
            col("pin_protected", kind=BOOL),
            col("pin_code"),
            col("entry_fee", kind=MONEY),
            col("per_minute_rate", kind=MONEY),
            col("created_at", kind=TS_NAIVE),
            col("status"),
            col("max_users", kind=INT),
            col("current_users", kind=JSONB),
        ),
    ),
    EntityMap(
        "room_messages",
        "room_messages",
        "message_id",
        "message_id",
        (
            col("room_id"),
            col("sender_id"),
            col("sender_type"),
            col("content"),
            col("sent_at", "timestamp", TS_ISO),
            col("read_by", kind=JSONB),
        ),
    ),
    EntityMap(
        "room_invites",
        "room_invites",
        "invite_id",
        "invite_id",
        (
            col("operator_id"),
            col("customer_id"),
            col("room_id"),
            col("free_minutes", kind=INT),
            col("message"),
            col("status"),
            col("created_at", kind=TS_NAIVE),
            col("expires_at", kind=TS_NAIVE),
            col("responded_at", kind=TS_NAIVE),
            col("used_at", kind=TS_NAIVE),
            col("minutes_used", kind=INT),
        ),
    ),
    EntityMap(
        "conversations",
        "conversations",
        "conversation_id",
        "conversation_id",
        (
            col("customer_id"),
            col("operator_id"),
            col("site_domain"),
            col("status"),
            col("created_at", kind=TS_NAIVE),
            col("last_activity", kind=TS_NAIVE),
            col("ended_at", kind=TS_NAIVE),
            col("message_count", "billing_info.message_count", INT),
            col("total_customer_paid", "billing_info.total_customer_paid", MONEY),
            col("total_operator_earned", "billing_info.total_operator_earned", MONEY),
        ),
    ),
    EntityMap(
        "messages",
        "messages",
        "message_id",
        "message_id",
        (
            col("conversation_id"),
            col("sender_id"),
            col("sender_type"),
            col("content"),
            col("sent_at", kind=TS_NAIVE),
            col("cost", "billing.cost", MONEY),
        ),
    ),
    EntityMap(
        "content_items",
        "content_items",
        "content_id",
        "content_id",
        (
            col("item_id"),
            col("operator_id"),
            col("content_type", "type"),
            col("title"),
            col("description"),
            col("price", kind=MONEY),
            col("file_url"),
            col("thumbnail_url"),
            col("tags", kind=TEXT_ARRAY),
            col("status"),
            col("created_at", kind=TS_NAIVE),
            col("updated_at", kind=TS_NAIVE),
            col("views", kind=INT),
            col("purchases", kind=INT),
            col("earnings", kind=MONEY),
        ),
    ),
    EntityMap(
        "content_purchases",
        "content_purchases",
        "purchase_id",
        "purchase_id",
        (
            col("item_id"),
            col("customer_id"),
            col("operator_id"),
            col("price_paid", kind=MONEY),
            col("purchased_at", kind=TS_NAIVE),
            col("access_granted", kind=BOOL),
        ),
    ),
    EntityMap(
        "favorites",
        "favorites",
        "customer_id",
        "customer_id",
        (col("operator_ids", kind=TEXT_ARRAY),),
    ),
    EntityMap(
        "notifications",
        "notifications",
        "notification_id",
        "notification_id",
        (
            col("user_id"),
            col("notification_type", "type"),
            col("title"),
            col("message"),
            col("link"),
            col("read", kind=BOOL),
            col("created_at", kind=TS_ISO),
        ),
    ),
    EntityMap(
        "transactions",
        "transactions",
        "transaction_id",
        "transaction_id",
        (
            col("customer_id"),
            col("operator_id"),
            col("site_id"),
            col("transaction_type"),
            col("amount", kind=MONEY),
            col("currency"),
            col("status"),
            col("description"),
            col("created_at", kind=TS_NAIVE),
        ),
    ),
    EntityMap(
        "operator_requests",
        "operator_requests",
        "request_id",
        "request_id",
        (
            col("operator_id"),
            col("customer_id"),
            col("request_type", "type"),
            col("message"),
            col("duration", kind=INT),
            col("price", kind=MONEY),
            col("status"),
            col("created_at", kind=TS_NAIVE),
            col("expires_at", kind=TS_NAIVE),
            col("responded_at", kind=TS_NAIVE),
        ),
    ),
    EntityMap(
        "customer_activity",
        "customer_activity",
        "activity_id",
        "id",
        (
            col("customer_id"),
            col("activity_type"),
            col("action"),
            col("site"),
            col("ip"),
            col("occurred_at", "timestamp", TS_ISO),
        ),
    ),
    EntityMap(
        "id_verifications",
        "id_verifications",
        "verification_id",
        "verification_id",
        (
            col("operator_id"),
            col("status"),
            col("verification_code"),
            col("documents", kind=JSONB),
            col("notes"),
            col("created_at", kind=TS_NAIVE),
            col("updated_at", kind=TS_NAIVE),
            col("reviewed_by"),
            col("reviewed_at", kind=TS_NAIVE),
        ),
    ),
    EntityMap(
        "verification_codes",
        "verification_codes",
        "code",
        "code",
        (
            col("generated_by"),
            col("generated_at", kind=TS_NAIVE),
            col("expires_at", kind=TS_NAIVE),
            col("used", kind=BOOL),
            col("used_by"),
            col("used_at", kind=TS_NAIVE),
            col("notes"),
        ),
    ),
    EntityMap(
        "username_reservations",
        "username_reservations",
        "username",
        None,
        (
            col("original_site"),
            col("reserved_at", kind=TS_ISO),
            col("reserved_sites", kind=TEXT_ARRAY),
            col("user_id"),
            col("email"),
        ),
    ),
    EntityMap(
        "rate_limits",
        "rate_limits",
        "limit_key",
        None,
        (
            col("identifier"),
            col("action"),
            col("attempts", kind=INT),
            col("first_attempt", kind=TS_EPOCH),
            col("last_attempt", kind=TS_EPOCH),
            col("blocked_until", kind=TS_EPOCH),
        ),
    ),
)

ENTITY_MAPS: dict[str, EntityMap] = {m.entity: m for m in _MAPS}


def _check_maps() -> None:
    """The maps must cover exactly ENTITIES, and no lifted path may contain another."""
    if set(ENTITY_MAPS) != set(ENTITIES):
        raise RuntimeError(
            f"entity maps and model.ENTITIES differ: {set(ENTITY_MAPS) ^ set(ENTITIES)}"
        )
    for mapping in _MAPS:
        paths = [c.path for c in mapping.columns]
        if mapping.key_field:
            paths.append((mapping.key_field,))
        for a in paths:
            for b in paths:
                if a is not b and b[: len(a)] == a:
                    raise RuntimeError(f"{mapping.entity}: {'.'.join(a)} contains {'.'.join(b)}")


_check_maps()


def entity_map(entity: str) -> EntityMap:
    """The map of `entity`; a clear error for an unknown one."""
    try:
        return ENTITY_MAPS[entity]
    except KeyError:
        raise RecordMappingError(
            f"unknown entity {entity!r}; known entities: {', '.join(ENTITIES)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Record <-> row
# ---------------------------------------------------------------------------------------------


def _check_text(text: str, where: str) -> str:
    if "\x00" in text:
        raise RecordMappingError(f"{where}: contains a NUL character, which PostgreSQL rejects")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordMappingError(f"{where}: not valid Unicode text") from None
    return text


def _check_float(number: float, where: str) -> float:
    if not math.isfinite(number) or "e+" in repr(number):
        raise RecordMappingError(
            f"{where}: the float {number!r} cannot be stored and given back as a float; "
            "store it as a string or an int"
        )
    return number


def _clean(value: Any, where: str) -> Any:
    """A deep copy of a JSON value without plaintext password fields, checked to be storable.

    Refused (PostgreSQL could not give them back): NUL characters, strings that are not valid
    Unicode, and floats so large that their JSON form has an exponent (jsonb would turn 1e+16
    into the int 10000000000000000). Scalars are handled inline and plain ASCII text without
    NUL passes two C-level tests, so error locations are only spelled out for a value that
    fails them: this runs on every write.
    """
    kind = type(value)
    if kind is dict:
        out: dict[str, Any] = {}
        for name, item in value.items():
            if type(name) is not str:
                raise RecordMappingError(f"{where}: field name {name!r} is not a string")
            if name in PLAINTEXT_PASSWORD_FIELDS:
                continue
            if "\x00" in name or not name.isascii():
                _check_text(name, f"{where} (a field name)")
            item_kind = type(item)
            if item_kind is str:
                if "\x00" in item or not item.isascii():
                    _check_text(item, f"{where}.{name}")
                out[name] = item
            elif item is None or item_kind is int or item_kind is bool:
                out[name] = item
            else:
                out[name] = _clean(item, f"{where}.{name}")
        return out
    if kind is list:
        return [_clean(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is str:
        return _check_text(value, where)
    if value is None or kind is int or kind is bool:
        return value
    if kind is float:
        return _check_float(value, where)
    raise RecordMappingError(f"{where}: {kind.__name__} is not a JSON value")


# The canonical JSON of a content hash: json.dumps(..., sort_keys=True, ensure_ascii=False,
# separators=(",", ":")) spelled as one reusable encoder (json.dumps builds a new one per call
# for non-default options). Key order never matters. Cycles cannot reach it (_clean recurses).
_canonical_json = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode
# The rows of a write as one json_to_recordset parameter (key order is irrelevant there).
_rows_json = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False
).encode


def _content_hash(key: str, data: dict[str, Any], placement: dict[str, Any]) -> str:
    canonical = _canonical_json([MAPPING_VERSION, key, data, placement])
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _pop_path(data: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    parent: Any = data
    for name in path[:-1]:
        parent = parent.get(name) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and path[-1] in parent:
        return True, parent.pop(path[-1])
    return False, None


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    parent = data
    for name in path[:-1]:
        child = parent.get(name)
        if not isinstance(child, dict):
            child = parent[name] = {}
        parent = child
    parent[path[-1]] = value


@dataclass(slots=True)
class RowImage:
    """One record as the values of its row (unwrapped), and its derived membership rows.

    `extra` is the extra column without its key order; `order` (the `__order__` entries, or
    None when every object comes back in order by itself) joins it when the row is written.
    """

    entity: str
    key: str
    values: list[Any]
    extra: dict[str, Any]
    placement: dict[str, Any]
    content_hash: str
    memberships: list[tuple[Any, ...]] = field(default_factory=list)
    order: list[list[Any]] | None = None

    @property
    def stored_extra(self) -> dict[str, Any]:
        """The extra column as written: `extra`, plus `__order__` when there is one."""
        if self.order is None:
            return self.extra
        return {**self.extra, ORDER_KEY: self.order}

    def params(self) -> list[Any]:
        """The row as query parameters, in EntityMap.written_columns order."""
        mapping = ENTITY_MAPS[self.entity]
        wrapped = [
            c.type.wrap(v) if c.type.wrap else v
            for c, v in zip(mapping.columns, self.values, strict=True)
        ]
        return [
            self.key,
            *wrapped,
            Jsonb(self.stored_extra),
            Jsonb(self.placement),
            self.content_hash,
        ]

    def selected(self) -> tuple[Any, ...]:
        """The row as a SELECT of EntityMap.selected_columns returns it (for checks in Python;
        objects keep their Python key order here, where jsonb would sort them)."""
        extra = json.loads(json.dumps(self.stored_extra))
        return (self.key, *self.values, extra, dict(self.placement))


_MISSING = object()


_Lifted = tuple[tuple[tuple[str, ...], str | None, str, Callable[[Any], tuple[Any, bool]]], ...]


@functools.cache
def _lifted(entity: str) -> _Lifted:
    """Per column of `entity`: its path, its field name when top-level (popped in one step, a
    nested path goes through _pop_path), its dotted name and its converter."""
    return tuple(
        (
            column.path,
            column.path[0] if len(column.path) == 1 else None,
            column.dotted,
            column.type.convert,
        )
        for column in ENTITY_MAPS[entity].columns
    )


_Path = tuple[str | int, ...]


@functools.cache
def _lifted_leaves(entity: str) -> dict[_Path, tuple[str, ...]]:
    """Per object path holding lifted fields, their names in the order to_record sets them
    back (after the object's other keys): the key field first, then the columns in map order."""
    mapping = ENTITY_MAPS[entity]
    leaves: dict[_Path, list[str]] = {}
    if mapping.key_field:
        leaves[()] = [mapping.key_field]
    for column in mapping.columns:
        leaves.setdefault(column.path[:-1], []).append(column.path[-1])
    return {path: tuple(names) for path, names in leaves.items()}


def _jsonb_key(name: str) -> tuple[int, str]:
    """How jsonb orders object keys: shorter (in UTF-8 bytes) first, then bytewise, which for
    valid Unicode is code point order, Python's string order."""
    return (len(name.encode("utf-8")), name)


def _jsonb_order(names: list[str]) -> list[str]:
    """`names` in jsonb order. For ASCII names (nearly all) two sorts done in C give it: by
    name, then, stably, by length."""
    if "".join(names).isascii():
        return sorted(sorted(names), key=len)
    return sorted(names, key=_jsonb_key)


# Keyed by the shape of an object, which records of one entity share: a write checks each
# shape once, then pays a lookup per object.
@functools.lru_cache(maxsize=8192)
def _comes_back_in_order(lifted: tuple[str, ...] | None, keys: tuple[str, ...]) -> bool:
    """Whether an object with `keys`, in this order, comes back from to_record in the same
    order with no help: its keys in jsonb order, then those of `lifted` (the fields lifted
    out of it, in the order to_record sets them back) it holds."""
    names = list(keys)
    present = [name for name in lifted if name in keys] if lifted else []
    if present:
        rest = [name for name in names if name not in present]
        return _jsonb_order(rest) + present == names
    return _jsonb_order(names) == names


def _key_orders(
    obj: dict[str, Any],
    path: _Path,
    leaves: dict[_Path, tuple[str, ...]],
    out: list[list[Any]],
) -> None:
    """Append `[path, keys]` to `out` for `obj` and every object inside it whose key order
    to_record would not rebuild by itself.

    Without help, an object comes back with its keys in jsonb order, except that the fields
    lifted out of it (`leaves`, for the record itself and parents of nested columns) come
    after the others, in map order. The path is a JSON array (object keys as strings, list
    indices as ints), so it is unambiguous whatever the field names hold.
    """
    if len(obj) > 1:
        keys = tuple(obj)
        if not _comes_back_in_order(leaves.get(path), keys):
            out.append([list(path), list(keys)])
    for name, item in obj.items():
        kind = type(item)
        if kind is dict:
            _key_orders(item, (*path, name), leaves, out)
        elif kind is list:
            _list_key_orders(item, (*path, name), leaves, out)


def _list_key_orders(
    items: list[Any], path: _Path, leaves: dict[_Path, tuple[str, ...]], out: list[list[Any]]
) -> None:
    """_key_orders for the objects inside a list (lists themselves keep their order)."""
    for index, item in enumerate(items):
        kind = type(item)
        if kind is dict:
            _key_orders(item, (*path, index), leaves, out)
        elif kind is list:
            _list_key_orders(item, (*path, index), leaves, out)


def _child(node: Any, step: Any) -> Any:
    """The item `step` (a key or a list index) of `node`, or None when there is none."""
    if type(step) is str and type(node) is dict:
        return node.get(step)
    if type(step) is int and type(node) is list and 0 <= step < len(node):
        return node[step]
    return None


def _restore_key_orders(data: dict[str, Any], orders: Any) -> None:
    """Reorder, in place, each object `orders` lists; keys it does not list (none should)
    go last in their current order, and a path that leads nowhere is passed over."""
    if not isinstance(orders, list):
        return
    for entry in orders:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list)):
            continue
        path, keys = entry
        node: Any = data
        for step in path:
            node = _child(node, step)
        if type(node) is not dict or not isinstance(keys, list):
            continue
        ordered = {name: node[name] for name in keys if type(name) is str and name in node}
        if len(ordered) != len(node):
            ordered.update((name, value) for name, value in node.items() if name not in ordered)
        node.clear()
        node.update(ordered)


def from_record(record: StoredRecord) -> RowImage:
    """The row image of `record`: plaintext dropped, fields lifted into typed columns."""
    mapping = entity_map(record.entity)
    key, raw, raw_placement = record.key, record.data, record.placement
    if not isinstance(key, str) or not key or "\x00" in key:
        raise RecordMappingError(f"{record.entity}: key {key!r} must be a non-empty string")
    where = f"{record.entity} {key!r}"
    if not key.isascii():
        _check_text(key, f"{where} (the key)")
    if not isinstance(raw, dict):
        raise RecordMappingError(f"{where}: data must be an object, not {type(raw).__name__}")
    if not isinstance(raw_placement, dict):
        raise RecordMappingError(f"{where}: placement must be an object")
    if ORIG_KEY in raw or ABSENT_KEY in raw or ORDER_KEY in raw:
        reserved = sorted(_RESERVED_FIELDS & raw.keys())
        raise RecordMappingError(f"{where}: field name(s) {reserved} are reserved")
    data: dict[str, Any] = _clean(raw, where)
    placement: dict[str, Any] = _clean(raw_placement, f"{where} placement") if raw_placement else {}
    content_hash = _content_hash(key, data, placement)
    memberships = mapping.memberships.derive(key, data) if mapping.memberships else []
    orders: list[list[Any]] = []
    _key_orders(data, (), _lifted_leaves(record.entity), orders)

    # From here `data` is consumed into what remains for `extra`.
    orig: dict[str, Any] = {}
    absent: list[str] = []
    key_field = mapping.key_field
    if key_field:
        value = data.pop(key_field, _MISSING)
        if value is _MISSING:
            absent.append(key_field)
        elif type(value) is not type(key) or value != key:  # strictly_equal for a str key
            orig[key_field] = value
    values: list[Any] = []
    for path, field_name, dotted, convert in _lifted(record.entity):
        if field_name is not None:
            value = data.pop(field_name, _MISSING)
            found = value is not _MISSING
        else:
            found, value = _pop_path(data, path)
        if not found:
            absent.append(dotted)
            values.append(None)
            continue
        try:
            stored, exact = convert(value)
        except _CONVERSION_ERRORS:
            orig[dotted] = value
            values.append(None)
            continue
        if not exact:
            orig[dotted] = value
        values.append(stored)
    if orig:
        data[ORIG_KEY] = orig
    if absent:
        data[ABSENT_KEY] = absent
    return RowImage(
        record.entity, key, values, data, placement, content_hash, memberships, orders or None
    )


def to_record(entity: str, row: tuple[Any, ...]) -> StoredRecord:
    """The record a row holds; `row` is a SELECT of EntityMap.selected_columns (consumed)."""
    mapping = entity_map(entity)
    key, *values = row[:-2]
    data: dict[str, Any] = dict(row[-2])
    placement: dict[str, Any] = dict(row[-1])
    orig: dict[str, Any] = data.pop(ORIG_KEY, {})
    absent = set(data.pop(ABSENT_KEY, ()))
    orders = data.pop(ORDER_KEY, None)
    if mapping.key_field and mapping.key_field not in absent:
        data[mapping.key_field] = orig.get(mapping.key_field, key)
    for column, stored in zip(mapping.columns, values, strict=True):
        name = column.dotted
        if name in absent:
            continue
        _set_path(data, column.path, orig[name] if name in orig else column.type.from_db(stored))
    if orders:
        _restore_key_orders(data, orders)
    return StoredRecord(entity, key, data, placement)


# ---------------------------------------------------------------------------------------------
# The login rule
# ---------------------------------------------------------------------------------------------

# THE login rule, shared with the JSON side (aeims_json.normalize_login): ints become their
# decimal string, ASCII whitespace is trimmed, ASCII letters (and nothing else) are lowercased.
# LOGIN_SQL is the same in SQL; the schema indexes exactly these expressions.
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
LOGIN_SQL = "lower(btrim({}, E' \\t\\n\\r\\x0b\\x0c') COLLATE \"C\")"
LOGIN_ID_SQL = "btrim({}, E' \\t\\n\\r\\x0b\\x0c')"


def normalize_login(login: Any) -> str | None:
    """A username, email or login as find_by_login compares it; None matches nothing.

    Ints (operator usernames 0, 1, 2) become their decimal string; ASCII whitespace is trimmed;
    ASCII letters are lowercased and nothing else is. Booleans, null and other types never match.
    """
    if login is None or isinstance(login, bool):
        return None
    if isinstance(login, int):
        login = str(login)
    if not isinstance(login, str):
        return None
    return login.strip(_ASCII_WHITESPACE).translate(_ASCII_LOWER) or None


def normalize_login_id(login: Any) -> str | None:
    """An operator id as find_by_login compares it: trimmed, case-sensitive."""
    if login is None or isinstance(login, bool):
        return None
    if isinstance(login, int):
        login = str(login)
    if not isinstance(login, str):
        return None
    return login.strip(_ASCII_WHITESPACE) or None


# ---------------------------------------------------------------------------------------------
# Statements (composed once per entity, identifiers quoted by psycopg.sql)
# ---------------------------------------------------------------------------------------------


def _ids(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


@dataclass(frozen=True)
class _Statements:
    # Upserts of the rows of a json_to_recordset parameter (see _rows_param): the first gives
    # the changed keys back, the second only their number (the cursor's rowcount).
    upsert_rows: bytes
    upsert_rows_count: bytes
    on_conflict: sql.Composed
    select_one: bytes
    select_all: bytes
    delete: bytes
    count: bytes
    find: bytes | None
    membership_delete: bytes | None
    membership_insert: bytes | None


def _render(query: sql.Composable) -> bytes:
    return query.as_bytes(None)


@functools.cache
def _statements(entity: str) -> _Statements:
    m = ENTITY_MAPS[entity]
    table, pk = sql.Identifier(m.table), sql.Identifier(m.key_column)
    written = m.written_columns
    # A record written without a placement (PostgreSQL-only writes do not know where JSON
    # would put it) keeps the placement already stored, for writing the files back later.
    updates = sql.SQL(", ").join(
        sql.SQL(
            "placement = CASE WHEN EXCLUDED.placement = '{{}}'::jsonb "
            "THEN {table}.placement ELSE EXCLUDED.placement END"
        ).format(table=table)
        if c == "placement"
        else sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
        for c in written[1:]
    )
    on_conflict_count = sql.SQL(
        "ON CONFLICT ({pk}) DO UPDATE SET {updates}, stored_at = now() "
        "WHERE {table}.content_hash IS DISTINCT FROM EXCLUDED.content_hash "
        "OR {table}.extra -> {order} IS DISTINCT FROM EXCLUDED.extra -> {order}"
    ).format(pk=pk, updates=updates, table=table, order=sql.Literal(ORDER_KEY))
    on_conflict = on_conflict_count + sql.SQL(" RETURNING {pk}").format(pk=pk)
    # Every row of a write travels in ONE parameter, a JSON array of objects keyed by column:
    # one statement, one parse and one round trip per batch whatever its size, where a
    # statement per row (or a VALUES list of 10 parameters per row) costs far more CPU on both
    # sides. Rows are locked in key order (ORDER BY, the order copy_records uses too), so
    # concurrent batches cannot deadlock each other.
    definitions = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
        for c, t in zip(written, m.written_types, strict=True)
    )
    from_rows = sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM json_to_recordset(%s::json) "
        "AS r({definitions}) ORDER BY {pk} "
    ).format(table=table, cols=_ids(written), definitions=definitions, pk=pk)
    selected = _ids(m.selected_columns)
    select_one = sql.SQL("SELECT {cols} FROM {table} WHERE {pk} = %s").format(
        cols=selected, table=table, pk=pk
    )
    select_all = sql.SQL("SELECT {cols} FROM {table} ORDER BY {pk}").format(
        cols=selected, table=table, pk=pk
    )
    delete = sql.SQL("DELETE FROM {table} WHERE {pk} = %s").format(table=table, pk=pk)
    count = sql.SQL("SELECT count(*) FROM {table}").format(table=table)
    find = None
    if m.login_columns:
        # One statement: an index probe per rule step, in rule order, stopping at the first hit
        # (UNION ALL + LIMIT never runs the later branches once a row is found). The compared
        # expressions are exactly those of the schema's indexes.
        branch = sql.SQL(
            "(SELECT {cols} FROM {table} WHERE {expr} = {param} ORDER BY {pk} LIMIT 1)"
        )
        branches = []
        if m.login_id_column:
            expr = sql.SQL(LOGIN_ID_SQL).format(sql.Identifier(m.login_id_column))
            param = sql.SQL("%(login_id)s::text")
            branches.append(
                branch.format(cols=selected, table=table, expr=expr, param=param, pk=pk)
            )
        for column in m.login_columns:
            expr = sql.SQL(LOGIN_SQL).format(sql.Identifier(column))
            param = sql.SQL("%(login)s::text")
            branches.append(
                branch.format(cols=selected, table=table, expr=expr, param=param, pk=pk)
            )
        find = _render(sql.SQL(" UNION ALL ").join(branches) + sql.SQL(" LIMIT 1"))
    membership_delete = membership_insert = None
    if m.memberships:
        mm = m.memberships
        mcols = [mm.owner_column, *(name for name, _ in mm.columns)]
        mtypes = ["text", *(t for _, t in mm.columns)]
        membership_delete = _render(
            sql.SQL("DELETE FROM {t} WHERE {owner} = ANY(%s::text[])").format(
                t=sql.Identifier(mm.table), owner=sql.Identifier(mm.owner_column)
            )
        )
        membership_insert = _render(
            sql.SQL("INSERT INTO {t} ({cols}) VALUES ({ph}) ON CONFLICT DO NOTHING").format(
                t=sql.Identifier(mm.table),
                cols=_ids(mcols),
                ph=sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in mtypes),
            )
        )
    return _Statements(
        upsert_rows=_render(from_rows + on_conflict),
        upsert_rows_count=_render(from_rows + on_conflict_count),
        on_conflict=on_conflict,
        select_one=_render(select_one),
        select_all=_render(select_all),
        delete=_render(delete),
        count=_render(count),
        find=find,
        membership_delete=membership_delete,
        membership_insert=membership_insert,
    )


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------


def _images_by_entity(records: Iterable[StoredRecord]) -> dict[str, list[RowImage]]:
    """Every record converted first, so one bad record fails the call before any write."""
    groups: dict[str, list[RowImage]] = {}
    for record in records:
        image = from_record(record)
        groups.setdefault(record.entity, []).append(image)
    return {entity: groups[entity] for entity in ENTITIES if entity in groups}


def _rewrite_memberships(
    cur: psycopg.Cursor[Any], entity: str, images: dict[str, RowImage], changed: list[str]
) -> None:
    """Replace the derived membership rows of the records whose row changed."""
    stmts = _statements(entity)
    if not changed or stmts.membership_delete is None or stmts.membership_insert is None:
        return
    cur.execute(stmts.membership_delete, [changed])
    rows = [row for key in changed for row in images[key].memberships]
    if rows:
        cur.executemany(stmts.membership_insert, rows)


@functools.cache
def _row_layout(
    entity: str,
) -> tuple[tuple[str, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """The written columns of `entity`, and the positions (in a written row) of the values that
    need a JSON form (timestamps, numerics) with its converter."""
    mapping = ENTITY_MAPS[entity]
    converted = tuple(
        (index, column.type.to_json)
        for index, column in enumerate(mapping.columns, start=1)
        if column.type.to_json is not None
    )
    return tuple(mapping.written_columns), converted


def _rows_param(entity: str, images: Iterable[RowImage]) -> str:
    """The rows of `images` as the JSON array of objects json_to_recordset reads."""
    names, converted = _row_layout(entity)
    rows = []
    for image in images:
        values = [image.key, *image.values, image.stored_extra, image.placement, image.content_hash]
        for index, to_json in converted:
            value = values[index]
            if value is not None:
                values[index] = to_json(value)
        rows.append(dict(zip(names, values, strict=True)))
    return _rows_json(rows)


def _latest_by_key(images: list[RowImage]) -> list[RowImage]:
    """One image per key, the last one given (what a batch means), in key order."""
    latest = {image.key: image for image in images}
    return [latest[key] for key in sorted(latest)]


def _write_group(cur: psycopg.Cursor[Any], entity: str, images: list[RowImage]) -> int:
    """Upsert the rows of one entity in one statement; rewrite memberships of changed rows."""
    stmts = _statements(entity)
    images = _latest_by_key(images)
    param = [_rows_param(entity, images)]
    if stmts.membership_delete is None:
        # No memberships: the number of rows inserted or updated is all the caller needs.
        cur.execute(stmts.upsert_rows_count, param)
        return cur.rowcount
    cur.execute(stmts.upsert_rows, param)
    changed = [row[0] for row in cur.fetchall()]
    _rewrite_memberships(cur, entity, {image.key: image for image in images}, changed)
    return len(changed)


def _statement_is_atomic(conn: psycopg.Connection) -> bool:
    """Whether one statement sent now is atomic with no BEGIN/COMMIT of ours: it commits alone
    on an autocommit connection, and is part of the caller's transaction when one is open."""
    return conn.autocommit or conn.info.transaction_status == TransactionStatus.INTRANS


def upsert_records(conn: psycopg.Connection, records: Iterable[StoredRecord]) -> int:
    """Insert or update `records` (any entities) atomically; return the rows written.

    Idempotent: a record whose content hash and field order match its row is not written at
    all (the count excludes it, and the row keeps its xmin); with one key several times, the
    last record is the one stored. Memberships are rewritten, in the same transaction, only for
    the records whose row changed. One statement per entity: records of one entity without
    memberships (messages, the hot path) are a single statement, run without a transaction of
    its own when the connection is in autocommit or already in a transaction; anything else
    runs in one transaction (a savepoint within the caller's).
    """
    groups = _images_by_entity(records)
    if not groups:
        return 0
    if len(groups) == 1 and _statement_is_atomic(conn):
        ((entity, images),) = groups.items()
        if _statements(entity).membership_delete is None:
            with conn.cursor() as cur:
                return _write_group(cur, entity, images)
    written = 0
    with conn.transaction(), conn.cursor() as cur:
        for entity, images in groups.items():
            written += _write_group(cur, entity, images)
    return written


def upsert_record(conn: psycopg.Connection, record: StoredRecord) -> bool:
    """Write one record with as few round trips as possible; True when its row changed.

    For entities without memberships (messages, the hot path) this is a single statement, so
    on an autocommit connection it commits on its own with no extra BEGIN/COMMIT.
    """
    image = from_record(record)
    stmts = _statements(record.entity)
    param = [_rows_param(record.entity, (image,))]
    if stmts.membership_delete is None:
        return conn.execute(stmts.upsert_rows_count, param).rowcount == 1
    with conn.transaction(), conn.cursor() as cur:
        changed = cur.execute(stmts.upsert_rows_count, param).rowcount == 1
        if changed:
            _rewrite_memberships(cur, record.entity, {image.key: image}, [image.key])
    return changed


def copy_records(conn: psycopg.Connection, records: Iterable[StoredRecord]) -> int:
    """Bulk form of upsert_records for backfills: COPY into a temporary table, then one upsert.

    Same result and same idempotence as upsert_records (the last record wins when a key repeats);
    returns the rows inserted or changed.
    """
    groups = _images_by_entity(records)
    written = 0
    with conn.transaction(), conn.cursor() as cur:
        for entity, images in groups.items():
            mapping, stmts = ENTITY_MAPS[entity], _statements(entity)
            stage = sql.Identifier(f"stage_{mapping.table}_{uuid.uuid4().hex[:12]}")
            cur.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {stage} (LIKE {table} INCLUDING DEFAULTS, _seq bigint) "
                    "ON COMMIT DROP"
                ).format(stage=stage, table=sql.Identifier(mapping.table))
            )
            columns = [*mapping.written_columns, "_seq"]
            copy_stmt = sql.SQL("COPY {stage} ({cols}) FROM STDIN").format(
                stage=stage, cols=_ids(columns)
            )
            with cur.copy(copy_stmt) as copy:
                copy.set_types(
                    [
                        "text",
                        *(c.type.copy_type for c in mapping.columns),
                        "jsonb",
                        "jsonb",
                        "text",
                        "int8",
                    ]
                )
                for seq, image in enumerate(images):
                    copy.write_row([*image.params(), seq])
            cur.execute(
                sql.SQL(
                    "INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({pk}) {cols} FROM {stage} "
                    "ORDER BY {pk}, _seq DESC {tail}"
                ).format(
                    table=sql.Identifier(mapping.table),
                    cols=_ids(mapping.written_columns),
                    pk=sql.Identifier(mapping.key_column),
                    stage=stage,
                    tail=stmts.on_conflict,
                )
            )
            changed = [row[0] for row in cur.fetchall()]
            last = {image.key: image for image in images}
            _rewrite_memberships(cur, entity, last, changed)
            cur.execute(sql.SQL("DROP TABLE {stage}").format(stage=stage))
            written += len(changed)
    return written


def delete_record(conn: psycopg.Connection, entity: str, key: str) -> bool:
    """Delete one record (its memberships go with it); True when it existed."""
    entity_map(entity)
    return conn.execute(_statements(entity).delete, [str(key)]).rowcount == 1


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


def get_record(conn: psycopg.Connection, entity: str, key: str) -> StoredRecord | None:
    """The record stored under `key`, exactly as it was given (minus plaintext), or None."""
    entity_map(entity)
    row = conn.execute(_statements(entity).select_one, [str(key)]).fetchone()
    return None if row is None else to_record(entity, row)


def iter_records(
    conn: psycopg.Connection, entity: str, batch_size: int = 1000
) -> Iterator[StoredRecord]:
    """Every record of `entity` in key order, streamed through a server-side cursor.

    The cursor lives in a transaction (a savepoint inside one already open) that ends when the
    iteration does: consume it fully or close it.
    """
    entity_map(entity)
    with (
        conn.transaction(),
        conn.cursor(name=f"records_{entity}_{uuid.uuid4().hex[:8]}") as cur,
    ):
        cur.itersize = batch_size
        cur.execute(_statements(entity).select_all)
        for row in cur:
            yield to_record(entity, row)


def list_records(conn: psycopg.Connection, entity: str) -> list[StoredRecord]:
    """Every record of `entity`, in key order."""
    return list(iter_records(conn, entity))


def count(conn: psycopg.Connection, entity: str) -> int:
    """How many records `entity` holds."""
    entity_map(entity)
    row = conn.execute(_statements(entity).count).fetchone()
    return int(row[0]) if row else 0


def find_by_login(conn: psycopg.Connection, entity: str, login: Any) -> StoredRecord | None:
    """The record a login names, by THE lookup rule shared with the JSON side.

    customers: username, then email; operators: id (exact), then username, then email;
    accounts: the login (the key), then email. Usernames, emails and logins compare after
    normalize_login (case-insensitive for ASCII, trimmed; an int username matches its string
    form). One indexed statement. When several records share a login, the JSON side returns the
    first in file order and this side the lowest key; the files hold no such duplicates.
    """
    mapping = entity_map(entity)
    stmts = _statements(entity)
    if stmts.find is None:
        raise RecordMappingError(
            f"{entity} has no logins; find_by_login works on "
            f"{', '.join(m.entity for m in _MAPS if m.login_columns)}"
        )
    wanted = normalize_login(login)
    wanted_id = normalize_login_id(login) if mapping.login_id_column else None
    if wanted is None and wanted_id is None:
        return None
    params = {"login": wanted, "login_id": wanted_id}
    row = conn.execute(stmts.find, params).fetchone()
    return None if row is None else to_record(mapping.entity, row)
