"""The cheap paths of the PostgreSQL write side give exactly what the generic paths give.

Writes skip work where it cannot change the result (no back-conversion for values whose round
trip is the identity, memoized timestamp conversions, one reusable canonical JSON encoder) and
send a whole batch as one json_to_recordset statement. These tests pin that nothing else
changed: same column values, same content hash, same refusals, same atomicity, same idempotence,
no deadlocks, and the stored placement kept when a write brings none.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from provisioner.storage.jsonvalues import json_equal
from provisioner.storage.model import StoredRecord
from provisioner.storage.pg import columns as pg_columns
from provisioner.storage.pg.columns import MAPPING_VERSION, RecordMappingError
from provisioner.storage.pg.maps import ENTITY_MAPS
from provisioner.storage.pg.records import count, get_record, upsert_record, upsert_records
from provisioner.storage.pg.rows import from_record, to_record
from provisioner.storage.pg.schema_versions import apply_migrations


@pytest.fixture
def conn(fresh_pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as connection:
        apply_migrations(connection)
        yield connection


def message(key: str, content: str = "hello", **more: Any) -> StoredRecord:
    data = {
        "message_id": key,
        "conversation_id": "conv_1",
        "sender_id": "cust_1",
        "content": content,
        "sent_at": "2025-10-01 12:00:00",
        **more,
    }
    return StoredRecord("messages", key, data, {})


def customer(key: str, *sites: str) -> StoredRecord:
    return StoredRecord(
        "customers", key, {"customer_id": key, "sites": list(sites)}, {"file_key": key}
    )


def xmin(conn: psycopg.Connection, table: str, key_column: str, key: str) -> str:
    query = sql.SQL("SELECT xmin::text FROM {} WHERE {} = %s").format(
        sql.Identifier(table), sql.Identifier(key_column)
    )
    row = conn.execute(query, [key]).fetchone()
    assert row is not None
    return str(row[0])


def assert_round_trip(conn: psycopg.Connection, record: StoredRecord) -> None:
    stored = get_record(conn, record.entity, record.key)
    assert stored is not None
    assert json_equal(stored.data, record.without_plaintext().data), stored.data


# --- conversions ----------------------------------------------------------------------------------

SAMPLE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    1.0,
    5.5,
    12.345,
    1e20,
    "",
    "abc",
    "0",
    "12.50",
    "2025-10-12 09:33:57",
    "2025-10-13T00:30:22+00:00",
    "2025-10-13T02:30:22.123456+02:00",
    "2023-08-15T10:30:00Z",
    "2025-06-15",
    "0000-00-00 00:00:00",
    1760349850,
    [],
    ["a", "b"],
    ["a", 1],
    {},
    {"a": 1},
]


def column_types() -> list[pg_columns.ColumnType]:
    seen: dict[int, pg_columns.ColumnType] = {}
    for mapping in ENTITY_MAPS.values():
        for column in mapping.columns:
            seen.setdefault(id(column.type), column.type)
    return list(seen.values())


def generic_conversion(kind: pg_columns.ColumnType, value: Any) -> tuple[Any, bool] | None:
    """What the plain to_db/from_db round trip says; None when the column refuses the value."""
    try:
        stored = kind.to_db(value)
    except (TypeError, ValueError, ArithmeticError):
        return None
    return stored, json_equal(kind.from_db(stored), value)


@pytest.mark.parametrize("kind", column_types(), ids=lambda kind: kind.sql_type)
def test_every_column_types_shortcuts_agree_with_its_round_trip(
    kind: pg_columns.ColumnType,
) -> None:
    # Twice over: the second pass answers timestamps from the memo, where 1 and True (equal,
    # same hash) must still get different answers.
    for _ in range(2):
        for value in SAMPLE_VALUES:
            expected = generic_conversion(kind, value)
            if expected is None:
                with pytest.raises((TypeError, ValueError, ArithmeticError)):
                    kind.convert(value)
                continue
            stored, exact = kind.convert(value)
            assert (stored, exact) == expected, (kind.sql_type, value)
            assert type(stored) is type(expected[0]), (kind.sql_type, value)


def test_every_column_type_stores_none_as_null_and_gives_none_back() -> None:
    for kind in column_types():
        assert kind.to_db(None) is None and kind.from_db(None) is None, kind.sql_type
        assert kind.convert(None) == (None, True)


def test_the_content_hash_is_the_canonical_one_whatever_the_key_order() -> None:
    data = {
        "message_id": "m1",
        "content": "héllo",
        "billing": {"cost": 0.5, "currency": "EUR"},
        "password_plaintext_for_testing": "secret",
    }
    reordered = dict(reversed(list(data.items())))
    reordered["billing"] = {"currency": "EUR", "cost": 0.5}
    placement = {"file_key": "m1", "list_index": 3}

    first = from_record(StoredRecord("messages", "m1", data, placement))
    second = from_record(
        StoredRecord("messages", "m1", reordered, dict(reversed(placement.items())))
    )

    kept = {k: v for k, v in data.items() if k != "password_plaintext_for_testing"}
    canonical = json.dumps(
        [MAPPING_VERSION, "m1", kept, placement],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert first.content_hash == second.content_hash
    assert first.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_the_image_of_a_flat_message_round_trips_in_python() -> None:
    record = message("m1", sender_type="customer", extra_field=7, read=False, note=None)
    image = from_record(record)

    assert image.extra == {
        "extra_field": 7,
        "read": False,
        "note": None,
        "__absent__": ["billing.cost"],
    }
    assert image.values[4] == datetime(2025, 10, 1, 12, tzinfo=UTC)
    assert json_equal(to_record("messages", image.selected()).data, record.data)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"content": "nul\x00byte"}, r"messages 'm'\.content: contains a NUL character"),
        ({"bad\x00name": 1}, r"messages 'm' \(a field name\): contains a NUL character"),
        ({"content": "half \ud800 pair"}, r"messages 'm'\.content: not valid Unicode text"),
        ({"\udfffname": 1}, r"messages 'm' \(a field name\): not valid Unicode text"),
        ({"billing": {"note": ["x\x00"]}}, r"messages 'm'\.billing\.note\[0\]: contains a NUL"),
        ({"billing": {"cost": 1e20}}, r"messages 'm'\.billing\.cost: the float 1e\+20 cannot"),
        ({1: "x"}, r"messages 'm': field name 1 is not a string"),
        ({"content": b"bytes"}, r"messages 'm'\.content: bytes is not a JSON value"),
    ],
)
def test_unstorable_values_are_refused_where_they_are(data: dict[Any, Any], complaint: str) -> None:
    with pytest.raises(RecordMappingError, match=complaint):
        from_record(StoredRecord("messages", "m", data, {}))


def test_a_key_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(RecordMappingError, match=r"\(the key\): not valid Unicode text"):
        from_record(StoredRecord("messages", "m\ud800", {}, {}))


def test_plaintext_is_dropped_at_any_depth_on_the_flat_path_too() -> None:
    record = StoredRecord(
        "messages",
        "m1",
        {
            "password_plaintext_for_testing": "pw1",
            "meta": {"password_plaintext_for_testing": "pw2"},
        },
        {},
    )
    image = from_record(record)

    assert "pw1" not in json.dumps(image.extra) and "pw2" not in json.dumps(image.extra)
    assert image.extra["meta"] == {}


# --- the batch statement --------------------------------------------------------------------------


def test_typed_columns_hold_the_converted_values(conn: psycopg.Connection) -> None:
    awkward = ['a"b', "c\\d", "{x,y}", "NULL", "", " sp ", "é☃😀", "a\nb"]
    site = StoredRecord(
        "sites",
        "site_ü",
        {
            "site_id": "site_ü",
            "domain": "ü.example",
            "active": False,
            "created_at": "2025-10-13T02:30:22.123456+02:00",
            "categories": awkward,
            "theme": "a JSON string",
            "features": {"nested": [1, 2.5, None, True, "s"]},
            "billing": {"per_minute_rate": 12.345, "minimum_purchase": 0, "currency": "EUR"},
            "stats": {"total_customers": 2**31 - 1, "total_revenue": "7.5"},
        },
        {"file_key": "site_ü"},
    )
    lock = StoredRecord(
        "account_locks", "login:ü", {"attempts": 3, "first_attempt": 1760349850}, {}
    )
    activity = StoredRecord(
        "customer_activity",
        "act_1",
        {"id": "act_1", "timestamp": "2023-08-15T10:30:00Z"},
        {},
    )

    assert upsert_records(conn, [site, lock, activity]) == 3

    assert conn.execute(
        "SELECT domain, active, created_at, categories, theme, features, per_minute_rate, "
        "minimum_purchase, total_customers, total_revenue FROM sites"
    ).fetchone() == (
        "ü.example",
        False,
        datetime(2025, 10, 13, 2, 30, 22, 123456, tzinfo=timezone(timedelta(hours=2))),
        awkward,
        "a JSON string",
        {"nested": [1, 2.5, None, True, "s"]},
        Decimal("12.34"),  # 12.345 rounded half to even, as numeric(12,2) holds it
        Decimal("0.00"),
        2**31 - 1,
        Decimal("7.50"),
    )
    assert conn.execute("SELECT attempts, first_attempt FROM account_locks").fetchone() == (
        3,
        datetime(2025, 10, 13, 10, 4, 10, tzinfo=UTC),
    )
    assert conn.execute("SELECT occurred_at FROM customer_activity").fetchone() == (
        datetime(2023, 8, 15, 10, 30, tzinfo=UTC),
    )
    for record in (site, lock, activity):
        assert_round_trip(conn, record)
    assert upsert_records(conn, [site, lock, activity]) == 0


def test_a_jsonb_column_keeps_null_apart_from_absent(conn: psycopg.Connection) -> None:
    with_null = StoredRecord("sites", "s_null", {"site_id": "s_null", "theme": None}, {})
    without = StoredRecord("sites", "s_absent", {"site_id": "s_absent"}, {})

    upsert_records(conn, [with_null, without])

    assert conn.execute("SELECT count(*) FROM sites WHERE theme IS NULL").fetchone() == (2,)
    assert_round_trip(conn, with_null)
    assert_round_trip(conn, without)


def test_a_message_batch_is_written_whole_or_not_at_all(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE messages ADD CONSTRAINT no_boom CHECK (content <> 'boom')")
    batch = [message("m1"), message("m2", "boom"), message("m3")]

    with pytest.raises(errors.CheckViolation):
        upsert_records(conn, batch)

    assert count(conn, "messages") == 0


def test_records_of_several_entities_are_one_transaction(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE messages ADD CONSTRAINT no_boom CHECK (content <> 'boom')")

    with pytest.raises(errors.CheckViolation):
        upsert_records(conn, [customer("c1", "a.example"), message("m1", "boom")])

    assert count(conn, "customers") == 0
    assert conn.execute("SELECT count(*) FROM customer_sites").fetchone() == (0,)


def test_inside_the_callers_transaction_the_write_is_part_of_it(conn: psycopg.Connection) -> None:
    with conn.transaction():
        assert upsert_records(conn, [message("m1"), message("m2")]) == 2
        assert upsert_records(conn, [customer("c1", "a.example")]) == 1
        raise psycopg.Rollback

    assert count(conn, "messages") == 0
    assert count(conn, "customers") == 0


def test_without_autocommit_the_batch_is_committed(
    conn: psycopg.Connection, fresh_pg_dsn: str
) -> None:
    with psycopg.connect(fresh_pg_dsn) as manual:
        assert upsert_records(manual, [message("m1"), message("m2")]) == 2
        assert count(conn, "messages") == 2
        assert upsert_records(manual, [customer("c1", "a.example")]) == 1
        assert count(conn, "customers") == 1


def test_one_key_twice_in_a_message_batch_stores_the_last(conn: psycopg.Connection) -> None:
    first, last = message("m1", "first"), message("m1", "last")

    assert upsert_records(conn, [first, last]) == 1
    assert_round_trip(conn, last)
    before = xmin(conn, "messages", "message_id", "m1")

    assert upsert_records(conn, [first, last]) == 0
    assert xmin(conn, "messages", "message_id", "m1") == before


def test_only_changed_rows_are_rewritten_and_counted(conn: psycopg.Connection) -> None:
    messages = [message(f"m{n}") for n in range(5)]
    customers = [customer(f"c{n}", f"site{n}.example") for n in range(3)]
    upsert_records(conn, messages + customers)
    before = {key: xmin(conn, "messages", "message_id", key) for key in ("m0", "m1")}
    sites_before = conn.execute("SELECT xmin::text FROM customer_sites WHERE customer_id = 'c0'")
    kept_membership = sites_before.fetchall()

    messages[1] = message("m1", "edited")
    customers[2] = customer("c2", "moved.example")
    assert upsert_records(conn, messages) == 1
    assert upsert_records(conn, customers) == 1

    assert xmin(conn, "messages", "message_id", "m0") == before["m0"]
    assert xmin(conn, "messages", "message_id", "m1") != before["m1"]
    assert (
        conn.execute("SELECT xmin::text FROM customer_sites WHERE customer_id = 'c0'").fetchall()
        == kept_membership
    )
    assert conn.execute(
        "SELECT domain FROM customer_sites WHERE customer_id = 'c2'"
    ).fetchall() == [("moved.example",)]


@pytest.mark.parametrize("path", ["batch", "single"])
def test_a_write_without_placement_keeps_the_stored_one(
    conn: psycopg.Connection, path: str
) -> None:
    placed = StoredRecord("messages", "m1", {"message_id": "m1", "content": "a"}, {"list_index": 4})
    unplaced = StoredRecord("messages", "m1", {"message_id": "m1", "content": "b"}, {})
    upsert_records(conn, [placed])

    if path == "batch":
        assert upsert_records(conn, [unplaced, message("m2")]) == 2
    else:
        assert upsert_record(conn, unplaced) is True

    stored = get_record(conn, "messages", "m1")
    assert stored is not None
    assert stored.data["content"] == "b" and stored.placement == {"list_index": 4}


def test_a_large_batch_is_one_call(conn: psycopg.Connection) -> None:
    batch = [message(f"m{n:05d}", f"message {n}") for n in range(5000)]

    assert upsert_records(conn, batch) == 5000
    assert upsert_records(conn, batch) == 0
    assert count(conn, "messages") == 5000
    assert_round_trip(conn, batch[4321])


def test_concurrent_batches_over_the_same_keys_do_not_deadlock(fresh_pg_dsn: str) -> None:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as setup:
        apply_migrations(setup)
    errors_seen: list[BaseException] = []

    def writer(number: int) -> None:
        shuffle = random.Random(number).shuffle
        try:
            with psycopg.connect(fresh_pg_dsn, autocommit=True) as own:
                for round_ in range(20):
                    batch: list[StoredRecord] = [
                        message(f"m{n}", f"w{number} r{round_}") for n in range(10)
                    ]
                    batch += [customer(f"c{n}", f"w{number}-r{round_}.example") for n in range(6)]
                    shuffle(batch)
                    upsert_records(own, batch)
        except BaseException as exc:
            errors_seen.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors_seen == []
    with psycopg.connect(fresh_pg_dsn) as check:
        assert count(check, "messages") == 10
        assert check.execute("SELECT count(*) FROM customer_sites").fetchone() == (6,)


def test_each_entitys_sql_is_composed_once_and_reused() -> None:
    """Composing the statements costs more than running one: every call shares them."""
    from provisioner.storage.pg.statements import _statements

    for entity in ENTITY_MAPS:
        assert _statements(entity) is _statements(entity)
