"""The generated dataset's activity: rooms, conversations, messages, content, favorites,
notifications, transactions, requests, verifications, reservations and rate limits.

Each builder yields the records of one entity (with their file keys where the file is an
object), referring to customers and operators through `Names` so that references resolve
(except where AEIMS itself holds orphans).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from provisioner.devdata.aeims_records import (
    REAL_DOMAINS,
    Names,
    iso_offset,
    naive,
    password_for,
    when,
)
from provisioner.devdata.php_text import Money

_CONTENT = ("Hey there!", "How was your day?", "Miss you 💋", "See you tonight", "haha yes")
_USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
)


def chat_rooms(names: Names, rng: random.Random, hashes: list[str]) -> Iterator[dict[str, Any]]:
    for i in range(names.counts["chat_rooms"]):
        protected = i % 3 == 2
        yield {
            "room_id": f"room_{i:06d}",
            "operator_id": names.operator_id((i * 5) % names.operators),
            "room_name": f"Room {i}",
            "description": "Welcome to my exclusive VIP room! 💋",
            "pin_protected": protected,
            "pin_code": hashes[i % len(hashes)] if protected else None,
            "entry_fee": 0 if i % 3 == 0 else Money(5 * (i % 3)),
            "per_minute_rate": round(1.49 + rng.randrange(300) / 100, 2),
            "created_at": naive(when(rng)),
            "status": "active",
            "max_users": 5 + rng.randrange(20),
            "current_users": [],
        }


def room_messages(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    rooms = max(1, names.counts["chat_rooms"])
    for i in range(names.counts["room_messages"]):
        mid = f"rmsg_{i:07d}"
        yield (
            mid,
            {
                "message_id": mid,
                "room_id": f"room_{i // 4 % rooms:06d}",
                "sender_id": names.customer_id(rng.randrange(max(1, names.customers))),
                "sender_type": "customer",
                "content": _CONTENT[i % len(_CONTENT)],
                "timestamp": iso_offset(when(rng)),
                "read_by": [],
            },
        )


def room_invites(names: Names, rng: random.Random) -> Iterator[dict[str, Any]]:
    rooms = max(1, names.counts["chat_rooms"])
    for i in range(names.counts["room_invites"]):
        created = when(rng)
        yield {
            "invite_id": f"inv_{i:07d}",
            "operator_id": names.operator_id((i * 5) % names.operators),
            "customer_id": names.customer_id(rng.randrange(max(1, names.customers))),
            "room_id": f"room_{i % rooms:06d}",
            "free_minutes": 5,
            "message": "Join me!",
            "status": "pending" if i % 2 else "accepted",
            "created_at": naive(created),
            "expires_at": naive(created + 86_400),
            "responded_at": None,
            "used_at": None,
            "minutes_used": 0,
        }


def conversations(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for k in range(names.counts["conversations"]):
        cid = names.conversation_id(k)
        customer, operator = names.conversation_parties(k)
        created = when(rng)
        yield (
            cid,
            {
                "conversation_id": cid,
                "customer_id": names.customer_id(customer),
                "operator_id": names.operator_id(operator),
                "site_domain": names.home_site(customer),
                "status": "active" if k % 5 else "ended",
                "created_at": naive(created),
                "last_activity": naive(created + rng.randrange(86_400)),
                "billing_info": {
                    "message_count": 4,
                    "total_customer_paid": round(rng.randrange(2000) / 100, 2),
                    "total_operator_earned": round(rng.randrange(1000) / 100, 2),
                },
            },
        )


def messages(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    """Two per customer, four per conversation (when there are conversations)."""
    conversations = max(1, names.counts["conversations"])
    for m in range(names.counts["messages"]):
        k = m // 4 % conversations
        customer, operator = names.conversation_parties(k)
        from_customer = m % 2 == 0
        mid = f"msg_{m:08d}"
        record = {
            "message_id": mid,
            "conversation_id": names.conversation_id(k),
            "sender_type": "customer" if from_customer else "operator",
            "sender_id": names.customer_id(customer)
            if from_customer
            else names.operator_id(operator),
            "content": _CONTENT[m % len(_CONTENT)],
            "content_type": "text",
            "sent_at": naive(when(rng)),
        }
        if from_customer:
            record["billing"] = {"cost": 0.5}
        yield mid, record


def content_items(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for i in range(names.counts["content_items"]):
        key = f"content_{i:07d}"
        created = when(rng)
        yield (
            key,
            {
                "content_id": key,
                "item_id": key,
                "operator_id": names.operator_id(i * 2 % names.operators),
                "type": "photo" if i % 3 else "video",
                "title": f"Set {i}",
                "description": "Exclusive",
                "price": round(1.99 + rng.randrange(2000) / 100, 2),
                "file_url": f"/uploads/content/{key}.jpg",
                "thumbnail_url": f"/uploads/content/thumbs/{key}.jpg",
                "tags": ["exclusive"],
                "status": "active",
                "created_at": naive(created),
                "updated_at": naive(created),
                "views": rng.randrange(1000),
                "purchases": rng.randrange(50),
                "earnings": round(rng.randrange(50_000) / 100, 2),
            },
        )


def content_purchases(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    items = max(1, names.counts["content_items"])
    for i in range(names.counts["content_purchases"]):
        key = f"purchase_{i:07d}"
        item = rng.randrange(items)
        yield (
            key,
            {
                "purchase_id": key,
                "item_id": f"content_{item:07d}",
                "customer_id": names.customer_id(rng.randrange(names.customers)),
                "operator_id": names.operator_id(item * 2 % names.operators),
                "price_paid": round(1.99 + rng.randrange(2000) / 100, 2),
                "purchased_at": naive(when(rng)),
                "access_granted": True,
            },
        )


def favorites(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    """customer_id -> operator ids; 1 in 10 as PHP writes a filtered list: {"1": ...}."""
    for i in range(names.counts["favorites"]):
        ids = [names.operator_id(rng.randrange(names.operators)) for _ in range(1 + i % 3)]
        value: Any = list(dict.fromkeys(ids))
        if i % 10 == 9:
            value = {str(pos + 1): op for pos, op in enumerate(value)}
        yield names.customer_id(i * 10 % max(1, names.customers)), value


def notifications(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    conversations = max(1, names.counts["conversations"])
    for i in range(names.counts["notifications"]):
        key = f"notif_{i:07d}"
        yield (
            key,
            {
                "notification_id": key,
                "user_id": names.customer_id(i * 5 % max(1, names.customers)),
                "type": "message",
                "title": "New message",
                "message": "You have a new message",
                "link": f"/messages/{names.conversation_id(i % conversations)}",
                "read": i % 3 == 0,
                "created_at": iso_offset(when(rng)),
            },
        )


def transactions(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for i in range(names.counts["transactions"]):
        key = f"txn_{i:07d}"
        n = i * 2 % max(1, names.customers)
        yield (
            key,
            {
                "transaction_id": key,
                "customer_id": names.customer_id(n),
                "operator_id": names.operator_id(rng.randrange(names.operators)),
                "site_id": names.home_site(n).replace(".", "_"),
                "transaction_type": "purchase" if i % 4 else "chat",
                "amount": round(rng.randrange(10_000) / 100, 2),
                "currency": "USD",
                "status": "completed",
                "description": "Credits",
                "created_at": naive(when(rng)),
            },
        )


def operator_requests(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for i in range(names.counts["operator_requests"]):
        key = f"req_{i:07d}"
        created = when(rng)
        yield (
            key,
            {
                "request_id": key,
                "operator_id": names.operator_id(i * 5 % names.operators),
                "customer_id": names.customer_id(rng.randrange(max(1, names.customers))),
                "type": "private_show",
                "message": "Are you free tonight?",
                "duration": 15,
                "price": 29.99,
                "status": "pending",
                "created_at": naive(created),
                "expires_at": naive(created + 3600),
                "responded_at": None,
            },
        )


def activities_listed(names: Names, rng: random.Random, count: int) -> Iterator[dict[str, Any]]:
    """The old shape: an id, activity_type, a naive timestamp, data as an object."""
    for i in range(count):
        n = rng.randrange(max(1, names.customers))
        data: dict[str, Any] = (
            {"ip": "127.0.0.1", "user_agent": _USER_AGENTS[i % 3]}
            if i % 3
            else {"message_count": 5, "credits_used": 2.5}
        )
        yield {
            "id": f"act_{i + 1:06d}",
            "customer_id": names.customer_id(n),
            "activity_type": "login" if i % 3 else "message_sent",
            "timestamp": naive(when(rng)),
            "data": data,
        }


def activities_keyed(
    names: Names, rng: random.Random, count: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The newer shape, at top-level keys "0", "1"...: no id, ISO time, `ip: unknown`, `[]`."""
    for i in range(count):
        n = rng.randrange(max(1, names.customers))
        yield (
            str(i),
            {
                "timestamp": iso_offset(when(rng)),
                "customer_id": names.customer_id(n),
                "action": "login",
                "site": names.home_site(n),
                "ip": "unknown" if i % 4 else f"192.0.2.{i % 250}",
                "data": [],
            },
        )


def _verification_operator(names: Names, i: int) -> int:
    """Verifications concern generation-B operators (the uniqid ones), as in AEIMS."""
    first_b = max(1, names.operators // 10)
    return first_b + i % max(1, names.operators // 5)


def _code(names: Names, i: int) -> str:
    return f"VERIFY-{names.h(8, i) % (1 << 32):08X}"


def id_verifications(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for i in range(names.counts["id_verifications"]):
        key = f"verify_{names.h(9, i) % (1 << 52):013x}"
        at = naive(when(rng))
        code = _code(names, i)
        yield (
            key,
            {
                "verification_id": key,
                "operator_id": names.operator_id(_verification_operator(names, i)),
                "status": "override" if i % 4 else "approved",
                "verification_code": code,
                "documents": [],
                "notes": f"Verified with override code: {code}",
                "created_at": at,
                "updated_at": at,
                "reviewed_by": "system_override",
                "reviewed_at": at,
            },
        )


def verification_codes(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for i in range(names.counts["verification_codes"]):
        code = _code(names, i)
        at = naive(when(rng))
        yield (
            code,
            {
                "code": code,
                "generated_by": "system_admin",
                "generated_at": at,
                "expires_at": None,
                "used": True,
                "used_by": names.operator_id(_verification_operator(names, i)),
                "used_at": at,
                "notes": "Test operator",
            },
        )


def username_reservations(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    """Reservations whose user_id points to no record (as in AEIMS)."""
    reserved = list(REAL_DOMAINS)
    for i in range(names.counts["username_reservations"]):
        at = 1_759_572_812 + i * 17
        yield (
            f"test_operator_{at}",
            {
                "original_site": "test.com",
                "reserved_at": iso_offset(at),
                "reserved_sites": reserved,
                "user_id": f"68e0f{names.h(10, i) % (1 << 32):08x}",
                "email": "test@example.com",
            },
        )


def rate_limits(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    for i in range(names.counts["rate_limits"]):
        ip = f"198.51.{i >> 8 & 255}.{i & 255}"
        first = when(rng)
        yield (
            f"login:{ip}",
            {
                "identifier": ip,
                "action": "login",
                "attempts": 1 + rng.randrange(10),
                "first_attempt": first,
                "last_attempt": first + rng.randrange(900),
                "blocked_until": first + 900 if i % 5 == 0 else None,
            },
        )


def test_operator_credentials(names: Names) -> dict[str, Any]:
    """The plaintext file AEIMS keeps (never an entity): usernames capitalized unlike the
    records, the operator's real password."""
    listed = []
    first_b = max(1, names.operators // 10)
    for j in range(first_b, min(first_b + 5, names.operators)):
        if names.operator_generation(j) not in "BC":
            break
        listed.append(
            {
                "site": names.operator_domains(j)[0],
                "username": str(names.operator_username(j)).upper(),
                "email": f"{names.operator_name(j)}{j}@operators.example.test",
                "password": password_for(j),
                "operator_id": names.operator_id(j),
                "category": "premium",
                "verification_code": _code(names, j - first_b),
            }
        )
    return {"created_at": "2025-10-12 09:33:58", "operators": listed}
