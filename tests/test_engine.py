"""The engine on real steps: files on disk and a row in a real PostgreSQL.

Each behaviour runs against both journal-and-lock backends: local files (flock) and
PostgreSQL (journal table, advisory locks).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.cli.output import result_json
from provisioner.config import Settings
from provisioner.engine.journal import FileJournal, RunStatus, StepState
from provisioner.engine.locks import FileTargetLock, LockTimeout
from provisioner.engine.pipeline import build
from provisioner.engine.runner import Outcome, Runner
from tests.engine_support import backend, pipeline, row

__all__ = ["backend"]  # the fixture, used by name


def test_forward_run_applies_every_step_in_order(backend: dict[str, Any], tmp_path: Path) -> None:
    result = backend["runner"]().run(pipeline(tmp_path / "w"))

    assert result.status == RunStatus.SUCCEEDED and result.exit_code == 0
    assert [s.outcome for s in result.steps] == [
        Outcome.CHANGED,
        Outcome.CHANGED,
        Outcome.OK,
        Outcome.CHANGED,
        Outcome.OK,
    ]
    assert "hello" in (tmp_path / "w/sub/second.html").read_text()
    assert row(backend["dsn"]) == "hello"


def test_rerun_changes_nothing(backend: dict[str, Any], tmp_path: Path) -> None:
    backend["runner"]().run(pipeline(tmp_path / "w"))
    before = (tmp_path / "w/first.html").stat().st_mtime_ns

    again = backend["runner"]().run(pipeline(tmp_path / "w"))

    assert again.status == RunStatus.SUCCEEDED
    assert all(s.outcome == Outcome.OK for s in again.steps)
    assert not again.changed
    assert (tmp_path / "w/first.html").stat().st_mtime_ns == before


def test_runs_started_within_one_second_list_in_the_order_they_ran(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    started = [
        backend["runner"]().run(pipeline(tmp_path / f"w{n}", name=f"n{n}")).run_id for n in range(4)
    ]

    listed = [record.run_id for record in backend["runner"]().journal.runs()]

    assert listed[-4:] == started


def test_failure_at_step_k_rolls_back_steps_before_it_and_keeps_what_existed(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "first.html").write_text("operator's own page\n")
    with psycopg.connect(backend["dsn"], autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE engine_rows (name text PRIMARY KEY, message text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO engine_rows (name, message) VALUES ('alpha', 'old'), ('beta', 'other')"
        )

    result = backend["runner"]().run(pipeline(work, fail_at="last"))

    assert result.status == RunStatus.FAILED and result.exit_code == 1
    assert "gate last told to fail" in (result.failure or "")
    assert [s.name for s in result.rollback] == ["last", "second", "row", "first"]
    assert all(s.outcome == Outcome.ROLLED_BACK for s in result.rollback)
    assert (work / "first.html").read_text() == "operator's own page\n"
    assert not (work / "sub").exists()
    assert row(backend["dsn"]) == "old"
    assert row(backend["dsn"], "beta") == "other"


def test_plan_changes_nothing_and_shows_diffs(backend: dict[str, Any], tmp_path: Path) -> None:
    runner = backend["runner"]()
    result = runner.plan(pipeline(tmp_path / "w"))

    assert result.status == "planned"
    planned = {s.name: s for s in result.steps}
    assert planned["first"].outcome == Outcome.PLANNED
    assert "+<h1>alpha</h1>" in (planned["first"].change.diff or "")
    assert not (tmp_path / "w").exists()
    assert row(backend["dsn"]) is None
    assert runner.journal.run_ids() == []


def test_rollback_of_a_finished_run_restores_the_world(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    done = backend["runner"]().run(pipeline(tmp_path / "w"))

    undone = backend["runner"]().rollback(done.run_id)

    assert undone.status == RunStatus.ROLLED_BACK
    assert not (tmp_path / "w/first.html").exists()
    assert row(backend["dsn"]) is None
    again = backend["runner"]().rollback(done.run_id)
    assert again.exit_code == 0 and not again.changed
    assert "nothing to undo" in (again.note or "")


def test_a_failing_rollback_is_reported_for_manual_attention(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "rollback-fails").write_text("")

    result = backend["runner"]().run(pipeline(work, fail_at="last"))

    assert result.status == RunStatus.ROLLBACK_FAILED and result.exit_code == 3
    assert [s.name for s in result.left_for_manual_attention] == ["last"]
    # The other steps were still undone.
    assert not (work / "first.html").exists()
    assert row(backend["dsn"]) is None


def test_second_run_on_the_same_target_waits_then_fails_clearly(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    runner = backend["runner"]()
    holder = runner.lock_for("test:alpha")
    holder.acquire("holder-run", timeout=1)
    try:
        with pytest.raises(LockTimeout, match=r"'test:alpha' is locked by .*holder-run"):
            backend["runner"](timeout=0.3).run(pipeline(tmp_path / "w"))
        assert not (tmp_path / "w").exists()
        other = backend["runner"](timeout=0.3).run(pipeline(tmp_path / "x", target="other"))
        assert other.status == RunStatus.SUCCEEDED
    finally:
        holder.release()


def test_json_output_follows_ansible_conventions(backend: dict[str, Any], tmp_path: Path) -> None:
    result = backend["runner"]().run(pipeline(tmp_path / "w"))
    payload = result_json(result)

    assert payload["changed"] is True and payload["failed"] is False and payload["rc"] == 0
    assert payload["msg"]
    first = payload["steps"][0]
    assert first["name"] == "first" and first["changed"] is True
    assert first["diff"]["before"] == {"exists": False}
    assert "alpha" in first["diff"]["after"]["content"]
    assert first["diff"]["prepared"].startswith("--- /dev/null")


def test_journal_records_before_state_ahead_of_apply(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    runner = backend["runner"]()
    result = runner.run(pipeline(tmp_path / "w"))
    events = [e["event"] for e in runner.journal.events(result.run_id)]

    assert events[0] == "run_started" and events[-1] == "run_finished"
    first_planned = events.index("step_planned")
    assert events[first_planned + 1] == "step_applied"
    record = runner.journal.get(result.run_id)
    assert record.steps[0].state == StepState.APPLIED
    assert record.steps[0].change["before"] == {"exists": False}


def test_settings_are_not_leaked_into_the_journal(backend: dict[str, Any], tmp_path: Path) -> None:
    runner = backend["runner"]()
    result = runner.run(pipeline(tmp_path / "w", token="s3cret-token", password="hunter2"))
    text = repr(runner.journal.events(result.run_id))

    assert "s3cret-token" not in text and "hunter2" not in text


def test_unknown_pipeline_is_bad_input() -> None:
    from provisioner.engine.pipeline import PipelineError

    with pytest.raises(PipelineError, match="unknown pipeline 'nope'"):
        build("nope", {}, Settings())


def test_preflight_problem_stops_before_the_first_step(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    from provisioner.engine.runner import PreflightError

    settings = replace(
        backend["settings"], pg_dsn="host=127.0.0.1 port=1 user=x dbname=y password=pw"
    )
    runner = Runner(
        settings, FileJournal(tmp_path / "j"), lambda t: FileTargetLock(tmp_path / "l", t)
    )

    with pytest.raises(PreflightError, match="unreachable") as raised:
        runner.run(pipeline(tmp_path / "w"))
    assert "pw" not in str(raised.value).replace("password=***", "")
    assert not (tmp_path / "w").exists()
    assert runner.journal.run_ids() == []
