"""The PHP-named API of the AEIMS data layer (get_customer, save_message, purchase_content...),
logins and health: thin methods on top of DataLayer's get, list, save and delete.

A mixin of DataLayer, so `layer.get_customer(...)` keeps working; it holds no state and knows
nothing of phases, the outbox or PostgreSQL beyond the filtered reads it asks for
(docs/data-layer.md, "The data layer").
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from provisioner.storage.jsonvalues import new_id
from provisioner.storage.layer import auth
from provisioner.storage.layer.auth import AuthResult
from provisioner.storage.layer.health import health
from provisioner.storage.model import StoredRecord
from provisioner.storage.pg import queries as pg_queries

if TYPE_CHECKING:
    from provisioner.storage.aeims.store import AeimsJsonStore


def _now_php() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class PhpApi:
    """The application-facing methods of DataLayer (a mixin: DataLayer provides the rest)."""

    # Provided by DataLayer.
    json: AeimsJsonStore
    get: Callable[..., dict[str, Any] | None]
    list: Callable[..., list[dict[str, Any]]]
    save: Callable[..., str]
    delete: Callable[..., bool]
    find_by_login: Callable[..., dict[str, Any] | None]
    _pg_or_json: Callable[..., Any]
    _record_turn: Callable[[str, str], AbstractContextManager[int]]

    def _where(
        self,
        entity: str,
        column: str,
        value: Any,
        match: Callable[[dict[str, Any]], bool],
        op: str = "=",
    ) -> list[dict[str, Any]]:
        records = self._pg_or_json(
            (entity,),
            None,
            lambda conn: pg_queries.records_where(conn, entity, column, value, op),
            lambda: [r for r in self.json.load(entity) if match(r.data)],
        )
        return [r.data for r in records]

    # ------------------------------------------------------------------------ customers
    def get_customer(self, login: str) -> dict[str, Any] | None:
        """By username or email (THE rule), or by customer id."""
        return self.find_by_login("customers", login) or self.get("customers", str(login))

    def save_customer(self, data: dict[str, Any]) -> str:
        return self.save("customers", data)

    def search_customers(self, text: str = "", site: str | None = None) -> list[dict[str, Any]]:
        """Customers whose username or email contains `text` (any case), optionally on `site`."""
        needle = text.strip().lower()

        def matches(data: dict[str, Any]) -> bool:
            hay = (str(data.get("username", "")).lower(), str(data.get("email", "")).lower())
            return not needle or any(needle in h for h in hay)

        records = self._pg_or_json(
            ("customers",),
            None,
            lambda conn: pg_queries.search_logins(conn, "customers", needle),
            lambda: [r for r in self.json.load("customers") if matches(r.data)],
        )
        found = [r.data for r in records]
        if site:
            found = [
                d for d in found if site in (d.get("sites") or []) or d.get("site_domain") == site
            ]
        return found

    def customer_sites(self, customer_id: str) -> list[str]:
        data = self.get("customers", customer_id)
        return list((data or {}).get("sites") or [])

    def add_customer_site(self, customer_id: str, domain: str) -> None:
        data = self._require("customers", customer_id)
        sites = list(data.get("sites") or [])
        if domain not in sites:
            data["sites"] = [*sites, domain]
            self.save("customers", data, customer_id)

    def remove_customer_site(self, customer_id: str, domain: str) -> None:
        data = self._require("customers", customer_id)
        sites = list(data.get("sites") or [])
        if domain in sites:
            data["sites"] = [s for s in sites if s != domain]
            self.save("customers", data, customer_id)

    def _require(self, entity: str, key: str) -> dict[str, Any]:
        data = self.get(entity, key)
        if data is None:
            raise KeyError(f"no {entity} record {key!r}")
        return data

    # ------------------------------------------------------------------------ operators
    def get_operator(self, login: str | int) -> dict[str, Any] | None:
        """By username, email or id (THE rule)."""
        return self.find_by_login("operators", login)

    def get_operator_by_id(self, operator_id: str) -> dict[str, Any] | None:
        return self.get("operators", operator_id)

    def save_operator(self, data: dict[str, Any]) -> str:
        return self.save("operators", data)

    def search_operators(self, text: str = "", site: str | None = None) -> list[dict[str, Any]]:
        needle = text.strip().lower()
        found = []
        for data in self.list("operators"):
            hay = (
                str(data.get("username", "")),
                str(data.get("email", "")),
                str(data.get("name", "")),
            )
            if needle and not any(needle in h.lower() for h in hay):
                continue
            if site and site not in (data.get("domains") or {}):
                continue
            found.append(data)
        return found

    def set_operator_site(
        self, operator_id: str, domain: str, role: str = "operator", active: bool = True
    ) -> None:
        """Let an operator serve a site (their `domains` map; operator_sites in PostgreSQL)."""
        with self._record_turn("operators", operator_id):
            data = self._require("operators", operator_id)
            domains = dict(data.get("domains") or {})
            entry = dict(domains.get(domain) or {})
            entry.update({"role": role, "active": active})
            entry.setdefault("joined", datetime.now(UTC).strftime("%Y-%m-%d"))
            if domains.get(domain) != entry:
                domains[domain] = entry
                data["domains"] = domains
                self.save("operators", data, operator_id)

    def remove_operator_site(self, operator_id: str, domain: str) -> None:
        with self._record_turn("operators", operator_id):
            data = self._require("operators", operator_id)
            domains = dict(data.get("domains") or {})
            if domain in domains:
                del domains[domain]
                data["domains"] = domains
                self.save("operators", data, operator_id)

    # ------------------------------------------------------------------------ sites
    def get_site(self, site_id_or_domain: str) -> dict[str, Any] | None:
        found = self.get("sites", site_id_or_domain)
        if found is None:
            found = self.get("sites", site_id_or_domain.replace(".", "_"))
        return found

    def list_sites(self) -> list[dict[str, Any]]:
        return self.list("sites")

    def save_site(self, data: dict[str, Any]) -> str:
        return self.save("sites", data)

    def delete_site(self, site_id: str) -> bool:
        return self.delete("sites", site_id)

    # ------------------------------------------------------------------------ messages
    def save_message(self, data: dict[str, Any]) -> str:
        data.setdefault("sent_at", _now_php())
        return self.save("messages", data)

    def get_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        return self._where(
            "messages",
            "conversation_id",
            conversation_id,
            lambda d: d.get("conversation_id") == conversation_id,
        )

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        return self.get("conversations", conversation_id)

    def save_conversation(self, data: dict[str, Any]) -> str:
        return self.save("conversations", data)

    def list_conversations(self, participant_id: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.list("conversations")
            if participant_id in (c.get("customer_id"), c.get("operator_id"))
        ]

    # ------------------------------------------------------------------------ chat rooms
    def get_chat_rooms(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        rooms = self.list("chat_rooms")
        return [r for r in rooms if operator_id is None or r.get("operator_id") == operator_id]

    def save_chat_room(self, data: dict[str, Any]) -> str:
        return self.save("chat_rooms", data)

    # ------------------------------------------------------------------------ favorites
    def get_favorites(self, customer_id: str) -> list[str]:
        data = self.get("favorites", customer_id)
        ids = (data or {}).get("operator_ids") or []
        return list(ids.values()) if isinstance(ids, dict) else list(ids)

    def add_favorite(self, customer_id: str, operator_id: str) -> None:
        current = self.get_favorites(customer_id)
        if operator_id not in current:
            record = {"customer_id": customer_id, "operator_ids": [*current, operator_id]}
            self.save("favorites", record, customer_id)

    def remove_favorite(self, customer_id: str, operator_id: str) -> None:
        current = self.get_favorites(customer_id)
        if operator_id in current:
            remaining = [o for o in current if o != operator_id]
            self.save(
                "favorites", {"customer_id": customer_id, "operator_ids": remaining}, customer_id
            )

    # ------------------------------------------------------------------------ content
    def get_content_items(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        items = self.list("content_items")
        return [i for i in items if operator_id is None or i.get("operator_id") == operator_id]

    def save_content_item(self, data: dict[str, Any]) -> str:
        return self.save("content_items", data)

    def purchase_content(self, customer_id: str, content_id: str) -> dict[str, Any]:
        """Record a purchase and its transaction; the customer's credits pay for it.

        The three writes (content_purchases, transactions, customers) are not atomic together,
        and cannot be: they land in three JSON files that the PHP application reads and writes
        one by one, with no transaction spanning files, and JSON is the truth in every phase
        that writes it. So they come in the order that fails safe: the purchase, then its
        transaction, and the debit of the credits last; a crash in between leaves a purchase
        the customer has not paid for yet (visible, repairable), never credits taken for
        nothing. Purchases of one customer take turns (`_record_turn`), so two at once cannot
        both spend the same credits.
        """
        with self._record_turn("customers", customer_id):
            item = self._require("content_items", content_id)
            customer = self._require("customers", customer_id)
            price = item.get("price") or 0
            billing = dict(customer.get("billing") or {})
            credits = billing.get("credits") or 0
            if credits < price:
                raise ValueError(
                    f"customer {customer_id} has {credits} credits; {content_id} costs {price}"
                )
            billing["credits"] = credits - price
            billing["total_spent"] = (billing.get("total_spent") or 0) + price
            customer["billing"] = billing
            purchase = {
                "purchase_id": new_id("purchase"),
                "customer_id": customer_id,
                "content_id": content_id,
                "price": price,
                "purchased_at": _now_php(),
            }
            self.save("content_purchases", purchase)
            self.record_transaction(
                {
                    "customer_id": customer_id,
                    "operator_id": item.get("operator_id"),
                    "transaction_type": "content_purchase",
                    "amount": -price,
                    "description": f"purchase {purchase['purchase_id']}",
                }
            )
            self.save("customers", customer, customer_id)
            return purchase

    # ------------------------------------------------------------------------ notifications
    def get_notifications(self, user_id: str, unread_only: bool = False) -> list[dict[str, Any]]:
        found = self._where(
            "notifications", "user_id", user_id, lambda d: d.get("user_id") == user_id
        )
        return [n for n in found if not unread_only or not n.get("read")]

    def create_notification(self, data: dict[str, Any]) -> str:
        data.setdefault("read", False)
        data.setdefault("created_at", _now_php())
        return self.save("notifications", data)

    def mark_notification_read(self, notification_id: str) -> None:
        data = self._require("notifications", notification_id)
        if not data.get("read"):
            data["read"] = True
            self.save("notifications", data, notification_id)

    # ------------------------------------------------------------------------ transactions
    def get_transactions(self, user_id: str) -> list[dict[str, Any]]:
        """Transactions where the user is the paying customer or the earning operator."""
        found: dict[str, dict[str, Any]] = {}
        for column in ("customer_id", "operator_id"):
            for data in self._where(
                "transactions", column, user_id, lambda d, c=column: d.get(c) == user_id
            ):
                found[str(data.get("transaction_id"))] = data
        return list(found.values())

    def record_transaction(self, data: dict[str, Any]) -> str:
        data.setdefault("created_at", _now_php())
        return self.save("transactions", data)

    # ------------------------------------------------------------------------ operator requests
    def get_operator_requests(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        items = self.list("operator_requests")
        return [r for r in items if operator_id is None or r.get("operator_id") == operator_id]

    def create_operator_request(self, data: dict[str, Any]) -> str:
        data.setdefault("status", "pending")
        data.setdefault("created_at", _now_php())
        return self.save("operator_requests", data)

    # ------------------------------------------------------------------------ logins
    def find_login(self, login: str | int) -> tuple[str, StoredRecord] | None:
        """The customer, operator or admin account `login` names, by the PHP application's
        rule (auth.py); auth.AmbiguousLogin when it could name several."""
        return auth.find_login(self, login)

    def _login_candidates(self, login: str | int) -> auth.LoginCandidates:
        """What `login` could name in the three login files, in one round trip on PostgreSQL."""
        return self._pg_or_json(
            auth.LOGIN_ENTITIES,
            None,
            lambda conn: auth.pg_candidates(conn, login),
            lambda: auth.json_candidates(self, login),
        )

    def authenticate(self, login: str | int, password: str) -> AuthResult:
        """Check a login's password; failed attempts are counted in account_locks (auth.py).

        Works in every phase and during a PostgreSQL outage (reads fall back to JSON, the
        attempt counter is written like any other record), and with one login file unreadable
        (the other kinds of account still log in).
        """
        return auth.authenticate(self, login, password)

    # ------------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """Phase, reachability, breaker, outbox, intents, quarantine, files (health.py)."""
        return health(self)
