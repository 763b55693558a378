"""`provision data health` and `provision data reconcile`, as cron and monitoring run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from tests.datalayer_support import FIXTURE_AEIMS, closed_port_dsn, copy_root, layer_in, migrate

REPO = Path(__file__).resolve().parents[1]
PROVISION = str(Path(sys.executable).parent / "provision")


def provision(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROVISION, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROVISION_") and k not in {"USE_DATABASE", "USE_JSON"}
    }
    base["PROVISION_STATE_DIR"] = str(tmp_path / "state")
    base["PROVISION_DATA_DIR"] = str(copy_root(FIXTURE_AEIMS, tmp_path / "aeims"))
    return base


def test_health_of_a_healthy_dual_write_layer_exits_0(
    env: dict[str, str], fresh_pg_dsn: str
) -> None:
    migrate(fresh_pg_dsn)
    layer_in(Path(env["PROVISION_DATA_DIR"]), fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON).close()
    env["PROVISION_PG_DSN"] = fresh_pg_dsn

    result = provision(env, "data", "health", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["phase"] == "dual_write_read_json" and report["degraded"] is False
    assert report["database"]["reachable"] is True and report["outbox_depth"] == 0


def test_health_exits_1_when_the_database_is_down_and_hides_the_password(
    env: dict[str, str],
) -> None:
    root = Path(env["PROVISION_DATA_DIR"])
    DataLayer(root).set_phase(Phase.DUAL_WRITE_READ_PG)
    env["PROVISION_PG_DSN"] = closed_port_dsn() + " password=s3cret-pw"

    result = provision(env, "data", "health")

    assert result.returncode == 1
    assert "UNREACHABLE" in result.stdout and "DEGRADED" in result.stdout
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_use_database_false_is_reported_as_an_override(
    env: dict[str, str], fresh_pg_dsn: str
) -> None:
    migrate(fresh_pg_dsn)
    DataLayer(Path(env["PROVISION_DATA_DIR"])).set_phase(Phase.DUAL_WRITE_READ_PG)
    env.update(PROVISION_PG_DSN=fresh_pg_dsn, USE_DATABASE="false")

    report = json.loads(provision(env, "data", "health", "--json").stdout)

    assert report["phase"] == "json_only" and report["override"] == "USE_DATABASE=false"
    assert report["persisted_phase"] == "dual_write_read_pg"


def test_reconcile_replays_the_outbox(env: dict[str, str], fresh_pg_dsn: str) -> None:
    migrate(fresh_pg_dsn)
    root = Path(env["PROVISION_DATA_DIR"])
    layer_in(root, fresh_pg_dsn, Phase.DUAL_WRITE_READ_JSON).close()
    DataLayer(root).outbox.add([("customers", "cust_alice", "upsert")])
    env["PROVISION_PG_DSN"] = fresh_pg_dsn

    assert provision(env, "data", "health").returncode == 1  # outbox not empty: degraded
    replayed = provision(env, "data", "reconcile", "--json")

    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["applied"] == 1
    assert provision(env, "data", "health").returncode == 0


def test_reconcile_with_the_database_down_keeps_the_outbox_and_exits_1(env: dict[str, str]) -> None:
    root = Path(env["PROVISION_DATA_DIR"])
    DataLayer(root).outbox.add([("customers", "cust_alice", "upsert")])
    env["PROVISION_PG_DSN"] = closed_port_dsn()

    result = provision(env, "data", "reconcile")

    assert result.returncode == 1
    assert "kept" in result.stderr
    assert DataLayer(root).outbox.depth() == 1


def test_missing_data_dir_is_a_usage_error(env: dict[str, str]) -> None:
    del env["PROVISION_DATA_DIR"]

    result = provision(env, "data", "health")

    assert result.returncode == 2
    assert "PROVISION_DATA_DIR" in result.stderr


def test_health_names_a_malformed_json_file(env: dict[str, str]) -> None:
    customers = Path(env["PROVISION_DATA_DIR"]) / "data" / "customers.json"
    customers.write_text('{"customers": {"cust_x": {"username": "x",}}}')

    result = provision(env, "data", "health")

    assert result.returncode == 1
    assert "customers.json" in result.stdout and "line 1" in result.stdout
