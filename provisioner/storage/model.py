"""The record model shared by the JSON side and the PostgreSQL side of the data layer.

A `StoredRecord` is one AEIMS record exactly as the JSON files hold it (`data`), its identity
within its entity (`key`), and where it sits in its file(s) (`placement`), so that either side
can give back what the other took: JSON -> PostgreSQL -> JSON loses nothing but the plaintext
test passwords, which are never migrated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Fields holding plaintext test passwords in AEIMS files. They stay in the JSON files the PHP
# application owns, but never enter PostgreSQL, logs, output or the journal.
PLAINTEXT_PASSWORD_FIELDS = frozenset({"password_plaintext_for_testing"})
# File-level keys that document plaintext credentials; kept in the file, never migrated.
CREDENTIAL_DOC_KEYS = frozenset({"_CREDENTIALS_DOCUMENTATION"})

# Every entity the data layer manages, in dependency order (referenced entities first).
ENTITIES: tuple[str, ...] = (
    "sites",
    "domains",
    "customers",
    "operators",
    "accounts",
    "account_locks",
    "chat_rooms",
    "room_messages",
    "room_invites",
    "conversations",
    "messages",
    "content_items",
    "content_purchases",
    "favorites",
    "notifications",
    "transactions",
    "operator_requests",
    "customer_activity",
    "id_verifications",
    "verification_codes",
    "username_reservations",
    "rate_limits",
)


@dataclass
class StoredRecord:
    """One record of one entity, with what is needed to put it back where it was."""

    entity: str
    key: str
    data: dict[str, Any]
    # Where and how the record sits in its file(s); opaque outside storage/aeims.
    # Examples: {"file_key": "0"} for an object keyed "0"; {"list_index": 2} for a list;
    # operators: {"data_key": "0", "agents_key": "0", "agents_absent": ["username"]}.
    placement: dict[str, Any] = field(default_factory=dict)

    def without_plaintext(self) -> StoredRecord:
        """The record as it may enter PostgreSQL: plaintext test passwords removed at any depth."""
        return StoredRecord(self.entity, self.key, strip_plaintext(self.data), dict(self.placement))


def strip_plaintext(value: Any) -> Any:
    """A copy of a JSON value with the plaintext password fields removed at any depth."""
    if isinstance(value, dict):
        return {
            k: strip_plaintext(v) for k, v in value.items() if k not in PLAINTEXT_PASSWORD_FIELDS
        }
    if isinstance(value, list):
        return [strip_plaintext(v) for v in value]
    return value
