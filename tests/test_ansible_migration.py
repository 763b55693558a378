"""ansible/migrate.yml and the aeims.provision.migration module, by real `ansible-playbook`
against localhost: one phase forward (planned first in check mode, changing nothing), nothing
to do once there, one phase back; and the validation gate refused on a mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ansible_support import playbook, recap, succeeded
from tests.site_e2e_support import PROVISION, provision, site_env


@pytest.fixture
def env(tmp_path: Path, fresh_pg_dsn: str) -> dict[str, str]:
    """A private AEIMS copy and an empty database of its own."""
    made = site_env(tmp_path / "state", tmp_path / "aeims", "tests.site_pipelines")
    return {**made, "PROVISION_PG_DSN": fresh_pg_dsn}


def stage(env: dict[str, str]) -> str:
    done = provision(env, "migrate", "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return str(json.loads(done.stdout)["stage"])


def test_migrate_playbook_moves_one_phase_and_back(env: dict[str, str]) -> None:
    tool = {"provision_path": PROVISION}
    assert stage(env) == "json_only"

    planned = succeeded(playbook(env, "migrate.yml", tool, "--check", "--diff"))
    assert planned["localhost"]["changed"] == 1
    assert stage(env) == "json_only"

    assert succeeded(playbook(env, "migrate.yml", tool))["localhost"]["changed"] == 1
    assert stage(env) == "schema"
    there = succeeded(playbook(env, "migrate.yml", tool | {"phase": "schema"}))
    assert there["localhost"]["changed"] == 0

    back = succeeded(playbook(env, "migrate.yml", tool | {"direction": "rollback"}))
    assert back["localhost"]["changed"] == 1
    assert stage(env) == "json_only"


def test_migrate_playbook_refuses_the_gate_when_validation_fails(env: dict[str, str]) -> None:
    tool = {"provision_path": PROVISION}
    done = playbook(env, "migrate.yml", tool | {"phase": "dual_write_read_json"})
    assert succeeded(done)["localhost"]["changed"] == 1
    assert stage(env) == "dual_write_read_json"
    # A write PostgreSQL never saw: the JSON file edited behind the data layer's back.
    sites = Path(env["PROVISION_DATA_DIR"]) / "data" / "sites.json"
    sites.write_text(sites.read_text().replace('"name": "', '"name": "Edited ', 1))

    refused = playbook(env, "migrate.yml", tool)
    assert refused.returncode != 0
    assert recap(refused)["localhost"]["failed"] == 1
    assert "mismatch" in refused.stdout
    assert stage(env) == "dual_write_read_json"  # nothing moved
