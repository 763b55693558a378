"""The data layer's phases, fallback, dual writes, outbox and logins, on real files and a real
PostgreSQL. A loopback proxy that can be cut plays the database outage."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.storage.layer.breaker import BreakerState
from provisioner.storage.layer.datalayer import DataLayer, DataUnavailable
from provisioner.storage.layer.phase import Phase, write_phase
from provisioner.storage.passwords import hash_password
from tests.datalayer_support import (
    FIXTURE_AEIMS,
    closed_port_dsn,
    copy_root,
    layer_in,
    migrate,
    pg_record,
)
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


@pytest.fixture
def dsn(fresh_pg_dsn: str) -> str:
    migrate(fresh_pg_dsn)
    return fresh_pg_dsn


@pytest.fixture
def proxy(dsn: str) -> Any:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    proxy = TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    proxy.dsn = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
    yield proxy
    proxy.cut()


def customers_file(root: Path) -> dict[str, Any]:
    return json.loads((root / "data/customers.json").read_text())["customers"]


def alice_update(layer: DataLayer, credits: int) -> dict[str, Any]:
    alice = layer.get_customer("alice")
    assert alice is not None
    alice["billing"]["credits"] = credits
    layer.save_customer(alice)
    return alice


# ---------------------------------------------------------------------------------------- phases
def test_json_only_never_touches_postgresql(root: Path) -> None:
    write_phase(root, Phase.JSON_ONLY)
    layer = DataLayer(root, closed_port_dsn())  # unreachable: would fail if ever used

    alice_update(layer, 99)

    assert customers_file(root)["cust_alice"]["billing"]["credits"] == 99
    assert layer.breaker.state == BreakerState.CLOSED  # never tried


def test_dual_write_read_json_writes_both_and_reads_json(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)

    alice_update(layer, 41)

    assert customers_file(root)["cust_alice"]["billing"]["credits"] == 41
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 41
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE customers SET email = 'pg-only@example.test' WHERE customer_id = 'cust_alice'"
        )
    assert layer.get_customer("cust_alice")["email"] != "pg-only@example.test"


def test_dual_write_read_pg_reads_postgresql_and_writes_both(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE customers SET display_name = 'From PG' WHERE customer_id = 'cust_alice'"
        )

    assert layer.get_customer("alice")["profile"]["display_name"] == "From PG"
    alice_update(layer, 7)
    assert customers_file(root)["cust_alice"]["billing"]["credits"] == 7
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 7


def test_pg_only_stops_json_writes(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.PG_ONLY)
    before = (root / "data/customers.json").read_bytes()

    alice_update(layer, 3)

    assert (root / "data/customers.json").read_bytes() == before
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 3


def test_pg_only_refuses_writes_it_cannot_make(root: Path, dsn: str, proxy: Any) -> None:
    layer = layer_in(root, proxy.dsn, Phase.PG_ONLY)
    alice = layer.get_customer("alice")
    proxy.cut()

    with pytest.raises(DataUnavailable, match="pg_only"):
        layer.save_customer({**alice, "email": "lost@example.test"})
    assert pg_record(dsn, "customers", "cust_alice")["email"] != "lost@example.test"


def test_use_database_false_forces_json_only_at_once(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)
    emergency = DataLayer(root, dsn, use_database=False)

    assert emergency.phase().phase == Phase.JSON_ONLY
    assert emergency.phase().override == "USE_DATABASE=false"
    alice_update(emergency, 55)
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] != 55
    layer.close()


def test_use_json_false_stops_json_writes(root: Path, dsn: str) -> None:
    layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG).close()
    no_json = DataLayer(root, dsn, use_json=False)
    before = (root / "data/customers.json").read_bytes()

    alice_update(no_json, 66)

    assert (root / "data/customers.json").read_bytes() == before
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 66


def test_connection_is_lazy(root: Path) -> None:
    layer = DataLayer(root, closed_port_dsn())
    assert layer._pool is None
    layer.set_phase(Phase.DUAL_WRITE_READ_JSON)
    assert layer.get_customer("alice") is not None
    assert layer._pool is None  # reads from JSON need no connection


# ------------------------------------------------------------------------- fallback and breaker
def test_reads_fall_back_to_json_while_postgresql_is_down(root: Path, dsn: str, proxy: Any) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_PG, retry_seconds=60)
    assert layer.get_customer("alice")["username"] == "alice"
    proxy.cut()

    assert layer.get_customer("alice")["username"] == "alice"
    assert layer.breaker.state == BreakerState.OPEN


def test_breaker_lets_one_request_per_window_try_the_database(
    root: Path, dsn: str, proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_PG, retry_seconds=60)
    layer.get_customer("alice")
    proxy.cut()
    caplog.set_level(logging.INFO, logger="provisioner.storage")

    for _ in range(50):
        assert layer.get_customer("alice") is not None

    attempts = [r for r in caplog.records if '"read_fallback"' in r.getMessage()]
    opened = [r for r in caplog.records if '"breaker_open"' in r.getMessage()]
    assert len(attempts) == 1 and len(opened) == 1


def test_breaker_closes_when_the_database_is_back(root: Path, dsn: str, proxy: Any) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_PG, retry_seconds=0.0)
    layer.get_customer("alice")
    proxy.cut()
    layer.get_customer("alice")
    assert layer.breaker.state == BreakerState.OPEN
    proxy.restore()

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET display_name = 'Back' WHERE customer_id = 'cust_alice'")
    assert layer.get_customer("alice")["profile"]["display_name"] == "Back"
    assert layer.breaker.state == BreakerState.CLOSED


def test_missing_row_in_postgresql_is_not_found_not_a_json_lookup(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM customers WHERE customer_id = 'cust_alice'")

    assert layer.get_customer("alice") is None


# ------------------------------------------------------------------------------------ outbox
def test_failed_postgresql_write_goes_to_the_outbox_and_replays(
    root: Path, dsn: str, proxy: Any
) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_JSON, retry_seconds=0.0)
    proxy.cut()

    alice_update(layer, 12)

    assert customers_file(root)["cust_alice"]["billing"]["credits"] == 12
    assert layer.outbox.depth() == 1
    assert layer.health()["degraded"] is True
    proxy.restore()

    assert layer.reconcile() == 1
    assert layer.outbox.depth() == 0
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 12


def test_outbox_drains_by_itself_on_the_next_successful_connection(
    root: Path, dsn: str, proxy: Any
) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_PG, retry_seconds=0.0)
    proxy.cut()
    alice_update(layer, 13)
    assert layer.outbox.depth() == 1
    proxy.restore()

    layer.get_customer("bob")  # any request that reaches the database

    assert layer.outbox.depth() == 0
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 13


def test_outbox_survives_a_new_process(root: Path, dsn: str, proxy: Any) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_JSON, retry_seconds=0.0)
    proxy.cut()
    alice_update(layer, 14)
    layer.close()
    proxy.restore()

    restarted = DataLayer(root, proxy.dsn)
    assert restarted.outbox.depth() == 1
    assert restarted.reconcile() == 1
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 14


def test_replaying_twice_or_after_newer_writes_never_restores_an_old_state(
    root: Path, dsn: str, proxy: Any
) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_JSON, retry_seconds=0.0)
    proxy.cut()
    alice_update(layer, 1)
    alice_update(layer, 2)
    proxy.restore()
    entries = layer.outbox.entries()

    layer.reconcile()
    layer._replay(entries)  # a crash between apply and removal replays the same entries

    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 2
    with psycopg.connect(dsn) as conn:
        xmin = conn.execute(
            "SELECT xmin::text FROM customers WHERE customer_id = 'cust_alice'"
        ).fetchone()
        layer._replay(entries)
        again = conn.execute(
            "SELECT xmin::text FROM customers WHERE customer_id = 'cust_alice'"
        ).fetchone()
    assert xmin == again  # applied once: the re-upsert changed nothing


def test_writes_wait_behind_a_non_empty_outbox(root: Path, dsn: str, proxy: Any) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_JSON, retry_seconds=3600)
    proxy.cut()
    alice_update(layer, 21)
    proxy.restore()
    layer.breaker.succeeded()  # the database is back, but nothing drained yet
    layer._last_drain_try = float("inf")  # and no drain is attempted in this test

    alice_update(layer, 22)

    assert layer.outbox.depth() == 2  # queued behind the first, not written around it


# ------------------------------------------------------------------------------------- logins
def test_authenticate_customer_operator_and_admin_by_username_or_email(root: Path) -> None:
    layer = DataLayer(root)

    customer = layer.authenticate("alice", "fixture-password-1")
    by_email = layer.authenticate("ALICE@example.test", "fixture-password-1")
    operator = layer.authenticate("jade", "fixture-operator-password")
    admin = layer.authenticate("admin", "fixture-admin-password")

    assert customer.ok and customer.kind == "customer" and customer.key == "cust_alice"
    assert by_email.ok and by_email.key == "cust_alice"
    assert operator.ok and operator.kind == "operator"
    assert admin.ok and admin.kind == "account"
    assert (
        "password_hash" not in customer.record
        and "password_plaintext_for_testing" not in customer.record
    )


def test_authenticate_accepts_2b_and_argon2id_hashes(root: Path) -> None:
    from argon2 import PasswordHasher

    layer = DataLayer(root)
    bob = {**layer.get_customer("cust_bob"), "active": True}
    layer.save_customer({**bob, "password_hash": "$2b$04$" + hash_password("b-pass", 4)[7:]})
    assert layer.authenticate("cust_bob", "b-pass").ok is False  # ids are not logins
    assert layer.authenticate(bob["username"], "b-pass").ok
    layer.save_customer({**bob, "password_hash": PasswordHasher().hash("argon-pass")})
    assert layer.authenticate(bob["username"], "argon-pass").ok


def test_failed_logins_are_counted_and_lock_the_login(root: Path) -> None:
    layer = DataLayer(root)
    for _ in range(4):
        assert layer.authenticate("alice", "wrong").reason == "invalid"
    lock = layer.get("account_locks", "alice")
    assert lock["attempts"] == 4 and lock["locked_at"] is None

    assert layer.authenticate("alice", "wrong").reason == "invalid"
    assert layer.authenticate("alice", "fixture-password-1").reason == "locked"
    assert isinstance(layer.get("account_locks", "alice")["locked_at"], int)


def test_a_successful_login_clears_earlier_failures(root: Path) -> None:
    layer = DataLayer(root)
    layer.authenticate("alice", "wrong")
    assert layer.authenticate("alice", "fixture-password-1").ok
    assert layer.get("account_locks", "alice") is None


def test_logins_work_while_postgresql_is_down(root: Path, dsn: str, proxy: Any) -> None:
    layer = layer_in(root, proxy.dsn, Phase.DUAL_WRITE_READ_PG)
    proxy.cut()

    assert layer.authenticate("alice", "fixture-password-1").ok
    assert layer.authenticate("jade", "fixture-operator-password").ok


# ---------------------------------------------------------------------------- the API surface
def test_sites_memberships_and_messages_round_trip_through_the_layer(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)
    layer.save_site(
        {
            "site_id": "new_example_test",
            "domain": "new.example.test",
            "name": "New",
            "active": False,
        }
    )
    layer.add_customer_site("cust_alice", "new.example.test")
    layer.set_operator_site(layer.get_operator("jade")["id"], "new.example.test", role="operator")
    conversation = layer.save_conversation({"customer_id": "cust_alice", "operator_id": "op_jade"})
    layer.save_message(
        {"conversation_id": conversation, "sender_id": "cust_alice", "content": "hi \U0001f600"}
    )

    assert layer.get_site("new.example.test")["name"] == "New"
    assert "new.example.test" in layer.customer_sites("cust_alice")
    assert [m["content"] for m in layer.get_messages(conversation)] == ["hi \U0001f600"]
    with psycopg.connect(dsn) as conn:
        memberships = conn.execute(
            "SELECT count(*) FROM customer_sites "
            "WHERE customer_id = 'cust_alice' AND domain = 'new.example.test'"
        ).fetchone()[0]
    assert memberships == 1
    assert layer.delete_site("new_example_test") and layer.get_site("new_example_test") is None


def test_favorites_notifications_transactions_content_and_requests(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)
    layer.add_favorite("cust_alice", "op_jade")
    note = layer.create_notification({"user_id": "cust_alice", "message": "hello"})
    item = layer.save_content_item({"operator_id": "op_jade", "title": "pic", "price": 5})
    purchase = layer.purchase_content("cust_alice", item)
    layer.create_operator_request({"operator_id": "op_jade", "customer_id": "cust_alice"})
    layer.mark_notification_read(note)

    assert "op_jade" in layer.get_favorites("cust_alice")
    assert layer.get_notifications("cust_alice", unread_only=True) == []
    assert purchase["price"] == 5
    assert [t["amount"] for t in layer.get_transactions("cust_alice")] == [-5]
    assert layer.get_customer("alice")["billing"]["credits"] == 20
    assert len(layer.get_operator_requests("op_jade")) == 1
    assert len(layer.get_content_items("op_jade")) == 1
    layer.remove_favorite("cust_alice", "op_jade")
    assert "op_jade" not in layer.get_favorites("cust_alice")


def test_search_uses_the_same_rule_on_both_sides(root: Path, dsn: str) -> None:
    json_side = DataLayer(root)
    pg_side = layer_in(root, dsn, Phase.DUAL_WRITE_READ_PG)

    for text in ("ALI", "example.test", "nobody"):
        assert [c["customer_id"] for c in json_side.search_customers(text)] == [
            c["customer_id"] for c in pg_side.search_customers(text)
        ]
    assert (
        json_side.get_customer("Alice@EXAMPLE.test")["customer_id"]
        == pg_side.get_customer("  alice@example.TEST ")["customer_id"]
    )


def test_health_reports_phase_database_breaker_and_outbox(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    report = layer.health()

    assert report["phase"] == "dual_write_read_json"
    assert report["database"]["reachable"] is True
    assert report["breaker"] == "closed" and report["outbox_depth"] == 0
    assert report["degraded"] is False
    down = DataLayer(root, closed_port_dsn()).health()
    assert down["database"]["reachable"] is False and down["degraded"] is True


def test_pg_only_writes_keep_where_json_had_the_record(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.PG_ONLY)
    with psycopg.connect(dsn) as conn:
        before = conn.execute(
            "SELECT placement FROM operators WHERE operator_id = 'op_jade_001'"
        ).fetchone()[0]

    layer.save_operator({**layer.get_operator("jade"), "status": "away"})

    with psycopg.connect(dsn) as conn:
        after = conn.execute(
            "SELECT placement FROM operators WHERE operator_id = 'op_jade_001'"
        ).fetchone()[0]
    assert before and after == before


def test_a_write_stuck_behind_a_database_lock_ends_in_the_outbox(root: Path, dsn: str) -> None:
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON, statement_timeout=0.3, retry_seconds=0)
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT 1 FROM customers WHERE customer_id = 'cust_alice' FOR UPDATE")

        alice_update(layer, 77)  # returns once the statement times out

        assert customers_file(root)["cust_alice"]["billing"]["credits"] == 77
        assert layer.outbox.depth() == 1
    assert layer.reconcile() == 1
    assert pg_record(dsn, "customers", "cust_alice")["billing"]["credits"] == 77


def test_the_layer_is_importable_from_the_storage_package() -> None:
    from provisioner.storage import DataLayer as Exported

    assert Exported is DataLayer
