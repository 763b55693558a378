"""Which file holds each AEIMS entity, and in which shape (wrapped, flat, list, keyed).

The shapes found in AEIMS and how they read are in docs/data-layer.md, "The AEIMS files".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from provisioner.storage.model import (
    CREDENTIAL_DOC_KEYS,
    ENTITIES,
)

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
