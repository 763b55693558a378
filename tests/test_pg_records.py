"""AEIMS records in and out of PostgreSQL: the round-trip rule, idempotent upserts, memberships,
the lookup rule, the analytics views and the REPORT's bugs, on a real PostgreSQL.

Real records come from ../shared/aeims/data when it exists (those tests skip otherwise); invented
records cover every entity, including the ones whose files are empty, with the quirks the
REPORT lists (int 0 vs 5.00, int usernames, five timestamp forms, PHP's [] for objects...).
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from provisioner.storage import logins
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.model import ENTITIES, PLAINTEXT_PASSWORD_FIELDS, StoredRecord
from provisioner.storage.pg import columns as pg_columns
from provisioner.storage.pg import rows as pg_rows
from provisioner.storage.pg import statements as pg_statements
from provisioner.storage.pg.columns import RecordMappingError
from provisioner.storage.pg.maps import ENTITY_MAPS
from provisioner.storage.pg.records import (
    copy_records,
    count,
    delete_record,
    find_by_login,
    get_record,
    iter_records,
    list_records,
    upsert_record,
    upsert_records,
)
from provisioner.storage.pg.schema_versions import apply_migrations
from tests.datalayer_support import FIXTURE_AEIMS, SHARED_AEIMS, copy_root

AEIMS_DATA = Path(__file__).resolve().parents[2] / "shared/aeims/data"
needs_real_data = pytest.mark.skipif(
    not (AEIMS_DATA / "data").is_dir(),
    reason="the real AEIMS files (../shared/aeims/data) are absent",
)
PLAINTEXTS = ("password123", "admin123", "password_plaintext_for_testing")


@pytest.fixture
def conn(fresh_pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as connection:
        apply_migrations(connection)
        yield connection


# --- records --------------------------------------------------------------------------------------


def _read(name: str) -> Any:
    return json.loads((AEIMS_DATA / "data" / f"{name}.json").read_text(encoding="utf-8"))


def real_records() -> list[StoredRecord]:
    """Every record of every real AEIMS file, as the JSON side hands them over."""
    records: list[StoredRecord] = []

    def keyed(entity: str, items: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
        for file_key, rec in items.items():
            if file_key not in skip:
                records.append(StoredRecord(entity, file_key, rec, {"file_key": file_key}))

    keyed("sites", _read("sites")["sites"])
    keyed("domains", _read("domains"))
    keyed("customers", _read("customers")["customers"])
    keyed("accounts", _read("accounts"), skip=("_CREDENTIALS_DOCUMENTATION",))
    keyed("account_locks", _read("account_locks"))
    keyed("id_verifications", _read("id_verifications")["verifications"])
    keyed("verification_codes", _read("verification_codes")["codes"])
    keyed("username_reservations", _read("username_reservations"))
    for index, room in enumerate(_read("chat_rooms")):
        records.append(StoredRecord("chat_rooms", room["room_id"], room, {"list_index": index}))
    activity = _read("customer_activity")
    for index, item in enumerate(activity["activities"]):
        records.append(StoredRecord("customer_activity", item["id"], item, {"list_index": index}))
    for file_key, item in activity.items():
        if file_key.isdigit():
            key = f"activity_{file_key}"
            records.append(StoredRecord("customer_activity", key, item, {"file_key": file_key}))
    # Operators: the union of the two files' copies, keyed by `id`.
    in_data = _read("operators")["operators"]
    in_agents = json.loads((AEIMS_DATA / "agents/data/operators.json").read_text(encoding="utf-8"))
    for file_key, rec in in_data.items():
        agents_copy = in_agents[file_key]
        union = dict(rec)
        for name, value in agents_copy.items():
            union.setdefault(name, value)
        placement = {
            "data_key": file_key,
            "agents_key": file_key,
            "agents_absent": [name for name in union if name not in agents_copy],
        }
        records.append(StoredRecord("operators", union["id"], union, placement))
    return records


def _rec(entity: str, key: str, data: dict[str, Any], **placement: Any) -> StoredRecord:
    return StoredRecord(entity, key, data, placement or {"file_key": key})


def invented_records() -> list[StoredRecord]:
    """Records for every entity, shaped like the PHP code writes them, quirks included."""
    return [
        _rec(
            "sites",
            "newflirts_com",
            {
                "site_id": "newflirts_com",
                "domain": "newflirts.com",
                "name": "New Flirts",
                "description": "Fresh connections — now with emoji 💋",
                "template": "default",
                "active": False,
                "created_at": "2025-11-01T08:00:00+00:00",  # not the usual naive form
                "categories": ["dating", "chat"],
                "theme": {"primary_color": "#123456", "secondary_color": "#abcdef"},
                "features": {"video_chat": False, "voice_calls": True},
                "billing": {"per_minute_rate": 3.5, "minimum_purchase": 10, "currency": "EUR"},
                "stats": {},
            },
        ),
        _rec("sites", "bare_site", {"site_id": "bare_site", "billing": [], "stats": []}),
        _rec(
            "domains",
            "newflirts.com",
            {
                "domain": "newflirts.com",
                "theme": "New Wave",
                "description": "A domain with a date-only expiry and whole-number revenue",
                "services": [],
                "status": "pending",
                "ssl_status": "none",
                "ssl_expires": "2026-01-31",
                "created_at": "2025-11-01T08:00:00Z",
                "last_updated": "2025-11-01 08:00:00",  # naive here, ISO Z elsewhere
                "monthly_revenue": 0,
                "monthly_calls": 0,
                "monthly_messages": 0,
                "uptime_percentage": 100,
                "operators_count": 0,
                "active_users": 0,
            },
        ),
        _rec(
            "customers",
            "cust_inv001",
            {
                "customer_id": "cust_inv001",
                "username": "MixedCase",
                "email": "Mixed.Case@Example.com",
                "password_hash": "$2y$12$abcdefghijklmnopqrstuuJ3Yx1oC7p5u4nqL2z1bM0aN9cK8dE7f",
                "password_plaintext_for_testing": "password123",
                "site_domain": "orphan.example",
                "sites": ["flirts.nyc", "orphan.example"],
                "registration_ip": "unknown",
                "active": False,
                "verified": False,
                "created_at": 1760349850,  # an epoch where naive strings are usual
                "profile": {
                    "display_name": "Mixed 🌟",
                    "bio": "",
                    "preferences": {"language": "fr"},
                    "avatar_url": "",
                    "age_verified": False,
                },
                "billing": {"credits": 12.5, "total_spent": "3.50", "payment_methods": []},
                "stats": {"total_sessions": 0, "last_activity": None},
            },
        ),
        _rec("customers", "cust_inv002", {"customer_id": "cust_inv002"}),
        _rec(
            "customers",
            "cust_inv003",
            {
                "customer_id": "CUST_INV003",  # differs from the key
                "username": "objectsites",
                "email": "objectsites@example.com",
                "sites": {"0": "nycflirts.com", "1": "Flirts.NYC"},  # PHP-objectified list
                "billing": [],  # PHP's empty array where an object is meant
                "created_at": "not a date",
                "stats": {"last_activity": "2025-10-13T00:30:22+00:00"},
            },
        ),
        _rec(
            "customers",
            "cust_inv004",
            {
                "customer_id": "cust_inv004",
                "username": 0,
                "email": "zero@example.com",
                "sites": ["nycflirts.com"],
                "site_domain": "nycflirts.com",
                "billing": {"credits": 10000000000.0, "total_spent": 0},  # too big for numeric
            },
        ),
        _rec(
            "customers",
            "cust_inv005",
            {"customer_id": "cust_inv005", "username": "Ärger", "email": "  Padded@Example.com\t"},
        ),
        _rec("customers", "cust_inv006", {"customer_id": "cust_inv006", "username": 1.5}),
        _rec(
            "operators",
            "op_inv001",
            {
                "id": "op_inv001",
                "username": "NewOp",
                "name": "New Operator",
                "email": "newop@example.com",
                "password_hash": "$2y$12$abcdefghijklmnopqrstuuJ3Yx1oC7p5u4nqL2z1bM0aN9cK8dE7f",
                "status": "suspended",
                "services": ["chat"],
                "verified": False,
                "phone": "+1-555-0100",
                "created_at": "2025-11-01 09:00:00",
                "domains": {
                    "newflirts.com": {"role": "operator", "active": False, "joined": "2025-11-01"},
                    "Orphan-Op.example": {"active": True},
                },
                "settings": {"calls_enabled": False, "chat_enabled": True},
                "profile": {
                    "display_names": {"newflirts.com": "Newbie"},
                    "bios": {"newflirts.com": "Just started"},
                    "specialties": [],
                    "languages": ["English"],
                    "physical_attributes": {},
                },
            },
            data_key="newop",
            agents_key="newop",
            agents_absent=["username"],
        ),
        _rec(
            "operators",
            "op_inv002",
            {"id": "op_inv002", "name": "No Domains", "domains": [], "profile": []},
        ),
        _rec(
            "accounts",
            "newadmin",
            {
                "id": "admin-002",
                "name": "Second Admin",
                "type": "admin",
                "password": "$2y$12$abcdefghijklmnopqrstuuJ3Yx1oC7p5u4nqL2z1bM0aN9cK8dE7f",
                "password_plaintext_for_testing": "admin123",
                "email": "Second@AEIMS.app",
                "created_at": "2025-11-01T08:00:00+00:00",
                "permissions": [],
            },
        ),
        _rec(
            "account_locks",
            "someone@example.com",
            {
                "attempts": 5,
                "first_attempt": 1760349850,
                "locked_at": 1760350000,
                "last_attempt": 1760350000.5,
            },
        ),
        _rec(
            "chat_rooms",
            "room_inv001",
            {
                "room_id": "room_inv001",
                "operator_id": "op_inv001",
                "name": "Newer shape",  # ChatRoomManager writes name/active/members
                "description": "Room 💬",
                "pin_code": None,
                "entry_fee": 0.0,
                "per_minute_rate": 0,
                "active": True,
                "created_at": "2025-11-01T10:00:00+00:00",
                "members": [{"customer_id": "cust_inv001", "total_spent": 0.0}],
                "current_users": 0,
                "total_revenue": 0.0,
                "stats": {"total_members": 0, "total_messages": 0},
            },
            list_index=3,
        ),
        _rec(
            "room_messages",
            "msg_r1",
            {
                "message_id": "msg_r1",
                "room_id": "room_test_001",
                "sender_id": "cust_flirts001",
                "sender_type": "customer",
                "content": "Hello 💋",
                "timestamp": "2025-10-13T18:05:00+00:00",
                "read_by": [],
            },
            list_index=0,
        ),
        _rec(
            "room_invites",
            "inv_1",
            {
                "invite_id": "inv_1",
                "operator_id": "op_test_001",
                "customer_id": "cust_flirts001",
                "room_id": "room_test_001",
                "free_minutes": 10,
                "message": "",
                "status": "pending",
                "created_at": "2025-10-13 18:00:00",
                "expires_at": "2025-10-20 18:00:00",
                "responded_at": None,
                "used_at": None,
                "minutes_used": 0,
            },
            list_index=0,
        ),
        _rec(
            "conversations",
            "conv_1",
            {
                "conversation_id": "conv_1",
                "customer_id": "cust_flirts001",
                "operator_id": "op_test_001",
                "site_domain": "flirts.nyc",
                "status": "active",
                "created_at": "2025-10-13 09:00:00",
                "last_activity": "2025-10-14 22:00:00",
                "billing_info": {
                    "customer_free_messages": 1,
                    "total_customer_paid": 1.5,
                    "total_operator_earned": 0.975,  # more decimals than the column keeps
                    "message_count": 5,
                },
                "last_read_customer": "2025-10-14 22:01:00",
            },
        ),
        _rec(
            "conversations",
            "conv_2",
            {
                "conversation_id": "conv_2",
                "customer_id": "cust_nyc001",
                "operator_id": "op_68eb76056f6e9",
                "site_domain": "nycflirts.com",
                "status": "ended",
                "created_at": "2025-10-14 08:00:00",
                "ended_at": "2025-10-14 09:00:00",
                "billing_info": {"total_customer_paid": 0.0, "message_count": 0},
            },
        ),
        *[
            _rec(
                "messages",
                f"msg_{n}",
                {
                    "message_id": f"msg_{n}",
                    "conversation_id": conversation,
                    "sender_id": sender,
                    "sender_type": "customer" if sender.startswith("cust") else "operator",
                    "content": content,
                    "attachments": [],
                    "sent_at": sent_at,
                    "billing": {
                        "cost": cost,
                        "was_charged": cost > 0,
                        "used_free_message": False,
                        "free_messages_remaining": 0,
                    },
                },
            )
            for n, conversation, sender, content, sent_at, cost in [
                (1, "conv_1", "cust_flirts001", "hi", "2025-10-13 09:00:00", 0.5),
                (2, "conv_1", "op_test_001", "hello!", "2025-10-13 09:01:00", 0),
                (3, "conv_1", "cust_flirts001", "🌹", "2025-10-13 23:59:59", 0.99),
                (4, "conv_1", "cust_flirts001", "next day", "2025-10-14 00:00:00", 0.5),
                (5, "conv_2", "cust_nyc001", "other site", "2025-10-14T08:30:00+00:00", 0.5),
            ]
        ],
        _rec("messages", "msg_6", {"message_id": "msg_6", "sent_at": "yesterday", "content": ""}),
        _rec(
            "content_items",
            "content_1",
            {
                "content_id": "content_1",
                "item_id": "item_1",
                "operator_id": "op_test_001",
                "type": "photo",
                "title": "Sunset",
                "description": "Free sample",
                "price": 0.0,
                "file_url": "/uploads/content/sunset.jpg",
                "thumbnail_url": "/assets/images/content/placeholder.jpg",
                "tags": ["free", "photo"],
                "status": "active",
                "created_at": "2025-10-13 12:00:00",
                "updated_at": "2025-10-13 12:00:00",
                "views": 3,
                "purchases": 1,
                "earnings": 0.0,
            },
            list_index=0,
        ),
        _rec(
            "content_purchases",
            "purchase_1",
            {
                "purchase_id": "purchase_1",
                "item_id": "item_1",
                "customer_id": "cust_flirts001",
                "operator_id": "op_test_001",
                "price_paid": 9.99,
                "purchased_at": "2025-10-13 12:30:00",
                "access_granted": True,
            },
            list_index=0,
        ),
        _rec(
            "favorites",
            "cust_flirts001",
            {"customer_id": "cust_flirts001", "operator_ids": ["op_001", "op_test_001"]},
        ),
        # After array_filter, PHP writes the list as an object keyed "1", "2".
        _rec(
            "favorites",
            "cust_nyc001",
            {"customer_id": "cust_nyc001", "operator_ids": {"1": "op_003"}},
        ),
        _rec(
            "notifications",
            "notif_1",
            {
                "notification_id": "notif_1",
                "user_id": "cust_flirts001",
                "type": "room_invite",
                "title": "🎁 Free Room Invite!",
                "message": "You've been invited to a private room with 10 minutes free!",
                "link": None,
                "read": False,
                "created_at": "2025-10-13T18:00:00+00:00",
                "timestamp": 1760378400,
            },
            list_index=0,
        ),
        _rec(
            "transactions",
            "txn_1",
            {
                "transaction_id": "txn_1",
                "customer_id": "cust_flirts001",
                "operator_id": "op_test_001",
                "amount": 25,
                "transaction_type": "purchase",
                "status": "completed",
                "metadata": {"method": "card", "last4": "4242"},
                "created_at": "2025-10-13 18:00:00",
            },
        ),
        _rec(
            "operator_requests",
            "req_1",
            {
                "request_id": "req_1",
                "operator_id": "op_test_002",
                "customer_id": "cust_cross001",
                "type": "call",
                "message": "Call me?",
                "duration": None,
                "price": None,
                "status": "pending",
                "created_at": "2025-10-13 18:00:00",
                "expires_at": "2025-10-14 18:00:00",
                "responded_at": None,
            },
            list_index=0,
        ),
        _rec(
            "customer_activity",
            "activity_10",
            {
                "timestamp": 1760349850,
                "customer_id": "cust_nycfun25",
                "action": "logout",
                "site": "nycflirts.com",
                "ip": "unknown",
                "data": {},
            },
        ),
        _rec(
            "id_verifications",
            "verify_inv1",
            {
                "verification_id": "verify_inv1",
                "operator_id": "op_inv001",
                "status": "pending",
                "verification_code": "",
                "documents": [{"type": "passport", "url": "/uploads/id/p.jpg"}],
                "notes": "",
                "created_at": "2025-11-01 09:00:00",
                "updated_at": "2025-11-01 09:00:00",
                "reviewed_by": None,
                "reviewed_at": None,
            },
        ),
        _rec(
            "verification_codes",
            "VERIFY-NEW00001",
            {
                "code": "VERIFY-NEW00001",
                "generated_by": "system_admin",
                "generated_at": "2025-11-01 09:00:00",
                "expires_at": "2025-12-31 23:59:59",
                "used": False,
                "used_by": None,
                "used_at": None,
                "notes": "Unused code",
            },
        ),
        _rec(
            "username_reservations",
            "newop",
            {
                "original_site": "newflirts.com",
                "reserved_at": "2025-11-01T09:00:00+00:00",
                "reserved_sites": [],
                "user_id": "68e0f74f3a5cf",
                "email": "newop@example.com",
            },
        ),
        _rec(
            "rate_limits",
            "login:203.0.113.7",
            {
                "identifier": "203.0.113.7",
                "action": "login",
                "attempts": 3,
                "first_attempt": 1760349850,
                "last_attempt": 1760349999,
                "blocked_until": None,
                "history": [1760349850, 1760349900, 1760349999],
            },
        ),
    ]


def assert_round_trip(stored: StoredRecord | None, given: StoredRecord) -> None:
    """`stored` is exactly `given` minus plaintext: keys, values and Python types."""
    expected = given.without_plaintext()
    assert stored is not None, (given.entity, given.key)
    assert (stored.entity, stored.key) == (expected.entity, expected.key)
    assert json_equal(stored.data, expected.data), (given.entity, given.key, stored.data)
    assert json_equal(stored.placement, expected.placement), (given.entity, given.key)


def assert_all_round_trip(conn: psycopg.Connection, records: list[StoredRecord]) -> None:
    for record in records:
        assert_round_trip(get_record(conn, record.entity, record.key), record)
    for entity in {r.entity for r in records}:
        given = {r.key: r for r in records if r.entity == entity}
        listed = list_records(conn, entity)
        assert [r.key for r in listed] == sorted(given)
        for stored in listed:
            assert_round_trip(stored, given[stored.key])


def xmins(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
    """Every row's xmin, by table and a text form of the row's key."""
    out: dict[tuple[str, str], str] = {}
    tables = [(m.table, m.key_column) for m in ENTITY_MAPS.values()]
    tables += [
        ("customer_sites", "customer_id || domain"),
        ("operator_sites", "operator_id || domain"),
    ]
    for table, key in tables:
        query = sql.SQL("SELECT {key}, xmin::text FROM {table}").format(
            key=sql.SQL(key), table=sql.Identifier(table)
        )
        for row_key, xmin in conn.execute(query).fetchall():
            out[(table, row_key)] = xmin
    return out


# --- the round-trip rule --------------------------------------------------------------------------


def test_invented_records_cover_every_entity() -> None:
    assert {r.entity for r in invented_records()} == set(ENTITIES)


def test_the_mapping_alone_round_trips_every_record() -> None:
    """from_record/to_record in Python, with the row as PostgreSQL would give it back."""
    records = invented_records()
    if (AEIMS_DATA / "data").is_dir():
        records += real_records()
    for record in records:
        image = pg_rows.from_record(record)
        assert_round_trip(pg_rows.to_record(record.entity, image.selected()), record)


def test_invented_records_round_trip_exactly(conn: psycopg.Connection) -> None:
    records = invented_records()

    assert upsert_records(conn, records) == len(records)

    assert_all_round_trip(conn, records)
    for entity in ENTITIES:
        assert count(conn, entity) == sum(r.entity == entity for r in records)


@needs_real_data
def test_every_real_record_round_trips_exactly(conn: psycopg.Connection) -> None:
    records = real_records()
    assert {r.entity for r in records} >= {"sites", "customers", "operators", "customer_activity"}

    assert upsert_records(conn, records) == len(records)

    assert_all_round_trip(conn, records)


@needs_real_data
def test_copy_backfill_gives_the_same_rows_and_reruns_as_a_no_op(conn: psycopg.Connection) -> None:
    records = real_records() + invented_records()

    assert copy_records(conn, records) == len(records)
    assert_all_round_trip(conn, records)
    before = xmins(conn)

    assert copy_records(conn, records) == 0
    assert upsert_records(conn, records) == 0
    assert xmins(conn) == before


def test_awkward_values_keep_their_original_while_columns_stay_queryable(
    conn: psycopg.Connection,
) -> None:
    upsert_records(conn, invented_records())

    row = conn.execute(
        "SELECT created_at, credits, total_spent, username, extra FROM customers "
        "WHERE customer_id IN ('cust_inv001', 'cust_inv003', 'cust_inv004') ORDER BY customer_id"
    ).fetchall()
    inv001, inv003, inv004 = row
    # An epoch in a naive-timestamp column: queryable as a time, given back as the int.
    assert inv001[0].isoformat() == "2025-10-13T10:04:10+00:00"
    assert inv001[4]["__orig__"] == {"created_at": 1760349850, "billing.total_spent": "3.50"}
    assert (inv001[1], inv001[2]) == (Decimal("12.50"), Decimal("3.50"))
    # Not a time at all: no column value, the string survives.
    assert inv003[0] is None and inv003[4]["__orig__"]["created_at"] == "not a date"
    assert inv003[4]["__orig__"]["customer_id"] == "CUST_INV003"
    # Too big for numeric(12,2), an int username: kept exactly, username matchable as text.
    assert inv004[1] is None and inv004[4]["__orig__"]["billing.credits"] == 10000000000.0
    assert inv004[3] == "0" and inv004[4]["__orig__"]["username"] == 0
    stored = get_record(conn, "customers", "cust_inv004")
    assert stored is not None and type(stored.data["username"]) is int


def test_money_keeps_int_zero_and_float_five(conn: psycopg.Connection) -> None:
    rooms = [
        _rec("chat_rooms", "r_int", {"room_id": "r_int", "entry_fee": 0}),
        _rec("chat_rooms", "r_float", {"room_id": "r_float", "entry_fee": 5.00}),
    ]
    upsert_records(conn, rooms)

    int_fee = get_record(conn, "chat_rooms", "r_int")
    float_fee = get_record(conn, "chat_rooms", "r_float")
    assert int_fee is not None and float_fee is not None
    assert type(int_fee.data["entry_fee"]) is int and int_fee.data["entry_fee"] == 0
    assert type(float_fee.data["entry_fee"]) is float and float_fee.data["entry_fee"] == 5.0
    fees = conn.execute("SELECT room_id, entry_fee FROM chat_rooms ORDER BY room_id").fetchall()
    assert fees == [("r_float", Decimal("5.00")), ("r_int", Decimal("0.00"))]


SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
    | SAFE_TEXT
    | st.sampled_from(
        [
            "2025-10-12 09:33:57",
            "2025-10-13T00:30:22+00:00",
            "2023-08-15T10:30:00Z",
            "2025-06-15",
            "2025-10-13T02:30:22+02:00",
            "0000-00-00 00:00:00",
            "flirts.nyc",
        ]
    )
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(SAFE_TEXT.filter(lambda k: len(k) <= 8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def any_record(draw: st.DrawFn) -> StoredRecord:
    """A record of any entity whose mapped fields hold values of any JSON type."""
    entity = draw(st.sampled_from(ENTITIES))
    mapping = ENTITY_MAPS[entity]
    key = draw(st.text(min_size=1, max_size=12).filter(lambda k: "\x00" not in k))
    data: dict[str, Any] = {}
    for column in mapping.columns:
        if draw(st.booleans()):
            pg_rows._set_path(data, column.path, draw(JSON_VALUES))
    if mapping.key_field and draw(st.booleans()):
        data[mapping.key_field] = key if draw(st.booleans()) else draw(JSON_VALUES)
    extra = draw(st.dictionaries(st.text(alphabet="abcxyz_", max_size=8), JSON_VALUES, max_size=3))
    for name, value in extra.items():
        data.setdefault(name, value)
    for reserved in ("__orig__", "__absent__"):
        data.pop(reserved, None)
    return StoredRecord(entity, key, data, {"file_key": key})


def test_any_record_of_any_entity_round_trips(conn: psycopg.Connection) -> None:
    """The rule holds generically, not only for the shapes the maps were written for."""

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(record=any_record())
    def check(record: StoredRecord) -> None:
        try:
            upsert_records(conn, [record])
        except RecordMappingError as refused:
            # Only floats whose JSON form has an exponent are refused (jsonb would make them ints).
            assert "cannot be stored and given back as a float" in str(refused)
            return
        assert_round_trip(get_record(conn, record.entity, record.key), record)
        assert upsert_records(conn, [record]) == 0

    check()


# --- plaintext, idempotence, memberships ----------------------------------------------------------


def _all_tables_as_text(conn: psycopg.Connection) -> str:
    names = [
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    ]
    chunks = []
    for name in names:
        query = sql.SQL("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {} t").format(
            sql.Identifier(name)
        )
        row = conn.execute(query).fetchone()
        chunks.append(row[0] if row else "")
    return "\n".join(chunks)


def test_plaintext_passwords_never_reach_the_database(conn: psycopg.Connection) -> None:
    records = invented_records()
    if (AEIMS_DATA / "data").is_dir():
        records += real_records()
    nested = _rec(
        "customers",
        "cust_nested",
        {
            "customer_id": "cust_nested",
            "profile": {"password_plaintext_for_testing": "password123"},
        },
    )
    upsert_records(conn, [*records, nested])
    copy_records(conn, records)

    everything = _all_tables_as_text(conn)
    for secret in PLAINTEXTS:
        assert secret not in everything
    stored = get_record(conn, "customers", "cust_nested")
    assert stored is not None and stored.data == {"customer_id": "cust_nested", "profile": {}}


def test_re_upserting_unchanged_records_changes_nothing(conn: psycopg.Connection) -> None:
    records = invented_records()
    upsert_records(conn, records)
    before = xmins(conn)

    assert upsert_records(conn, records) == 0
    for record in records:
        assert upsert_record(conn, record) is False

    assert xmins(conn) == before


def test_a_changed_record_is_rewritten_with_its_memberships(conn: psycopg.Connection) -> None:
    records = invented_records()
    upsert_records(conn, records)
    before = xmins(conn)
    changed = copy.deepcopy(next(r for r in records if r.key == "cust_inv001"))
    changed.data["sites"] = ["nycflirts.com"]
    changed.data["site_domain"] = "nycflirts.com"

    assert upsert_records(conn, [changed]) == 1

    after = xmins(conn)
    assert after[("customers", "cust_inv001")] != before[("customers", "cust_inv001")]
    assert after[("customers", "cust_inv004")] == before[("customers", "cust_inv004")]
    memberships = conn.execute(
        "SELECT domain, listed, home FROM customer_sites WHERE customer_id = 'cust_inv001'"
    ).fetchall()
    assert memberships == [("nycflirts.com", True, True)]
    assert_round_trip(get_record(conn, "customers", "cust_inv001"), changed)


def test_memberships_are_derived_from_the_records(conn: psycopg.Connection) -> None:
    upsert_records(conn, invented_records())

    customer_rows = conn.execute(
        "SELECT customer_id, domain, listed, home FROM customer_sites ORDER BY 1, 2"
    ).fetchall()
    assert customer_rows == [
        ("cust_inv001", "flirts.nyc", True, False),
        ("cust_inv001", "orphan.example", True, True),
        ("cust_inv003", "flirts.nyc", True, False),  # from the PHP-objectified list, lower-cased
        ("cust_inv003", "nycflirts.com", True, False),
        ("cust_inv004", "nycflirts.com", True, True),
    ]
    operator_rows = conn.execute(
        "SELECT operator_id, domain, role, active, joined::date::text, display_name, bio "
        "FROM operator_sites ORDER BY 1, 2"
    ).fetchall()
    assert operator_rows == [
        ("op_inv001", "newflirts.com", "operator", False, "2025-11-01", "Newbie", "Just started"),
        ("op_inv001", "orphan-op.example", None, True, None, None, None),
    ]


@needs_real_data
def test_memberships_to_domains_without_a_site_are_kept(conn: psycopg.Connection) -> None:
    upsert_records(conn, real_records())
    site_domains = {r[0] for r in conn.execute("SELECT domain FROM sites").fetchall()}

    orphan_customers = conn.execute(
        "SELECT customer_id, domain FROM customer_sites WHERE domain <> ALL(%s)",
        [list(site_domains)],
    ).fetchall()
    assert orphan_customers == [("cust_demo001", "demo.example.com")]
    orphan_operator_domains = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT domain FROM operator_sites WHERE domain <> ALL(%s)",
            [list(site_domains)],
        ).fetchall()
    }
    assert len(orphan_operator_domains) == 9
    assert "beastybitches.com" in orphan_operator_domains


def test_deleting_a_record_deletes_its_memberships(conn: psycopg.Connection) -> None:
    upsert_records(conn, invented_records())

    assert delete_record(conn, "customers", "cust_inv001") is True
    assert delete_record(conn, "customers", "cust_inv001") is False
    assert delete_record(conn, "operators", "op_inv001") is True

    assert get_record(conn, "customers", "cust_inv001") is None
    assert conn.execute(
        "SELECT count(*) FROM customer_sites WHERE customer_id = 'cust_inv001'"
    ).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM operator_sites").fetchone() == (0,)


def test_one_key_twice_in_a_batch_stores_the_last(conn: psycopg.Connection) -> None:
    first = _rec("customers", "c_twice", {"customer_id": "c_twice", "sites": ["a.example"]})
    second = _rec("customers", "c_twice", {"customer_id": "c_twice", "sites": ["b.example"]})

    assert upsert_records(conn, [first, second]) == 1
    assert_round_trip(get_record(conn, "customers", "c_twice"), second)
    assert copy_records(conn, [second, first]) == 1
    assert_round_trip(get_record(conn, "customers", "c_twice"), first)
    domains = conn.execute("SELECT domain FROM customer_sites").fetchall()
    assert domains == [("a.example",)]


def test_a_bad_record_fails_the_batch_and_writes_nothing(conn: psycopg.Connection) -> None:
    good = _rec("messages", "msg_ok", {"message_id": "msg_ok", "content": "fine"})
    bad_cases = [
        (_rec("wishes", "w1", {}), "unknown entity 'wishes'"),
        (_rec("messages", "m", {"__orig__": {}}), "reserved"),
        (_rec("messages", "m", {"content": "nul\x00byte"}), "NUL character"),
        (_rec("messages", "m", {"billing": {"cost": 1e20}}), "messages 'm'.billing.cost"),
        (_rec("messages", "", {}), "non-empty string"),
        (StoredRecord("messages", "m", ["not", "an", "object"]), "data must be an object"),  # type: ignore[arg-type]
    ]
    for bad, complaint in bad_cases:
        with pytest.raises(RecordMappingError, match=complaint):
            upsert_records(conn, [good, bad])
        with pytest.raises(RecordMappingError, match=complaint):
            copy_records(conn, [good, bad])

    assert count(conn, "messages") == 0


# --- the REPORT's bugs ----------------------------------------------------------------------------


@needs_real_data
def test_ids_are_the_aeims_ids(conn: psycopg.Connection) -> None:
    """REPORT bug 4: the PHP inserts dropped the JSON ids, so rows and records diverged."""
    upsert_records(conn, real_records())

    customer_ids = {r[0] for r in conn.execute("SELECT customer_id FROM customers").fetchall()}
    operator_ids = {r[0] for r in conn.execute("SELECT operator_id FROM operators").fetchall()}
    assert customer_ids == set(_read("customers")["customers"])
    assert operator_ids == {rec["id"] for rec in _read("operators")["operators"].values()}
    assert "op_001" in operator_ids and "0" not in operator_ids


@needs_real_data
def test_credits_survive_a_customer_save(conn: psycopg.Connection) -> None:
    """REPORT bug 5: every PHP save wrote top-level `credits` (absent), zeroing the balance."""
    records = {r.key: r for r in real_records() if r.entity == "customers"}
    upsert_records(conn, records.values())
    saved = copy.deepcopy(records["cust_flirts001"])
    saved.data["email"] = "new-address@flirts.nyc"

    upsert_records(conn, [saved])

    assert conn.execute(
        "SELECT credits, total_spent FROM customers WHERE customer_id = 'cust_flirts001'"
    ).fetchone() == (Decimal("25.00"), Decimal("15.00"))
    stored = get_record(conn, "customers", "cust_flirts001")
    assert stored is not None and stored.data["billing"]["credits"] == 25
    assert type(stored.data["billing"]["credits"]) is int


def test_a_false_boolean_saves(conn: psycopg.Connection) -> None:
    """REPORT bug 6: PDO bound false as '', which PostgreSQL rejects for a boolean."""
    operator = _rec(
        "operators",
        "op_false",
        {"id": "op_false", "verified": False, "domains": {"flirts.nyc": {"active": False}}},
    )
    customer = _rec("customers", "c_false", {"customer_id": "c_false", "active": False})

    assert upsert_records(conn, [operator, customer]) == 2

    assert conn.execute("SELECT verified FROM operators").fetchone() == (False,)
    assert conn.execute("SELECT active FROM operator_sites").fetchone() == (False,)
    assert conn.execute("SELECT active FROM customers").fetchone() == (False,)
    assert_round_trip(get_record(conn, "operators", "op_false"), operator)


# --- views ----------------------------------------------------------------------------------------


@needs_real_data
def test_site_summary_gives_the_per_site_numbers_of_the_real_data(conn: psycopg.Connection) -> None:
    upsert_records(conn, real_records())
    customers = _read("customers")["customers"]
    operators = [r.data for r in real_records() if r.entity == "operators"]
    expected: dict[str, dict[str, Any]] = {}
    for cust in customers.values():
        for domain in {*cust["sites"], cust["site_domain"]}:
            row = expected.setdefault(domain, {"customers": 0, "operators": 0, "credits": 0})
            row["customers"] += 1
            row["credits"] += cust["billing"]["credits"]
    for op in operators:
        for domain in op["domains"]:
            expected.setdefault(domain, {"customers": 0, "operators": 0, "credits": 0})
            expected[domain]["operators"] += 1
    for site in _read("sites")["sites"].values():
        expected.setdefault(site["domain"], {"customers": 0, "operators": 0, "credits": 0})

    rows = conn.execute(
        "SELECT domain, site_id, customers, operators, credits FROM site_summary"
    ).fetchall()
    actual = {d: {"customers": c, "operators": o, "credits": cr} for d, _, c, o, cr in rows}
    assert actual == expected
    by_domain = {r[0]: r for r in rows}
    # Spelled out for the three domains that matter most.
    assert by_domain["flirts.nyc"] == ("flirts.nyc", "flirts_nyc", 3, 17, Decimal("225.00"))
    assert by_domain["nycflirts.com"] == (
        "nycflirts.com",
        "nycflirts_com",
        4,
        17,
        Decimal("290.00"),
    )
    assert by_domain["demo.example.com"] == ("demo.example.com", None, 1, 0, Decimal("100.00"))
    assert by_domain["sexacomms.com"][2:] == (0, 0, Decimal("0.00"))


def test_messages_per_day_counts_utc_days(conn: psycopg.Connection) -> None:
    upsert_records(conn, invented_records())

    per_day = conn.execute(
        "SELECT day::text, messages FROM messages_per_day ORDER BY day"
    ).fetchall()
    assert per_day == [("2025-10-13", 3), ("2025-10-14", 2)]
    per_site = conn.execute(
        "SELECT domain, day::text, messages FROM messages_per_site_day ORDER BY 1, 2"
    ).fetchall()
    assert per_site == [
        ("flirts.nyc", "2025-10-13", 3),
        ("flirts.nyc", "2025-10-14", 1),
        ("nycflirts.com", "2025-10-14", 1),
    ]


# --- the lookup rule ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(pg_dsn: str) -> Iterator[psycopg.Connection]:
    """One database holding the invented and real people, shared by the read-only lookups."""
    name = f"t_people_{uuid.uuid4().hex[:12]}"
    admin = psycopg.conninfo.make_conninfo(pg_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as connection:
            apply_migrations(connection)
            records = invented_records()
            if (AEIMS_DATA / "data").is_dir():
                records += real_records()
            upsert_records(connection, records)
            yield connection
    finally:
        with psycopg.connect(admin, autocommit=True) as server:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.parametrize(
    ("entity", "login", "expected_key"),
    [
        ("customers", "MixedCase", "cust_inv001"),
        ("customers", "mixedcase", "cust_inv001"),
        ("customers", "  MIXEDCASE \t", "cust_inv001"),
        ("customers", "mixed.case@example.COM", "cust_inv001"),
        ("customers", "0", "cust_inv004"),
        ("customers", 0, "cust_inv004"),
        ("customers", "objectsites@example.com", "cust_inv003"),
        ("customers", "nobody", None),
        ("customers", "", None),
        ("customers", "   ", None),
        ("customers", None, None),
        ("customers", "cust_inv001", None),  # customers are not found by id
        ("operators", "newop", "op_inv001"),
        ("operators", "NEWOP@example.com", "op_inv001"),
        ("operators", " op_inv002\n", "op_inv002"),  # operators are found by id too...
        ("operators", "OP_INV002", None),  # ...which is case-sensitive
        ("operators", "No Domains", None),
        ("customers", "Ärger", "cust_inv005"),
        ("customers", "ärger", None),  # only ASCII letters fold, as on the JSON side
        ("customers", "padded@example.com", "cust_inv005"),  # stored values are trimmed too
        ("customers", "\u00a0mixedcase", None),  # only ASCII whitespace is trimmed
        ("customers", "1.5", None),  # a float username never matches
        ("customers", True, None),
        ("accounts", "NewAdmin", "newadmin"),
        ("accounts", "second@aeims.app", "newadmin"),
        ("accounts", "admin-002", None),
    ],
)
def test_find_by_login_follows_the_rule(
    people: psycopg.Connection, entity: str, login: Any, expected_key: str | None
) -> None:
    found = find_by_login(people, entity, login)

    assert (found.key if found else None) == expected_key
    if found:
        assert_round_trip(found, next(r for r in invented_records() if r.key == expected_key))


@needs_real_data
@pytest.mark.parametrize(
    ("entity", "login", "expected_key"),
    [
        ("customers", "flirtyuser", "cust_flirts001"),
        ("customers", "USER@FLIRTS.NYC", "cust_flirts001"),
        ("operators", "0", "op_001"),  # an int username matches its string form
        ("operators", 2, "op_003"),
        ("operators", "op_001", "op_001"),
        ("operators", "nycdiamond", "op_68eb76056f6e9"),
        ("operators", "op_test_004", "op_test_004"),
        ("operators", "testop4@AEIMS.test", "op_test_004"),
        ("accounts", "admin", "admin"),
        ("accounts", "Demo@Example.com", "demo@example.com"),
        ("accounts", "admin@aeims.app", "admin"),
    ],
)
def test_find_by_login_on_the_real_records(
    people: psycopg.Connection, entity: str, login: Any, expected_key: str
) -> None:
    found = find_by_login(people, entity, login)

    assert found is not None and found.key == expected_key


LOGIN_SAMPLES: list[tuple[Any, str | None, str | None]] = [
    # (value, normalize_login, normalize_login_id): ASCII case and ASCII whitespace only
    ("  Admin@AEIMS.app\t", "admin@aeims.app", "Admin@AEIMS.app"),
    ("ÄRGER", "Ärger", "ÄRGER"),
    ("\u00a0x\u00a0", "\u00a0x\u00a0", "\u00a0x\u00a0"),
    ("İstanbul", "İstanbul", "İstanbul"),
    ("ǅ", "ǅ", "ǅ"),
    ("\x0b\x0cVT FF\r\n", "vt ff", "VT FF"),
    ("", None, None),
    ("   ", None, None),
    (0, "0", "0"),
    (-7, "-7", "-7"),
    (1.5, None, None),
    (True, None, None),
    (None, None, None),
    (["admin"], None, None),
]


def test_the_login_rule_is_one_rule_in_python_and_in_sql(conn: psycopg.Connection) -> None:
    """One copy of the rule (storage/logins.py) serves both stores; its SQL spelling, which the
    schema's indexes use, gives what the Python one gives."""
    as_login = sql.SQL("SELECT " + logins.LOGIN_SQL).format(sql.SQL("%s::text"))
    as_id = sql.SQL("SELECT " + logins.LOGIN_ID_SQL).format(sql.SQL("%s::text"))
    for sample, login, login_id in LOGIN_SAMPLES:
        assert logins.normalize_login(sample) == login, sample
        assert logins.normalize_login_id(sample) == login_id, sample
        if isinstance(sample, str):
            row = conn.execute(as_login, (sample,)).fetchone()
            assert row is not None and (row[0] or None) == login, sample
            row = conn.execute(as_id, (sample,)).fetchone()
            assert row is not None and (row[0] or None) == login_id, sample


def _logins_to_try(records: list[StoredRecord]) -> list[Any]:
    """Every username, email, id and login of the records, in several spellings."""
    found: list[Any] = ["nobody", "", " ", 0, 1, 2, "0", "OP_001", "Op_Test_004"]
    for record in records:
        for value in (
            record.key,
            record.data.get("id"),
            *(record.data.get(f) for f in ("username", "email")),
        ):
            if isinstance(value, str):
                found += [value, value.upper(), f"  {value.title()}\t"]
            elif isinstance(value, int):
                found += [value, str(value)]
    return found


@needs_real_data
def test_the_json_sides_records_round_trip_and_logins_find_the_same(
    conn: psycopg.Connection,
) -> None:
    """The handover itself: AeimsJsonStore.load of every entity in, the same records out, and
    THE lookup rule giving the same answer on both sides for every login of the real data."""
    store = AeimsJsonStore(AEIMS_DATA)
    records = [record for entity in ENTITIES for record in store.load(entity)]

    upsert_records(conn, records)

    assert_all_round_trip(conn, records)
    everything = _all_tables_as_text(conn)
    assert not [secret for secret in PLAINTEXTS if secret in everything]
    for entity in ("customers", "operators", "accounts"):
        of_entity = [r for r in records if r.entity == entity]
        for login in _logins_to_try(of_entity):
            from_json = store.find_by_login(entity, login)
            from_pg = find_by_login(conn, entity, login)
            assert (from_pg.key if from_pg else None) == (from_json.key if from_json else None), (
                entity,
                login,
            )


def test_invented_records_written_by_the_json_side_round_trip_and_find_the_same(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    """Every entity through the whole chain: AeimsJsonStore writes the invented records into a
    fresh AEIMS root, loads them back, and PostgreSQL keeps and finds exactly what it loaded."""
    (tmp_path / "data").mkdir()
    (tmp_path / "agents/data").mkdir(parents=True)
    writer = AeimsJsonStore(tmp_path)
    for entity in ENTITIES:
        batch = [
            StoredRecord(r.entity, r.key, r.data, {})  # the JSON side chooses where they go
            for r in invented_records()
            if r.entity == entity and r.key != "cust_inv003"  # it refuses an id unlike the key
        ]
        writer.upsert(entity, batch)
    reader = AeimsJsonStore(tmp_path)
    records = [record for entity in ENTITIES for record in reader.load(entity)]
    assert {r.entity for r in records} == set(ENTITIES)

    upsert_records(conn, records)

    assert_all_round_trip(conn, records)
    for entity in ("customers", "operators", "accounts"):
        of_entity = [r for r in records if r.entity == entity]
        for login in [*_logins_to_try(of_entity), "ärger", "PADDED@example.com", "1.5", 1.5]:
            from_json = reader.find_by_login(entity, login)
            from_pg = find_by_login(conn, entity, login)
            assert (from_pg.key if from_pg else None) == (from_json.key if from_json else None), (
                entity,
                login,
            )


def test_find_by_login_prefers_a_username_over_an_email(conn: psycopg.Connection) -> None:
    upsert_records(
        conn,
        [
            _rec("customers", "c_email", {"customer_id": "c_email", "email": "shared"}),
            _rec("customers", "c_user", {"customer_id": "c_user", "username": "Shared"}),
        ],
    )

    found = find_by_login(conn, "customers", "SHARED")
    assert found is not None and found.key == "c_user"


def test_the_customer_lookup_is_one_statement_on_the_lower_indexes(
    people: psycopg.Connection,
) -> None:
    query = pg_statements._statements("customers").find
    assert query is not None and query.count(b"SELECT") == 2  # two probes, one statement
    with people.transaction():
        people.execute("SET LOCAL enable_seqscan = off")
        explained = people.execute(b"EXPLAIN " + query, {"login": "mixedcase"}).fetchall()
    plan = "\n".join(r[0] for r in explained)

    assert "customers_login_username_idx" in plan
    assert "customers_login_email_idx" in plan
    assert "Seq Scan" not in plan


def test_find_by_login_refuses_entities_without_logins(conn: psycopg.Connection) -> None:
    with pytest.raises(RecordMappingError, match="messages has no logins"):
        find_by_login(conn, "messages", "anything")


# --- the message write path and streaming ---------------------------------------------------------


def test_concurrent_single_message_writers_lose_nothing(fresh_pg_dsn: str) -> None:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as setup:
        apply_migrations(setup)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            with psycopg.connect(fresh_pg_dsn, autocommit=True) as own:
                for i in range(100):
                    key = f"msg_w{number}_{i}"
                    message = {
                        "message_id": key,
                        "content": f"#{i}",
                        "sent_at": "2025-10-13 09:00:00",
                    }
                    assert upsert_record(own, _rec("messages", key, message)) is True
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with psycopg.connect(fresh_pg_dsn) as check:
        assert count(check, "messages") == 400
        assert check.execute("SELECT messages FROM messages_per_day").fetchall() == [(400,)]


def test_single_record_upsert_of_a_customer_keeps_memberships_in_step(
    conn: psycopg.Connection,
) -> None:
    record = _rec("customers", "c_one", {"customer_id": "c_one", "sites": ["x.example"]})
    assert upsert_record(conn, record) is True
    record.data["sites"] = ["y.example"]
    assert upsert_record(conn, record) is True

    assert conn.execute("SELECT domain FROM customer_sites").fetchall() == [("y.example",)]


def test_iter_records_streams_in_key_order(conn: psycopg.Connection) -> None:
    messages = [_rec("messages", f"m{n:03d}", {"message_id": f"m{n:03d}"}) for n in range(25)]
    copy_records(conn, messages)

    streamed = iter_records(conn, "messages", batch_size=4)
    first = next(streamed)
    assert first.key == "m000"
    assert [r.key for r in streamed] == [f"m{n:03d}" for n in range(1, 25)]


# --- field order ----------------------------------------------------------------------------------


def key_orders(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], list[str]]]:
    """The key order of every object in `value`, by path (list items by index)."""
    found: list[tuple[tuple[Any, ...], list[str]]] = []
    if isinstance(value, dict):
        found.append((path, list(value)))
        for name, item in value.items():
            found += key_orders(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += key_orders(item, (*path, index))
    return found


def without_plaintext_anywhere(value: Any) -> Any:
    """`value` without plaintext password fields at any depth, in its order."""
    if isinstance(value, dict):
        return {
            name: without_plaintext_anywhere(item)
            for name, item in value.items()
            if name not in PLAINTEXT_PASSWORD_FIELDS
        }
    if isinstance(value, list):
        return [without_plaintext_anywhere(item) for item in value]
    return value


def assert_same_order(stored: StoredRecord | None, given: StoredRecord) -> None:
    """`stored` is `given` minus plaintext (at any depth), every object's keys in its order."""
    expected = without_plaintext_anywhere(given.data)
    assert stored is not None, (given.entity, given.key)
    assert (stored.entity, stored.key) == (given.entity, given.key)
    assert json_equal(stored.data, expected), (given.entity, given.key, stored.data)
    assert json_equal(stored.placement, given.placement), (given.entity, given.key)
    assert key_orders(stored.data) == key_orders(expected), (given.entity, given.key)


def records_of_the_aeims_root(root: Path, tmp_path: Path) -> list[StoredRecord]:
    """Every record of an AEIMS application root, as the JSON side reads them."""
    store = AeimsJsonStore(copy_root(root, tmp_path / root.parent.name))
    return [record for entity in ENTITIES for record in store.load(entity)]


AEIMS_ROOTS = {"fixtures": FIXTURE_AEIMS, "real": SHARED_AEIMS}


@pytest.mark.parametrize("source", sorted(AEIMS_ROOTS))
def test_records_come_back_with_their_fields_in_order_at_every_depth(
    source: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    root = AEIMS_ROOTS[source]
    if not (root / "data").is_dir():
        pytest.skip(f"{root} is absent")
    records = records_of_the_aeims_root(root, tmp_path)
    assert records
    # The files do hold objects whose order jsonb would not keep (customers' nested ones too).
    assert any(pg_rows.from_record(r).order for r in records)

    upsert_records(conn, records)

    for record in records:
        assert_same_order(get_record(conn, record.entity, record.key), record)
    for entity in {r.entity for r in records}:
        given = {r.key: r for r in records if r.entity == entity}
        for stored in list_records(conn, entity):
            assert_same_order(stored, given[stored.key])


@st.composite
def reordered(draw: st.DrawFn, value: Any) -> Any:
    """`value` with the keys of every object (at any depth) in an order of hypothesis' choice."""
    if isinstance(value, dict):
        names = draw(st.permutations(list(value)))
        return {name: draw(reordered(value[name])) for name in names}
    if isinstance(value, list):
        return [draw(reordered(item)) for item in value]
    return value


@st.composite
def any_record_in_any_order(draw: st.DrawFn) -> StoredRecord:
    record = draw(any_record())
    data = draw(reordered(record.data))
    if draw(st.booleans()):
        data[draw(st.sampled_from(["a.b", "password_plaintext_for_testing"]))] = {
            "z": 1,
            "password_plaintext_for_testing": "pw",
            "a": [{"y": 1, "x": {"c.d": 2, "b": 3}}],
        }
    return StoredRecord(record.entity, record.key, data, record.placement)


def test_any_record_in_any_field_order_comes_back_in_that_order(conn: psycopg.Connection) -> None:
    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(record=any_record_in_any_order())
    def check(record: StoredRecord) -> None:
        try:
            image = pg_rows.from_record(record)
        except RecordMappingError as refused:
            assert "cannot be stored and given back as a float" in str(refused)
            return
        assert_same_order(pg_rows.to_record(record.entity, image.selected()), record)
        upsert_records(conn, [record])
        assert_same_order(get_record(conn, record.entity, record.key), record)
        assert upsert_records(conn, [record]) == 0

    check()


def test_only_objects_jsonb_would_reorder_have_their_order_stored() -> None:
    # A message in the order to_record rebuilds by itself: the other fields in jsonb order
    # (shorter first), then the key field, then the columns in map order.
    natural = _rec(
        "messages",
        "m1",
        {
            "note": None,
            "read": False,
            "billing": {"currency": "EUR", "cost": 0.5},
            "message_id": "m1",
            "conversation_id": "conv_1",
            "content": "hi",
        },
    )
    assert pg_rows.from_record(natural).order is None

    shuffled = _rec(
        "messages",
        "m1",
        {
            "message_id": "m1",
            "content": "hi",
            "meta": {"list": [{"b": 1, "a": 2}], "a.b": {"y": 1, "x": 2}},
        },
    )
    order = pg_rows.from_record(shuffled).order
    assert order == [
        [[], ["message_id", "content", "meta"]],
        [["meta"], ["list", "a.b"]],
        [["meta", "list", 0], ["b", "a"]],
        [["meta", "a.b"], ["y", "x"]],
    ]
    assert pg_rows.from_record(shuffled).stored_extra[pg_columns.ORDER_KEY] == order


def test_a_record_given_again_in_another_order_is_rewritten(conn: psycopg.Connection) -> None:
    record = _rec(
        "customers",
        "c1",
        {"customer_id": "c1", "username": "ann", "profile": {"display_name": "A", "bio": "b"}},
    )
    assert upsert_record(conn, record) is True
    assert upsert_record(conn, record) is False

    turned = _rec(
        "customers",
        "c1",
        {"profile": {"bio": "b", "display_name": "A"}, "username": "ann", "customer_id": "c1"},
    )
    assert upsert_record(conn, turned) is True
    assert_same_order(get_record(conn, "customers", "c1"), turned)
    assert upsert_records(conn, [turned]) == 0

    # Back to an order that needs nothing stored: the stored order goes too.
    assert upsert_record(conn, _rec("customers", "c1", {"customer_id": "c1"})) is True
    row = conn.execute("SELECT extra FROM customers WHERE customer_id = 'c1'").fetchone()
    assert row is not None and pg_columns.ORDER_KEY not in row[0]


def test_the_order_key_is_reserved() -> None:
    with pytest.raises(RecordMappingError, match=r"\['__order__'\] are reserved"):
        pg_rows.from_record(_rec("messages", "m1", {"__order__": []}))
