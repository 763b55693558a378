"""The migration's phases end to end, through `provision migrate`, on copies of the real AEIMS
files and the project's fixture, a real PostgreSQL database and the file journal.

Up through every rung and down through every rung ends byte-identical; a write made in pg_only
reaches the JSON files when leaving it; the gate refuses on a mismatch and on a write from
outside the layer; the dual-write phases roll back while PostgreSQL is down; a run SIGKILLed
inside a step is resumed, or rolled back, through `provision runs`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.config import load_settings
from provisioner.engine.journal import FileJournal
from provisioner.engine.locks import FileTargetLock
from provisioner.engine.pipeline import build
from provisioner.engine.runner import Reporter, Runner
from provisioner.engine.step import Progress
from provisioner.migration import pipelines  # noqa: F401 - registers the migrate pipelines
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.model import ENTITIES
from provisioner.storage.pg import records as pg_records
from tests.datalayer_support import FIXTURE_AEIMS, SHARED_AEIMS, closed_port_dsn, copy_root

REPO = Path(__file__).resolve().parents[1]
PROVISION = str(Path(sys.executable).with_name("provision"))
UP = ["schema", "backfill", "dual_write_read_json", "validated", "dual_write_read_pg",
      "pg_only", "archived"]  # fmt: skip
ROOTS = [pytest.param(FIXTURE_AEIMS, id="fixture")]
if SHARED_AEIMS.is_dir():
    ROOTS.append(pytest.param(SHARED_AEIMS, id="real-aeims"))


def environment(tmp_path: Path, dsn: str, root: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROVISION_", "USE_"))}
    env |= {
        "PROVISION_PG_DSN": dsn,
        "PROVISION_DATA_DIR": str(root),
        "PROVISION_STATE_DIR": str(tmp_path / "state"),
        "PROVISION_JOURNAL": "files",
        "PROVISION_LOCK_TIMEOUT": "10",
    }
    return env | more


def provision(
    env: dict[str, str], *args: str, expect: int | None = 0
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [PROVISION, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if expect is not None:
        assert done.returncode == expect, (
            f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done


def as_json(env: dict[str, str], *args: str, expect: int | None = 0) -> dict[str, Any]:
    return json.loads(provision(env, *args, "--json", expect=expect).stdout)


def files_of(root: Path) -> dict[str, bytes]:
    """Every file of the AEIMS root but the layer's own state folder."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".provision" not in p.parts
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


@pytest.mark.parametrize("source", ROOTS)
def test_up_every_phase_and_down_every_phase_ends_byte_identical(
    tmp_path: Path, fresh_pg_dsn: str, source: Path
) -> None:
    root = copy_root(source, tmp_path / "aeims")
    env = environment(tmp_path, fresh_pg_dsn, root)
    before = files_of(root)
    assert as_json(env, "migrate", "status")["stage"] == "json_only"
    for stage in UP:
        result = as_json(env, "migrate", "advance", "--to", stage)
        assert result["status"] == "succeeded", result
        assert as_json(env, "migrate", "status")["stage"] == stage
    status = as_json(env, "migrate", "status")
    assert status["phase"] == "pg_only" and status["gate"]["open"]
    assert status["last_validation"]["mismatches"] == 0
    archived = root / status["archive"]["folder"]
    assert archived.name.startswith("json-archive-") and (archived / "manifest.json").exists()
    assert not (root / "data" / "customers.json").exists()
    for stage in reversed(["json_only", *UP[:-1]]):
        args = ["migrate", "rollback", "--to", stage] + (
            ["--force"] if stage == "json_only" else []
        )
        assert as_json(env, *args)["status"] == "succeeded"
        assert as_json(env, "migrate", "status")["stage"] == stage
    assert files_of(root) == before
    with psycopg.connect(fresh_pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('customers')").fetchone() == (None,)


def test_a_write_made_in_pg_only_reaches_the_json_files_when_leaving_it(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "archived")
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        customer = pg_records.list_records(conn, "customers")[0]
        customer.data["credits"] = 4242.5
        pg_records.upsert_records(conn, [customer])
    as_json(env, "migrate", "rollback", "--to", "dual_write_read_pg")
    again = AeimsJsonStore(root).get("customers", customer.key)
    assert again is not None and again.data["credits"] == 4242.5
    # The plaintext test password PostgreSQL never had stays in the file, with the write.
    assert "password_plaintext_for_testing" in again.data


def test_unarchive_refuses_an_archive_that_no_longer_matches_its_manifest(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "archived")
    folder = root / as_json(env, "migrate", "status")["archive"]["folder"]
    (folder / "data" / "sites.json").write_text("{}")
    failed = as_json(env, "migrate", "unarchive", expect=1)
    assert "does not match the manifest" in json.dumps(failed)
    assert as_json(env, "migrate", "status")["stage"] == "archived"


def test_the_gate_refuses_a_validation_with_mismatches(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "dual_write_read_json")
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE customers SET content_hash = 'x', extra = extra || '{\"tampered\": 1}'"
        )
    failed = as_json(env, "migrate", "advance", "--to", "dual_write_read_pg", expect=1)
    assert "gate stays closed" in json.dumps(failed) and "mismatch" in json.dumps(failed)
    assert as_json(env, "migrate", "status")["stage"] == "dual_write_read_json"


def test_pg_only_waits_for_a_quiet_period_after_a_write_outside_the_layer(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "dual_write_read_pg")
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    first = next(iter(doc["customers"].values()))
    first["credits"] = 31337
    path.write_text(json.dumps(doc, indent=4))  # as PHP writes: not through the layer
    provision(env, "migrate", "sync", "--once")
    refused = provision(env, "migrate", "advance", "--to", "pg_only", expect=2)
    assert "within the quiet period" in refused.stderr and "data/customers.json" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert as_json(env, "migrate", "status")["stage"] == "dual_write_read_pg"
    # The sync carried it over, and a validation newer than it opens the gate again.
    result = as_json(env, "migrate", "advance", "--to", "pg_only", "--quiet-period", "0")
    assert result["status"] == "succeeded"


def test_pg_only_waits_for_the_sync_to_catch_up_with_a_write_outside_the_layer(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "dual_write_read_pg")
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    next(iter(doc["customers"].values()))["credits"] = 4712
    path.write_text(json.dumps(doc, indent=4))  # as PHP writes: not through the layer
    # Seen by a pass that was not clean (a record of the layer's waits in the outbox): the
    # files are quiet, but nothing proves PostgreSQL has all they were given.
    with DataLayer(root, closed_port_dsn()) as cut_off:
        cut_off.save_message({"conversation_id": "conv_gate", "content": "PostgreSQL was down"})
    provision(env, "migrate", "sync", "--once")
    refused = provision(env, "migrate", "advance", "--to", "pg_only", "--quiet-period", "0",
                        expect=2)  # fmt: skip
    assert "no clean sync pass began after it" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    as_json(env, "migrate", "reconcile")
    provision(env, "migrate", "sync", "--once")
    result = as_json(env, "migrate", "advance", "--to", "pg_only", "--quiet-period", "0")
    assert result["status"] == "succeeded"


def test_the_read_switch_takes_a_write_from_outside_the_layer_once_the_sync_applied_it(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "validated")
    validation = as_json(env, "migrate", "status")["last_validation"]["validation_id"]
    # A write of the layer's that PostgreSQL missed (unreachable): it waits in the outbox, so
    # the sync leaves that record to the layer's replay and its pass is not a clean one.
    with DataLayer(root, closed_port_dsn()) as cut_off:
        cut_off.save_message({"conversation_id": "conv_gate", "content": "PostgreSQL was down"})
    # PHP writes a customer after the validation; the sync sees it and carries it over.
    path = root / "data" / "customers.json"
    doc = json.loads(path.read_text())
    first = next(iter(doc["customers"].values()))
    first["credits"] = 4711
    path.write_text(json.dumps(doc, indent=4))
    provision(env, "migrate", "sync", "--once")
    gate = as_json(env, "migrate", "status")["gate"]
    assert not gate["open"]
    assert "came after the last validation" in gate["reason"]
    assert "the sync has not applied it yet" in gate["reason"]

    # The outbox replayed, a clean pass of the sync: PostgreSQL holds everything it saw, and
    # the gate opens on the same validation, with no new one.
    as_json(env, "migrate", "reconcile")
    provision(env, "migrate", "sync", "--once")
    assert as_json(env, "migrate", "status")["gate"] == {"open": True, "reason": None}
    assert as_json(env, "migrate", "advance")["status"] == "succeeded"
    status = as_json(env, "migrate", "status")
    assert status["stage"] == "dual_write_read_pg"
    assert status["last_validation"]["validation_id"] == validation


def test_the_dual_write_phases_roll_back_while_postgresql_is_down(
    tmp_path: Path, fresh_pg_dsn: str, root: Path
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    as_json(env, "migrate", "advance", "--to", "dual_write_read_pg")
    down = env | {"PROVISION_PG_DSN": closed_port_dsn()}
    assert as_json(down, "migrate", "rollback", "--to", "backfill")["status"] == "succeeded"
    assert json.loads((root / ".provision" / "phase.json").read_text())["phase"] == "json_only"
    refused = provision(down, "migrate", "advance", expect=2)
    assert refused.stderr.startswith("Error: ") and "unreachable" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------- the kill
DRILL = {"PROVISION_PIPELINE_MODULES": "tests.drill_pipelines", "PYTHONPATH": str(REPO)}


def kill_inside(env: dict[str, str], work: Path, params: dict[str, Any], at: str) -> str:
    """Start a drilled migration run, SIGKILL it where it pauses; its run id."""
    work.mkdir(parents=True)
    drill = {"pipeline": "migrate-advance", "params": params, "kill_at": at, "work": str(work)}
    argv = [PROVISION, "run", "drill", "--json"]
    for key, value in drill.items():
        argv += ["-p", f"{key}={json.dumps(value) if isinstance(value, dict) else value}"]
    env = env | DRILL
    with subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        marker = work / "paused"
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"never paused (exit {proc.returncode})\n{out}{err}")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    return str(json.loads(marker.read_text())["run_id"])


@pytest.mark.parametrize("outcome", ["resume", "rollback"])
def test_a_run_killed_inside_the_backfill_resumes_or_rolls_back(
    tmp_path: Path, fresh_pg_dsn: str, root: Path, outcome: str
) -> None:
    env = environment(tmp_path, fresh_pg_dsn, root)
    before = files_of(root)
    params = {"from": "json_only", "to": "dual_write_read_json"}
    run_id = kill_inside(env, tmp_path / "work", params, "backfill:inside")
    drill_env = env | DRILL
    result = as_json(drill_env, "runs", outcome, run_id)
    if outcome == "resume":
        assert result["status"] == "succeeded"
        status = as_json(env, "migrate", "status")
        assert status["stage"] == "dual_write_read_json"
        assert all(c["json"] == c["postgresql"] for c in status["counts"].values())
    else:
        assert result["status"] == "rolled_back"
        assert as_json(env, "migrate", "status")["stage"] == "json_only"
        with psycopg.connect(fresh_pg_dsn) as conn:
            assert conn.execute("SELECT to_regclass('customers')").fetchone() == (None,)
    assert files_of(root) == before


def test_an_unarchive_undone_later_puts_the_archive_back_byte_for_byte(tmp_path: Path) -> None:
    from provisioner.migration import archive

    data_dir = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    made = archive.archive(data_dir, created_at="2026-01-02T03:04:05+00:00")
    folder = data_dir / made["folder"]
    before = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    taken_apart = archive.unarchive(data_dir)
    assert not folder.exists()
    # Put back, as an undone leave does, at another moment than the archive was made.
    archive.archive(data_dir, data_dir / taken_apart["folder"], taken_apart["created_at"])
    assert {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} == before


class RecordingProgress(Progress):
    """The run's progress as a terminal would draw it: each bar, its total and its advances."""

    def __init__(self) -> None:
        self.bars: dict[str, list[int]] = {}
        self.totals: dict[str, int | None] = {}

    @contextmanager
    def track(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        self.totals[description] = total
        advances = self.bars.setdefault(description, [])
        yield advances.append


def test_the_backfill_inside_advance_draws_a_bar_per_entity(root: Path, fresh_pg_dsn: str) -> None:
    settings = load_settings(environment(root.parent, fresh_pg_dsn, root))
    reporter = Reporter()
    reporter.progress = RecordingProgress()
    runner = Runner(
        settings,
        FileJournal(settings.journal_dir),
        lambda target: FileTargetLock(settings.lock_dir, target),
        reporter=reporter,
    )

    result = runner.run(build("migrate-advance", {"from": "json_only", "to": "backfill"}, settings))

    assert result.exit_code == 0
    progress = reporter.progress
    customers = len(AeimsJsonStore(root).load("customers"))
    assert progress.totals["backfill customers"] == customers > 0
    for bar, advances in progress.bars.items():
        assert sum(advances) == progress.totals[bar], bar
    assert set(progress.bars) == {f"backfill {entity}" for entity in ENTITIES}
