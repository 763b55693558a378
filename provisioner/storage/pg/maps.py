"""The entity maps: for each AEIMS entity its table, key column and the fields lifted into
typed columns; logins come from storage/logins.py (docs/data-layer.md, "PostgreSQL").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from provisioner.storage.logins import LOGINS
from provisioner.storage.model import ENTITIES
from provisioner.storage.pg.columns import (
    BOOL,
    INT,
    JSONB,
    MONEY,
    MONEY_INT,
    RATIO,
    TEXT,
    TEXT_ARRAY,
    TS_DATE,
    TS_EPOCH,
    TS_ISO,
    TS_ISO_Z,
    TS_NAIVE,
    ColumnType,
    RecordMappingError,
)
from provisioner.storage.timestamps import parse_timestamp

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
        login_columns=LOGINS["customers"].columns,
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
        login_columns=LOGINS["operators"].columns,
        login_id_column=LOGINS["operators"].id_column,
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
        login_columns=LOGINS["accounts"].columns,
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
    with_logins = {m.entity for m in _MAPS if m.login_columns}
    if with_logins != set(LOGINS):
        raise RuntimeError(f"entity maps and logins.LOGINS differ: {with_logins ^ set(LOGINS)}")
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
