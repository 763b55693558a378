"""The engine through the `provision` command, in real processes: SIGKILL, resume, rollback,
concurrent runs, --plan, --json and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
PROVISION = str(Path(sys.executable).parent / "provision")


@pytest.fixture(params=["files", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path, fresh_pg_dsn: str) -> dict[str, str]:
    """The command's environment for one backend (files: no database configured at all)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    base.update(
        PROVISION_STATE_DIR=str(tmp_path / "state"),
        PROVISION_PIPELINE_MODULES="tests.engine_pipelines",
        PYTHONPATH=str(REPO),
        PROVISION_LOCK_TIMEOUT="5",
    )
    if request.param == "postgres":
        base["PROVISION_PG_DSN"] = fresh_pg_dsn
    return base


def params(work: Path, env: dict[str, str], **extra: Any) -> list[str]:
    values = {"dir": str(work), "name": "alpha", "with_row": "PROVISION_PG_DSN" in env, **extra}
    return [arg for k, v in values.items() for arg in ("-p", f"{k}={json.dumps(v)}")]


def provision(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROVISION, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def start_paused(env: dict[str, str], work: Path, pause_at: str) -> subprocess.Popen[str]:
    """Start a run that pauses inside step `pause_at`, and wait until it is there."""
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [PROVISION, "run", "engine-test", *params(work, env, pause_at=pause_at)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    marker = work / f"paused-{pause_at}"
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached its pause"
        time.sleep(0.02)
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def only_run_id(env: dict[str, str]) -> str:
    listed = json.loads(provision(env, "runs", "list", "--json").stdout)
    assert len(listed) == 1
    return listed[0]["run_id"]


def test_sigkill_between_steps_then_resume_completes_the_run(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    kill(start_paused(env, work, "gate"))
    run_id = only_run_id(env)

    shown = json.loads(provision(env, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "interrupted"

    resumed = provision(env, "runs", "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert "(earlier attempt)" in resumed.stdout
    assert (work / "sub/second.html").exists()
    assert (
        json.loads(provision(env, "runs", "show", run_id, "--json").stdout)["status"] == "succeeded"
    )


def test_sigkill_then_rollback_undoes_what_was_applied(env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "w"
    kill(start_paused(env, work, "gate"))
    run_id = only_run_id(env)
    assert (work / "first.html").exists()

    undone = provision(env, "runs", "rollback", run_id, "--json")

    assert undone.returncode == 0, undone.stdout + undone.stderr
    payload = json.loads(undone.stdout)
    assert payload["status"] == "rolled_back" and payload["changed"] is True
    assert not (work / "first.html").exists()
    if "PROVISION_PG_DSN" in env:
        with psycopg.connect(env["PROVISION_PG_DSN"]) as conn:
            assert conn.execute("SELECT count(*) FROM engine_rows").fetchone()[0] == 0


def test_sigkill_inside_apply_rolls_back_from_the_journaled_before_state(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "sub/second.html").write_text("kept\n")
    kill(start_paused(env, work, "second"))  # killed after writing, before its undo was journaled
    run_id = only_run_id(env)
    assert (work / "sub/second.html").read_text() != "kept\n"

    assert provision(env, "runs", "rollback", run_id).returncode == 0

    assert (work / "sub/second.html").read_text() == "kept\n"
    assert not (work / "first.html").exists()


def test_rerunning_the_same_command_after_a_kill_converges(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    kill(start_paused(env, work, "gate"))

    again = provision(env, "run", "engine-test", *params(work, env))

    assert again.returncode == 0, again.stderr
    assert (work / "sub/second.html").exists()


def test_a_second_run_on_a_busy_target_fails_clearly_and_another_target_proceeds(
    env: dict[str, str], tmp_path: Path
) -> None:
    holder = start_paused(env, tmp_path / "a", "gate")
    try:
        busy = provision(
            env, "run", "engine-test", "--lock-timeout", "0.5", *params(tmp_path / "b", env)
        )
        assert busy.returncode == 1
        assert "'test:alpha' is locked by" in busy.stderr
        assert not (tmp_path / "b").exists()

        other = provision(env, "run", "engine-test", *params(tmp_path / "c", env, target="beta"))
        assert other.returncode == 0, other.stderr
    finally:
        kill(holder)


def test_plan_prints_diffs_and_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    planned = provision(env, "run", "engine-test", "--plan", *params(tmp_path / "w", env))

    assert planned.returncode == 0, planned.stderr
    assert "+<h1>alpha</h1>" in planned.stdout
    assert "Nothing was changed" in planned.stdout
    assert not (tmp_path / "w").exists()
    assert json.loads(provision(env, "runs", "list", "--json").stdout) == []


def test_human_output_marks_each_step_and_names_next_steps(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = provision(env, "run", "engine-test", *params(tmp_path / "w", env))

    assert done.returncode == 0, done.stderr
    assert "✓ First: create" in done.stdout
    assert "Next steps:" in done.stdout


def test_failed_run_exits_1_with_rollback_in_json(env: dict[str, str], tmp_path: Path) -> None:
    failed = provision(
        env, "run", "engine-test", "--json", *params(tmp_path / "w", env, fail_at="last")
    )

    assert failed.returncode == 1
    payload = json.loads(failed.stdout)
    assert payload["failed"] is True and payload["changed"] is False
    assert "gate last told to fail" in payload["msg"]
    assert [s["name"] for s in payload["rollback"]][-1] == "first"


def test_rollback_that_fails_exits_3_naming_what_is_left(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "rollback-fails").write_text("")

    failed = provision(env, "run", "engine-test", *params(work, env, fail_at="last"))

    assert failed.returncode == 3
    assert "manual attention" in failed.stdout and "last" in failed.stdout


def test_bad_input_exits_2_and_changes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    unknown = provision(env, "run", "no-such-pipeline", "--json")
    assert unknown.returncode == 2
    assert json.loads(unknown.stdout)["failed"] is True

    bad_name = provision(env, "demo", "--name", "../../etc; rm -rf /")
    assert bad_name.returncode == 2
    assert "invalid demo name" in bad_name.stderr

    missing = provision(env, "runs", "show", "20990101-000000-abcdef")
    assert missing.returncode == 2
    assert json.loads(provision(env, "runs", "list", "--json").stdout) == []


def test_scope_option_runs_only_the_host_steps(env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "w"
    done = provision(env, "run", "engine-test", "--scope", "host", "--json", *params(work, env))

    assert done.returncode == 0, done.stderr
    assert [s["name"] for s in json.loads(done.stdout)["steps"]] == ["first", "second"]
    if "PROVISION_PG_DSN" in env:
        with psycopg.connect(env["PROVISION_PG_DSN"]) as conn:
            assert conn.execute("SELECT to_regclass('engine_rows')").fetchone()[0] is None
