"""Shadow reads: in dual_write_read_json a sampled read is compared with PostgreSQL in the
background; a difference is recorded (entity, key, fields, never a value) and counted, and the
caller never waits for it nor sees an exception."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from provisioner.migration.shadow import ShadowReads, enable_shadow_reads, shadow_differences
from provisioner.storage.layer.phase import Phase
from provisioner.storage.model import StoredRecord
from provisioner.storage.pg import records as pg_records
from tests.datalayer_support import (
    FIXTURE_AEIMS,
    closed_port_dsn,
    copy_root,
    layer_in,
    migrate,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


def change_in_pg(dsn: str, key: str) -> None:
    """A row PostgreSQL holds differently from JSON (as a missed write would leave it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        record = pg_records.get_record(conn, "customers", key)
        assert record is not None
        record.data["billing"] = {**record.data.get("billing", {}), "credits": 999_999}
        pg_records.upsert_records(
            conn, [StoredRecord("customers", key, record.data, record.placement)]
        )


def test_a_difference_is_confirmed_recorded_and_counted(root: Path, fresh_pg_dsn: str) -> None:
    migrate(fresh_pg_dsn)
    layer = layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON)
    shadow = enable_shadow_reads(layer, 1.0, confirm_after=0.1)
    try:
        key = layer.json.load("customers")[0].key
        change_in_pg(fresh_pg_dsn, key)
        json_answer = layer.get("customers", key)
        layer.list("sites")  # equal on both sides: nothing recorded
        shadow.drain()
    finally:
        shadow.close()
        layer.close()
    assert json_answer is not None and json_answer["billing"]["credits"] != 999_999
    counted = shadow_differences(root)
    assert counted["differences"] == 1 and counted["per_entity"] == {"customers": 1}
    assert counted["latest"][0]["key"] == key and counted["latest"][0]["fields"] == ["billing"]
    logged = (root / ".provision/shadow/differences.jsonl").read_text()
    assert "999999" not in logged and "$2y$" not in logged  # names, never values


def test_nothing_is_compared_outside_dual_write_read_json(root: Path, fresh_pg_dsn: str) -> None:
    migrate(fresh_pg_dsn)
    layer = layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_PG)
    shadow = enable_shadow_reads(layer, 1.0, confirm_after=0.1)
    try:
        layer.list("customers")
        shadow.drain()
        assert shadow.stats()["sampled"] == 0
    finally:
        shadow.close()
        layer.close()


def test_postgresql_down_costs_the_caller_nothing(root: Path, fresh_pg_dsn: str) -> None:
    migrate(fresh_pg_dsn)
    layer = layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON)
    shadow = ShadowReads(root, closed_port_dsn(), 1.0, backoff=0.0)
    layer.read_observer = shadow
    try:
        for record in layer.json.load("customers"):
            assert layer.get("customers", record.key) is not None
        shadow.drain()
    finally:
        shadow.close()
        layer.close()
    assert shadow.stats()["errors"] >= 1
    assert shadow_differences(root)["differences"] == 0


def test_a_full_queue_drops_reads_instead_of_waiting(root: Path) -> None:
    shadow = ShadowReads(root, closed_port_dsn(), 1.0, queue_size=1)
    shadow._ensure_thread = lambda: None  # type: ignore[method-assign]  # nobody drains it
    record = StoredRecord("customers", "cust_x", {"customer_id": "cust_x"})
    for _ in range(5):
        shadow.observe(("customers",), "cust_x", lambda conn: None, lambda: record, record)
    assert shadow.stats()["dropped"] == 4
