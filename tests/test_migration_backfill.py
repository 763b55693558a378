"""The backfill against the real PostgreSQL and copies of the real AEIMS files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from provisioner.migration.backfill import BackfillInputError, backfill
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.model import ENTITIES
from tests.datalayer_support import FIXTURE_AEIMS, closed_port_dsn, copy_root

REPO = Path(__file__).resolve().parents[1]
REAL_AEIMS = REPO.parent / "shared" / "aeims" / "data"
PROVISION = str(Path(sys.executable).parent / "provision")
ROOTS = [pytest.param(FIXTURE_AEIMS, id="fixtures")]
if REAL_AEIMS.is_dir():
    ROOTS.append(pytest.param(REAL_AEIMS, id="real-aeims"))


def _copy(source: Path, tmp_path: Path) -> Path:
    return copy_root(source, tmp_path / "aeims")


def _rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("source", ROOTS)
def test_every_record_of_every_file_is_loaded_and_counted(
    source: Path, tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _copy(source, tmp_path)
    store = AeimsJsonStore(root)
    expected = {entity: len(store.load(entity)) for entity in ENTITIES}

    report = backfill(fresh_pg_dsn, root, batch_size=3)

    assert report.ok and set(report.entities) == set(ENTITIES)
    for entity, load in report.entities.items():
        assert load.records == expected[entity] == load.inserted, entity
        assert load.updated == load.unchanged == load.quarantined == 0
        assert _rows(fresh_pg_dsn, entity) == expected[entity]
    assert sum(len(e.files) for e in report.entities.values()) == 23
    assert report.totals["plaintext_dropped"] > 0


@pytest.mark.parametrize("source", ROOTS)
def test_plaintext_passwords_are_dropped_counted_and_never_stored(
    source: Path, tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _copy(source, tmp_path)
    raw = (root / "data" / "customers.json").read_text() + (
        root / "data" / "accounts.json"
    ).read_text()
    in_files = raw.count('"password_plaintext_for_testing"')

    report = backfill(fresh_pg_dsn, root)

    assert report.totals["plaintext_dropped"] == in_files > 0
    with psycopg.connect(fresh_pg_dsn) as conn:
        for entity in ENTITIES:
            hits = conn.execute(
                f"SELECT count(*) FROM {entity} WHERE extra::text LIKE '%%plaintext%%' "  # noqa: S608
                "OR placement::text LIKE '%%plaintext%%'"
            ).fetchone()
            assert hits == (0,), entity


def test_running_it_again_changes_nothing_not_even_xmin(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)
    backfill(fresh_pg_dsn, root)
    with psycopg.connect(fresh_pg_dsn) as conn:
        before = conn.execute("SELECT customer_id, xmin::text FROM customers ORDER BY 1").fetchall()

    again = backfill(fresh_pg_dsn, root)

    totals = again.totals
    assert totals["inserted"] == totals["updated"] == 0
    assert totals["unchanged"] == totals["records"] > 0
    with psycopg.connect(fresh_pg_dsn) as conn:
        after = conn.execute("SELECT customer_id, xmin::text FROM customers ORDER BY 1").fetchall()
    assert after == before


def test_a_changed_record_is_updated_with_its_memberships(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)
    backfill(fresh_pg_dsn, root)
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    doc["customers"]["cust_alice"]["billing"]["credits"] = 99
    doc["customers"]["cust_alice"]["sites"] = ["new.example.test"]
    path.write_text(json.dumps(doc, indent=4))

    report = backfill(fresh_pg_dsn, root)

    customers = report.entities["customers"]
    assert (customers.inserted, customers.updated) == (0, 1)
    with psycopg.connect(fresh_pg_dsn) as conn:
        credits = conn.execute(
            "SELECT credits FROM customers WHERE customer_id = 'cust_alice'"
        ).fetchone()
        domains = conn.execute(
            "SELECT domain FROM customer_sites WHERE customer_id = 'cust_alice' AND listed"
        ).fetchall()
    assert credits is not None and int(credits[0]) == 99
    assert domains == [("new.example.test",)]


def test_a_record_that_cannot_be_loaded_is_quarantined_and_the_load_goes_on(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    doc["customers"]["cust_broken"] = {
        "customer_id": "cust_broken",
        "username": "broken\u0000name",
        "password_plaintext_for_testing": "never-in-any-output",
        "profile": {"password_plaintext_for_testing": "nested-secret"},
    }
    path.write_text(json.dumps(doc, indent=4))
    quarantine = tmp_path / "quarantine.jsonl"

    report = backfill(fresh_pg_dsn, root, quarantine_path=quarantine)

    customers = report.entities["customers"]
    assert customers.quarantined == 1 and customers.inserted == customers.records - 1
    assert report.ok and report.entities["operators"].inserted > 0
    text = quarantine.read_text()
    assert "never-in-any-output" not in text and "nested-secret" not in text
    (line,) = [json.loads(x) for x in text.splitlines()]
    assert line["entity"] == "customers" and line["key"] == "cust_broken"
    assert "NUL" in line["reason"]
    assert line["record"]["username"] == "broken\u0000name"
    assert "password_plaintext_for_testing" not in line["record"]["profile"]
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o600
    assert _rows(fresh_pg_dsn, "customers") == customers.records - 1


def test_an_unreadable_file_fails_its_entity_only(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)
    (root / "data" / "sites.json").write_text('{"sites": {')

    report = backfill(fresh_pg_dsn, root)

    assert not report.ok and "sites.json" in report.errors["sites"]
    assert report.entities["customers"].inserted > 0


def test_a_plan_counts_what_would_change_and_writes_nothing(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)
    backfill(fresh_pg_dsn, root, entities=["sites"])
    path = root / "data" / "sites.json"
    doc = json.loads(path.read_text())
    first = next(iter(doc["sites"]))
    doc["sites"][first]["name"] = "Renamed"
    path.write_text(json.dumps(doc))

    plan = backfill(fresh_pg_dsn, root, dry_run=True)

    assert plan.entities["sites"].updated == 1
    assert plan.entities["customers"].inserted == plan.entities["customers"].records > 0
    assert _rows(fresh_pg_dsn, "customers") == 0
    with psycopg.connect(fresh_pg_dsn) as conn:
        name = conn.execute("SELECT name FROM sites WHERE site_id = %s", [first]).fetchone()
    assert name is not None and name[0] != "Renamed"


def test_a_folder_that_is_not_an_aeims_root_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BackfillInputError, match="does not exist"):
        backfill("host=127.0.0.1", tmp_path / "missing")
    with pytest.raises(BackfillInputError, match="no data/ folder"):
        backfill("host=127.0.0.1", tmp_path)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _env(tmp_path: Path, root: Path, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env.update(
        PROVISION_STATE_DIR=str(tmp_path / "state"),
        PROVISION_DATA_DIR=str(root),
        PROVISION_PG_DSN=dsn,
    )
    return env


def provision(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROVISION, "migrate", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_command_reports_json_without_a_progress_bar(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)

    first = provision(_env(tmp_path, root, fresh_pg_dsn), "backfill", "--json")
    again = provision(_env(tmp_path, root, fresh_pg_dsn), "backfill", "--json")

    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    body = json.loads(first.stdout)
    assert body["changed"] is True and body["totals"]["inserted"] == body["totals"]["records"]
    assert set(body["entities"]["customers"]) >= {
        "inserted",
        "updated",
        "unchanged",
        "quarantined",
        "plaintext_dropped",
    }
    assert json.loads(again.stdout)["changed"] is False


def test_the_command_prints_a_table_and_no_bar_without_a_terminal(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)

    result = provision(_env(tmp_path, root, fresh_pg_dsn), "backfill")

    assert result.returncode == 0, result.stderr
    assert "customers" in result.stdout and "plaintext password field(s) left out" in result.stdout
    assert result.stderr == ""


def test_a_missing_data_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, tmp_path / "nowhere", "host=127.0.0.1 dbname=x")

    result = provision(env, "backfill")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "PROVISION_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_postgresql_down_exits_2_with_one_line_and_no_password(tmp_path: Path) -> None:
    root = _copy(FIXTURE_AEIMS, tmp_path)
    env = _env(tmp_path, root, closed_port_dsn() + " password=s3cret-pw")

    for command in ("backfill", "validate"):
        result = provision(env, command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "cannot reach PostgreSQL" in result.stderr
        assert "s3cret-pw" not in result.stderr + result.stdout


def test_rows_built_by_worker_processes_are_the_rows_built_here(
    tmp_path: Path, fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.migration import backfill_rows

    root = _copy(FIXTURE_AEIMS, tmp_path)
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    doc["customers"]["cust_broken"] = {"customer_id": "cust_broken", "username": "x\u0000"}
    path.write_text(json.dumps(doc, indent=4))
    monkeypatch.setattr(backfill_rows, "PARALLEL_MIN_RECORDS", 1)

    def loaded(workers: int) -> tuple[dict, dict, str]:
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        quarantine = tmp_path / f"quarantine-{workers}.jsonl"
        report = backfill(
            fresh_pg_dsn, root, batch_size=2, workers=workers, quarantine_path=quarantine
        )
        with psycopg.connect(fresh_pg_dsn) as conn:
            rows = {
                table: conn.execute(
                    f"SELECT to_jsonb(t) - 'stored_at' FROM {table} t ORDER BY 1"  # noqa: S608
                ).fetchall()
                for table in (*ENTITIES, "customer_sites", "operator_sites")
            }
        counts = {e: (load.inserted, load.quarantined) for e, load in report.entities.items()}
        return counts, rows, quarantine.read_text()

    here, forked = loaded(0), loaded(2)

    assert forked[0] == here[0] and here[0]["customers"][1] == 1
    assert forked[1] == here[1] and here[1]["customers"]
    assert forked[2] == here[2] and "cust_broken" in here[2]


def test_beside_other_threads_the_rows_are_built_in_this_process(
    tmp_path: Path, fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.migration import backfill_rows

    monkeypatch.setattr(backfill_rows, "PARALLEL_MIN_RECORDS", 1)
    forks: list[str] = []
    monkeypatch.setattr(backfill_rows.multiprocessing, "get_context", forks.append)
    root = _copy(FIXTURE_AEIMS, tmp_path)
    stop = threading.Event()
    writer_beside = threading.Thread(target=stop.wait)  # a data layer's writer, say
    writer_beside.start()
    try:
        report = backfill(fresh_pg_dsn, root, batch_size=2, workers=2)
    finally:
        stop.set()
        writer_beside.join()

    assert forks == []  # a fork would copy whatever lock that thread held, taken forever
    assert report.ok and report.totals["inserted"] == report.totals["records"] > 0
