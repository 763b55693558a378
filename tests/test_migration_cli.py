"""`provision migrate` status, advance, rollback, archive-json, unarchive and reconcile as a user
meets them: bad input is one line and exit 2 with nothing changed, --plan changes nothing, and
status reads a live installation without writing to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datalayer_support import FIXTURE_AEIMS, copy_root
from tests.test_migration_phases import as_json, environment, files_of, provision


@pytest.fixture
def env(tmp_path: Path, fresh_pg_dsn: str) -> dict[str, str]:
    return environment(tmp_path, fresh_pg_dsn, copy_root(FIXTURE_AEIMS, tmp_path / "aeims"))


def one_line_exit_2(env: dict[str, str], *args: str) -> str:
    done = provision(env, *args, expect=2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize("command", ["advance", "rollback"])
def test_an_unknown_phase_is_one_line_naming_the_known_ones(
    env: dict[str, str], command: str
) -> None:
    line = one_line_exit_2(env, "migrate", command, "--to", "pg-onlyy")
    assert "unknown phase 'pg-onlyy'" in line and "dual_write_read_pg" in line


def test_advance_to_a_phase_behind_the_current_one_points_at_rollback(env: dict[str, str]) -> None:
    as_json(env, "migrate", "advance", "--to", "backfill")
    line = one_line_exit_2(env, "migrate", "advance", "--to", "schema")
    assert "behind the current phase backfill" in line and "migrate rollback --to schema" in line


def test_rollback_to_a_phase_ahead_points_at_advance(env: dict[str, str]) -> None:
    line = one_line_exit_2(env, "migrate", "rollback", "--to", "pg_only")
    assert "ahead of the current phase json_only" in line


def test_a_data_folder_that_is_a_file_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    for args in (["status"], ["advance"], ["rollback"]):
        one_line_exit_2(env | {"PROVISION_DATA_DIR": str(a_file)}, "migrate", *args)


def test_dropping_tables_that_hold_data_needs_force(env: dict[str, str]) -> None:
    as_json(env, "migrate", "advance", "--to", "backfill")
    as_json(env, "migrate", "rollback", "--to", "schema")
    line = one_line_exit_2(env, "migrate", "rollback", "--to", "json_only")
    assert "hold data" in line and "--force" in line
    assert as_json(env, "migrate", "status")["stage"] == "schema"


def test_plan_changes_nothing(env: dict[str, str]) -> None:
    root = Path(env["PROVISION_DATA_DIR"])
    before = files_of(root)
    planned = as_json(env, "migrate", "advance", "--to", "pg_only", "--plan")
    assert planned["status"] == "planned"
    assert [s["name"] for s in planned["steps"]][:2] == ["schema", "backfill"]
    assert files_of(root) == before and not (root / ".provision").exists()


def test_status_reads_without_writing(env: dict[str, str]) -> None:
    root = Path(env["PROVISION_DATA_DIR"])
    as_json(env, "migrate", "advance", "--to", "dual_write_read_json")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    report = as_json(env, "migrate", "status")
    assert report["stage"] == "dual_write_read_json" and report["phase"] == "dual_write_read_json"
    assert report["counts"]["customers"] == {"json": 2, "postgresql": 2}
    assert report["pending"]["outbox"] == 0 and "sync" in report and "shadow" in report
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    human = provision(env, "migrate", "status").stdout
    assert "stage:" in human and "gate:" in human


def test_archive_and_unarchive_need_pg_only(env: dict[str, str]) -> None:
    line = one_line_exit_2(env, "migrate", "archive-json")
    assert "needs the migration at pg_only" in line
    as_json(env, "migrate", "advance", "--to", "pg_only")
    assert as_json(env, "migrate", "archive-json")["status"] == "succeeded"
    assert as_json(env, "migrate", "unarchive")["status"] == "succeeded"
    assert as_json(env, "migrate", "status")["stage"] == "pg_only"


def test_reconcile_with_nothing_pending_changes_nothing(env: dict[str, str]) -> None:
    as_json(env, "migrate", "advance", "--to", "dual_write_read_json")
    result = as_json(env, "migrate", "reconcile")
    assert result["status"] == "succeeded"
    assert result["changed"] is False
