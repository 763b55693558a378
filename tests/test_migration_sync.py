"""`provision migrate sync`: writes made to the JSON files outside the data layer reach
PostgreSQL exactly, once, and are reported; the layer's own writes are not."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from provisioner.migration.sync import Syncer, last_outside_write, sync_status
from provisioner.migration.sync_scan import record_of_span, scan_spans
from provisioner.storage.aeims.catalog import CATALOG
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from tests.datalayer_support import (
    FIXTURE_AEIMS,
    SHARED_AEIMS,
    copy_root,
    layer_in,
    migrate,
    pg_record,
)

PROVISION = str(Path(sys.executable).parent / "provision")
SOURCES = [p for p in (SHARED_AEIMS, FIXTURE_AEIMS) if (p / "data").is_dir()]


def php_style_write(path: Path, doc: Any, *, pretty: bool = True) -> None:
    """What PHP's safeFileWrite does: open c+, LOCK_EX, truncate, write, in place
    (JSON_PRETTY_PRINT, or compact as PHP writes messages.json)."""
    text = json.dumps(doc, indent=4) if pretty else json.dumps(doc, separators=(",", ":"))
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.truncate(0)
        f.write(text.encode())
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def php_adds_a_message(root: Path, message_id: str) -> None:
    """PHP's read (LOCK_SH), then its separate in-place write of messages.json (LOCK_EX)."""
    path = root / "data/messages.json"
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        doc = json.loads(f.read() or b"{}")
    messages = doc.get("messages") or {}
    messages[message_id] = {
        "message_id": message_id,
        "conversation_id": "conv_php",
        "sender_type": "customer",
        "sender_id": "cust_php",
        "content": f"{message_id} from PHP",
        "content_type": "text",
        "sent_at": "2025-03-01 10:00:00",
    }
    php_style_write(path, doc | {"messages": messages}, pretty=False)


def customers(root: Path) -> dict[str, Any]:
    return json.loads((root / "data/customers.json").read_text())


@pytest.fixture(params=SOURCES, ids=[p.parent.name for p in SOURCES])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return copy_root(request.param, tmp_path / "aeims")


@pytest.fixture
def synced(root: Path, fresh_pg_dsn: str) -> tuple[Path, str]:
    """A root loaded into PostgreSQL, in dual_write_read_json, after the sync's first pass."""
    migrate(fresh_pg_dsn)
    layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON).close()
    with Syncer(root, fresh_pg_dsn) as syncer:
        first = syncer.sync_once()
    assert first.ok and not first.outside_writes, first.as_json()
    return root, fresh_pg_dsn


def test_the_byte_reader_reads_what_the_layers_reader_reads(root: Path) -> None:
    from provisioner.storage.aeims.store import AeimsJsonStore

    store = AeimsJsonStore(root)
    checked = 0
    for entity, spec in CATALOG.items():
        fs = spec.file
        path = root / fs.relpath
        if len(spec.files) != 1 or not path.exists():
            continue
        raw = path.read_bytes()
        spans = scan_spans(raw, fs) if fs.wrapper and not fs.wrapper_is_list else None
        if spans is None:
            continue
        by_bytes = [r for s in spans if (r := record_of_span(raw, s, fs, entity))]
        by_layer = store.load(entity)
        assert [(r.key, r.data, r.placement) for r in by_bytes] == [
            (r.key, r.data, r.placement) for r in by_layer
        ], entity
        checked += 1
    assert checked >= 3  # customers, sites, id_verifications...


def test_an_outside_change_add_and_delete_reach_postgresql_exactly(
    synced: tuple[Path, str],
) -> None:
    root, dsn = synced
    doc = customers(root)
    changed, removed = list(doc["customers"])[:2]
    doc["customers"][changed]["billing"]["credits"] = 4242
    del doc["customers"][removed]
    doc["customers"]["cust_outside1"] = {"customer_id": "cust_outside1", "username": "outside1"}
    php_style_write(root / "data/customers.json", doc)

    with Syncer(root, dsn) as syncer:
        report = syncer.sync_once()
        again = syncer.sync_once()

    assert report.ok, report.errors
    assert (report.upserted, report.deleted) == (2, 1)
    seen = {(w.entity, w.key, w.op, w.file) for w in report.outside_writes}
    assert seen == {
        ("customers", changed, "upsert", "data/customers.json"),
        ("customers", "cust_outside1", "upsert", "data/customers.json"),
        ("customers", removed, "delete", "data/customers.json"),
    }
    assert pg_record(dsn, "customers", changed)["billing"]["credits"] == 4242
    assert pg_record(dsn, "customers", "cust_outside1") == doc["customers"]["cust_outside1"]
    assert pg_record(dsn, "customers", removed) is None
    assert report.lag_seconds is not None and report.lag_seconds >= 0
    # Idempotent: the second pass finds nothing, and a restart diffs against the saved state.
    assert (again.upserted, again.deleted, again.outside_writes) == (0, 0, [])
    with Syncer(root, dsn) as restarted:
        after_restart = restarted.sync_once()
    assert (after_restart.upserted, after_restart.unchanged) == (0, 0)

    file, when = last_outside_write(root)
    assert file == "data/customers.json" and abs(when.timestamp() - time.time()) < 60
    status = sync_status(root)
    assert status["lag_seconds"] == 0.0 and status["last_lag_seconds"] is not None
    assert status["outside_writes"] == 3


def test_the_layers_own_writes_are_not_outside_writes(synced: tuple[Path, str]) -> None:
    root, dsn = synced
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    try:
        layer.save_customer({"customer_id": "cust_layer1", "username": "layer1"})
        layer.save_message({"conversation_id": "conv_1", "content": "hello"})
    finally:
        layer.close()
    with Syncer(root, dsn) as syncer:
        report = syncer.sync_once()
    assert report.ok, report.errors
    assert report.outside_writes == [] and report.upserted == 0
    assert report.unchanged >= 2
    assert last_outside_write(root) is None


def test_pg_only_reports_file_writes_and_never_applies_them(synced: tuple[Path, str]) -> None:
    root, dsn = synced
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON)
    layer.set_phase(Phase.PG_ONLY, "tests")
    layer.close()
    doc = customers(root)
    key = next(iter(doc["customers"]))
    before = pg_record(dsn, "customers", key)
    doc["customers"][key]["username"] = "late_php_writer"
    php_style_write(root / "data/customers.json", doc)
    with Syncer(root, dsn) as syncer:
        report = syncer.sync_once()
    assert [(w.key, w.op) for w in report.outside_writes] == [(key, "upsert")]
    assert report.upserted == 0 and pg_record(dsn, "customers", key) == before


def _env(root: Path, dsn: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env |= {
        "PROVISION_DATA_DIR": str(root),
        "PROVISION_PG_DSN": dsn,
        "PROVISION_STATE_DIR": str(tmp_path / "state"),
    }
    return env


def test_the_service_carries_a_php_write_into_postgresql(
    synced: tuple[Path, str], tmp_path: Path
) -> None:
    root, dsn = synced
    proc = subprocess.Popen(
        [PROVISION, "migrate", "sync", "--json"],
        env=_env(root, dsn, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sync_status(root).get("running") or sync_status(root)["pid"] != proc.pid:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        doc = customers(root)
        doc["customers"]["cust_service1"] = {"customer_id": "cust_service1", "username": "svc1"}
        php_style_write(root / "data/customers.json", doc)
        deadline = time.monotonic() + 20
        while pg_record(dsn, "customers", "cust_service1") is None:
            assert time.monotonic() < deadline, "the row never reached PostgreSQL"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    passes = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(w["key"] == "cust_service1" for p in passes for w in p["outside_writes"]), passes
    assert "Traceback" not in err


class SyncerBesideABusyWriter(Syncer):
    """A syncer whose messages.json always changes between its read and the layer's turn: a
    process of the layer saves a message right after each read the sync makes outside the
    turn, as busy writers do all the time."""

    def __init__(self, root: Path, dsn: str, writer: DataLayer) -> None:
        super().__init__(root, dsn)
        self.writer = writer
        self.in_turn = False
        self.writes_between = 0

    @contextmanager
    def _turn(self, entity: str) -> Iterator[None]:
        with super()._turn(entity):
            self.in_turn = True
            try:
                yield
            finally:
                self.in_turn = False

    def _snapshot(self, entity: str, *, by_records: bool = False) -> Any:
        snap = super()._snapshot(entity, by_records=by_records)
        if entity == "messages" and not self.in_turn:
            self.writes_between += 1
            self.writer.save_message({"conversation_id": "conv_busy", "content": "busy"})
        return snap


def test_a_pass_gets_through_a_file_that_changes_between_every_read_and_the_turn(
    synced: tuple[Path, str],
) -> None:
    root, dsn = synced
    php_adds_a_message(root, "msg_php_busy")
    with DataLayer(root, dsn) as writer, SyncerBesideABusyWriter(root, dsn, writer) as syncer:
        report = syncer.sync_once()
    assert report.ok and report.clean, report.as_json()
    assert syncer.writes_between >= 1  # the file did change before the turn was taken
    assert [(w.key, w.op) for w in report.outside_writes] == [("msg_php_busy", "upsert")]
    assert pg_record(dsn, "messages", "msg_php_busy") is not None
    assert sync_status(root)["left_for_next_pass"] == []


def test_the_service_keeps_up_with_a_replaced_file_written_in_place_beside_busy_writers(
    synced: tuple[Path, str], tmp_path: Path
) -> None:
    """The file replaced by a rename (a new inode, as an unarchive or a restore makes it), then
    the layer writing it without a pause and PHP writing it in place: PHP's message reaches
    PostgreSQL while the writers go on."""
    root, dsn = synced
    path = root / "data/messages.json"
    proc = subprocess.Popen(
        [PROVISION, "migrate", "sync", "--json"],
        env=_env(root, dsn, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()

    def layer_writes() -> None:
        with DataLayer(root, dsn) as layer:
            while not stop.is_set():
                layer.save_message({"conversation_id": "conv_busy", "content": "busy"})

    writer = threading.Thread(target=layer_writes)
    try:
        deadline = time.monotonic() + 30
        while not sync_status(root).get("running") or sync_status(root)["pid"] != proc.pid:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        inode = path.stat().st_ino
        replacement = path.with_name("messages.json.restored")
        replacement.write_bytes(path.read_bytes())
        os.replace(replacement, path)
        assert path.stat().st_ino != inode
        writer.start()
        php_adds_a_message(root, "msg_php_replaced")
        deadline = time.monotonic() + 20
        while pg_record(dsn, "messages", "msg_php_replaced") is None:
            assert time.monotonic() < deadline, "PHP's message never reached PostgreSQL"
            time.sleep(0.05)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(timeout=30)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "change",
    [
        {"PROVISION_PG_DSN": ""},
        {"PROVISION_DATA_DIR": "/nonexistent/aeims"},
        {"PROVISION_SHADOW_READ_FRACTION": "nan"},
        {"PROVISION_SHADOW_READ_FRACTION": "-0.1"},
        {"PROVISION_SHADOW_READ_FRACTION": "1.01"},
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, change: dict[str, str]) -> None:
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    env = _env(root, "host=127.0.0.1 dbname=x", tmp_path) | change
    result = subprocess.run(
        [PROVISION, "migrate", "sync", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
