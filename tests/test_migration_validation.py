"""The validation gate against the real PostgreSQL and copies of the real AEIMS files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

from provisioner.migration.backfill import backfill
from provisioner.migration.validation import last_validation, validate
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import write_turn
from provisioner.storage.layer.phase import Phase
from provisioner.storage.pg.records import upsert_record
from tests.datalayer_support import FIXTURE_AEIMS, copy_root, layer_in
from tests.test_migration_backfill import ROOTS, _env, provision

NO_WAIT = (0.05,)


def _loaded(source: Path, tmp_path: Path, dsn: str) -> Path:
    root = copy_root(source, tmp_path / "aeims")
    assert backfill(dsn, root).ok
    return root


def _sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _found(report) -> set[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return {(m.entity, m.key, m.field) for m in report.mismatches}


@pytest.mark.parametrize("source", ROOTS)
def test_after_a_backfill_every_record_matches(
    source: Path, tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _loaded(source, tmp_path, fresh_pg_dsn)

    report = validate(fresh_pg_dsn, root)

    assert report.ok and report.mismatches == []
    lines = report.lines()
    customers = report.entities["customers"].checked
    operators = report.entities["operators"].checked
    assert f"✓ {customers} customers validated" in lines
    assert f"✓ {operators} operators validated" in lines
    assert lines[-2:] == ["✓ 0 mismatches found", "✓ Data integrity: 100%"]
    assert report.records_checked == sum(e.json_records for e in report.entities.values())


def test_a_second_validation_trusts_the_rows_it_proved(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        backfill(conn, root)
        conn.execute("DELETE FROM migration_row_digests")  # as if loaded by another writer

    first = validate(fresh_pg_dsn, root)
    second = validate(fresh_pg_dsn, root)

    assert first.ok and second.ok
    assert sum(e.rebuilt for e in first.entities.values()) == first.records_checked
    assert sum(e.rebuilt for e in second.entities.values()) == 0


@pytest.mark.parametrize("workers", [0, 2], ids=["json-read-here", "json-read-by-workers"])
def test_exactly_the_mismatches_introduced_are_reported(
    tmp_path: Path, fresh_pg_dsn: str, workers: int
) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    _sql(
        fresh_pg_dsn,
        # a changed credit, behind the layer's back (the content hash is left as it was)
        "UPDATE customers SET credits = credits + 5 WHERE customer_id = 'cust_alice'",
        # a removed site membership
        "DELETE FROM customer_sites WHERE customer_id = 'cust_bob' AND listed",
        # a missing row, which leaves its chat room and verification orphans in PostgreSQL only
        "DELETE FROM operators WHERE operator_id = 'op_jade_001'",
    )

    report = validate(fresh_pg_dsn, root, recheck_waits=NO_WAIT, workers=workers)

    bob_domains = {
        m.field for m in report.mismatches if m.key == "cust_bob" and m.entity == "customers"
    }
    assert bob_domains and all(f.startswith("memberships.") for f in bob_domains)
    assert _found(report) == {
        ("customers", "cust_alice", "billing.credits"),
        *(("customers", "cust_bob", f) for f in bob_domains),
        ("operators", "op_jade_001", "(record)"),
        ("chat_rooms", "room_fixture_001", "chat_rooms.operator_id -> operators"),
        ("id_verifications", "verify_fixture1", "id_verifications.operator_id -> operators"),
    }
    credit = next(m for m in report.mismatches if m.field == "billing.credits")
    assert credit.pg_value == credit.json_value + 5
    assert not report.ok and report.integrity_text() != "100%"
    assert "✗ Data integrity:" in report.lines()[-1]
    # The orphans the files hold on purpose are counted, on both sides alike.
    assert {label: n for label, n in report.orphans.items() if n} == {
        "customer_sites.domain -> sites": 1,
        "operator_sites.domain -> sites": 4,
        "chat_rooms.operator_id -> operators": 1,
        "messages.conversation_id -> conversations": 1,
    }


def test_a_json_write_that_never_reached_postgresql_is_found(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    doc["customers"]["cust_alice"]["created_at"] = "2099-01-01 00:00:00"
    path.write_text(json.dumps(doc, indent=4))

    report = validate(fresh_pg_dsn, root, recheck_waits=NO_WAIT)

    assert _found(report) == {("customers", "cust_alice", "created_at")}


def test_timestamps_are_compared_as_instants(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    naive = doc["customers"]["cust_alice"]["created_at"]
    doc["customers"]["cust_alice"]["created_at"] = naive.replace(" ", "T") + "+00:00"
    path.write_text(json.dumps(doc, indent=4))

    report = validate(fresh_pg_dsn, root, recheck_waits=NO_WAIT)

    assert report.ok, [m.line() for m in report.mismatches]


def test_password_hashes_are_compared_but_never_shown(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn) as conn:
        row = conn.execute(
            "SELECT password_hash FROM customers WHERE customer_id = 'cust_alice'"
        ).fetchone()
    assert row is not None
    original = row[0]
    _sql(
        fresh_pg_dsn,
        "UPDATE customers SET password_hash = '$2y$04$" + "x" * 53 + "' "
        "WHERE customer_id = 'cust_alice'",
    )

    report = validate(fresh_pg_dsn, root, recheck_waits=NO_WAIT)

    (mismatch,) = report.mismatches
    assert mismatch.field == "password_hash"
    assert mismatch.json_value.startswith("sha256:") and mismatch.pg_value.startswith("sha256:")
    assert mismatch.json_value != mismatch.pg_value
    text = json.dumps(report.to_json()) + "\n".join(m.line() for m in report.mismatches)
    assert original not in text and "xxxxxxxx" not in text


def test_a_record_written_during_the_validation_is_not_a_mismatch(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    layer = layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON)
    stop = threading.Event()
    writes = 0

    def write_continuously() -> None:
        nonlocal writes
        while not stop.is_set():
            customer = layer.get("customers", "cust_alice")
            assert customer is not None
            customer["billing"]["credits"] = writes
            layer.save("customers", customer, "cust_alice")
            layer.save_message(
                {"message_id": f"msg_live_{writes}", "conversation_id": "conv_x", "content": "hi"}
            )
            writes += 1

    writer = threading.Thread(target=write_continuously)
    writer.start()
    try:
        reports = [validate(fresh_pg_dsn, root) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
        layer.close()

    assert writes > 3
    for report in reports:
        assert report.ok, [m.line() for m in report.mismatches]


def test_a_write_caught_between_its_json_and_postgresql_halves_is_read_whole(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    store = AeimsJsonStore(root)
    record = store.get("customers", "cust_alice")
    assert record is not None
    record.data["billing"]["credits"] = 4242
    json_half_written = threading.Event()

    def slow_dual_write() -> None:
        with write_turn(root, "customers"):
            store.upsert("customers", [record])
            json_half_written.set()
            time.sleep(0.5)
            with psycopg.connect(fresh_pg_dsn) as conn:
                upsert_record(conn, record)

    writer = threading.Thread(target=slow_dual_write)
    writer.start()
    try:
        assert json_half_written.wait(10)
        report = validate(fresh_pg_dsn, root, recheck_waits=NO_WAIT)
    finally:
        writer.join()

    assert report.ok, [m.line() for m in report.mismatches]
    assert report.entities["customers"].rechecked == 1


def test_the_result_is_stored_for_the_gate(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    assert last_validation(fresh_pg_dsn) is None

    report = validate(fresh_pg_dsn, root)
    stored = last_validation(fresh_pg_dsn)

    assert stored is not None and stored.ok
    assert stored.validation_id == report.validation_id
    assert stored.covered_until == report.covered_until <= stored.finished_at
    assert stored.records_checked == report.records_checked
    _sql(fresh_pg_dsn, "UPDATE customers SET email = 'x@y.test' WHERE customer_id = 'cust_bob'")
    validate(fresh_pg_dsn, root, recheck_waits=NO_WAIT)
    latest = last_validation(fresh_pg_dsn)
    assert latest is not None and latest.mismatch_count == 1 and not latest.ok
    assert latest.mismatches[0]["key"] == "cust_bob"
    assert latest.mismatches[0]["postgresql"] == "x@y.test"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_the_command_prints_the_plans_report_and_exits_0(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)

    result = provision(_env(tmp_path, root, fresh_pg_dsn), "validate")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "customers validated" in result.stdout and "operators validated" in result.stdout
    assert result.stdout.rstrip().endswith("0 mismatches found\n✓ Data integrity: 100%")


def test_the_command_lists_mismatches_limited_and_exits_1(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _loaded(FIXTURE_AEIMS, tmp_path, fresh_pg_dsn)
    _sql(
        fresh_pg_dsn,
        "UPDATE customers SET credits = 7777 WHERE customer_id IN ('cust_alice', 'cust_bob')",
    )
    env = _env(tmp_path, root, fresh_pg_dsn)

    human = provision(env, "validate", "--limit", "1")
    as_json = provision(env, "validate", "--json", "--limit", "1")
    every = provision(env, "validate", "--json", "--limit", "0")

    assert human.returncode == as_json.returncode == every.returncode == 1
    assert "2 mismatches found" in human.stdout and "and 1 more" in human.stdout
    assert "billing.credits: JSON" in human.stdout and "PostgreSQL 7777" in human.stdout
    body = json.loads(as_json.stdout)
    assert body["failed"] is True and body["mismatch_count"] == 2
    assert len(body["mismatches"]) == 1
    assert body["mismatches"][0] | {"json": None} == {
        "entity": "customers",
        "key": "cust_alice",
        "field": "billing.credits",
        "json": None,
        "postgresql": 7777,
    }
    assert len(json.loads(every.stdout)["mismatches"]) == 2


def test_validating_before_any_schema_exits_2(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")

    result = provision(_env(tmp_path, root, fresh_pg_dsn), "validate")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "backfill" in result.stderr
