"""Locks and the journal under faults: a lock lost mid-run stops the run, a torn journal line
is skipped and never swallows later events, an unreadable run file is listed as such, and
nothing the journal cannot encode reaches it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.engine.journal import FileJournal, RunStatus, UnjournalableValue
from tests.engine_support import backend, pipeline
from tests.test_engine_cli import env, kill, only_run_id, params, provision, start_paused

__all__ = ["backend", "env"]  # fixtures, used by name


def cut_the_lock(env: dict[str, str], run_id: str) -> None:
    """Take the lock away from a running run, as a dead connection or a removed file would."""
    if "PROVISION_PG_DSN" in env:
        with psycopg.connect(env["PROVISION_PG_DSN"], autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"provision run {run_id}",),
            ).fetchall()
        assert killed == [(True,), (True,)]  # the target's lock and the (target, host) lock
    else:
        lock_files = list((Path(env["PROVISION_STATE_DIR"]) / "locks").glob("test_alpha*.lock"))
        assert len(lock_files) == 2
        for lock_file in lock_files:
            lock_file.unlink()


def test_a_run_that_lost_its_lock_stops_before_its_next_step(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "a"
    first = start_paused(env, work, "gate")
    run_id = only_run_id(env)
    try:
        cut_the_lock(env, run_id)
        second = provision(env, "run", "engine-test", *params(tmp_path / "b", env))
        assert second.returncode == 0, second.stderr  # the target was free for another run
        (work / "continue-gate").write_text("")
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            kill(first)

    assert first.returncode == 1, out + err
    assert "lost the lock on target 'test:alpha'" in err and "Traceback" not in err
    assert not (work / "sub").exists()  # no step ran after the loss
    shown = json.loads(provision(env, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "interrupted"
    assert [s["state"] for s in shown["steps"]][-1] == "planned"  # nothing journaled after


def test_a_torn_last_line_is_skipped_and_later_events_start_on_their_own_line(
    tmp_path: Path,
) -> None:
    journal = FileJournal(tmp_path / "journal")
    journal.append(
        "run-1",
        {
            "event": "run_started",
            "run_id": "run-1",
            "pipeline": "p",
            "target": "t",
            "params": {},
            "at": "x",
        },
    )
    with (tmp_path / "journal/run-1.jsonl").open("ab") as fh:
        fh.write(b'{"event": "step_planned", "index": 0, "st')  # killed mid-append
    journal.append("run-1", {"event": "run_finished", "status": "succeeded", "at": "y"})

    record = journal.get("run-1")

    assert record.status == RunStatus.SUCCEEDED
    assert [e["event"] for e in journal.events("run-1")] == ["run_started", "run_finished"]


def test_an_unreadable_run_file_is_listed_as_such_beside_the_other_runs(
    env: dict[str, str], tmp_path: Path
) -> None:
    if "PROVISION_PG_DSN" in env:
        pytest.skip("run files exist only in the file journal")
    done = provision(env, "run", "engine-test", *params(tmp_path / "w", env))
    assert done.returncode == 0, done.stderr
    journal_dir = Path(env["PROVISION_STATE_DIR"]) / "journal"
    (journal_dir / "20000101-000000-empty0.jsonl").write_bytes(b"")
    (journal_dir / "20000101-000000-binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")

    listed = provision(env, "runs", "list", "--json")

    assert listed.returncode == 0, listed.stderr
    statuses = {r["run_id"]: r["status"] for r in json.loads(listed.stdout)}
    assert statuses["20000101-000000-empty0"] == "unreadable"
    assert statuses["20000101-000000-binary"] == "unreadable"
    assert sorted(statuses.values()).count("succeeded") == 1
    human = provision(env, "runs", "list")
    assert "unreadable" in human.stdout and "holds no readable event" in human.stdout


@pytest.mark.parametrize("bad", ["\udcff", float("nan"), "nul\x00byte"])
def test_a_value_the_journal_cannot_encode_never_reaches_it(
    backend: dict[str, Any], tmp_path: Path, bad: Any
) -> None:
    runner = backend["runner"]()
    with pytest.raises(UnjournalableValue):
        runner.run(pipeline(tmp_path / "w", extra=bad))

    assert runner.journal.run_ids() == []
    assert not (tmp_path / "w").exists()
    assert not (backend["settings"].state_dir / "journal").exists()


def test_runs_commands_refuse_a_malformed_run_id(env: dict[str, str]) -> None:
    for command in ("show", "resume", "rollback"):
        refused = provision(env, "runs", command, "../../etc/passwd")
        assert refused.returncode == 2, refused.stderr
        assert "is not a run id" in refused.stderr and "Traceback" not in refused.stderr


def test_sigkill_during_rollback_then_rollback_again_converges(
    env: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "sub/second.html").write_text("kept\n")
    kill(start_paused(env, work, "second"))
    run_id = only_run_id(env)
    (work / "die-in-rollback-second").write_text("")

    crashed = provision(env, "runs", "rollback", run_id)
    assert crashed.returncode != 0  # the rollback "died" after undoing `second`

    again = provision(env, "runs", "rollback", run_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (work / "sub/second.html").read_text() == "kept\n"
    assert not (work / "first.html").exists()
