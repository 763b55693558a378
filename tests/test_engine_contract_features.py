"""What the engine gives the coming site and migration steps: pipeline checks on resume,
scopes and per-host locks, plans that survive a failing check, checkpoints for big
before-states, a journal kept in files on demand, and statements that honour the timeout."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.config import Settings
from provisioner.engine.backend import open_journal, uses_postgres
from provisioner.engine.journal import FileJournal, RunStatus
from provisioner.engine.locks import LockTimeout
from provisioner.engine.pg_journal import PgJournal
from provisioner.engine.results import Outcome
from provisioner.engine.runner import PipelineMismatch
from provisioner.engine.step import Scope
from tests.engine_pipelines import SimulatedKill
from tests.engine_support import backend, pipeline, row

__all__ = ["backend"]  # the fixture, used by name


# ------------------------------------------------------------------ pipeline vs journal
@pytest.mark.parametrize("shape", ["reordered", "extra", "fewer"])
def test_resume_and_rollback_refuse_a_pipeline_whose_steps_changed(
    backend: dict[str, Any], tmp_path: Path, shape: str
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "die-after-apply-second").write_text("")
    with pytest.raises(SimulatedKill):
        backend["runner"]().run(pipeline(work))
    (run_id,) = backend["runner"]().journal.run_ids()
    (work / "shape").write_text(shape)

    for action in ("resume", "rollback"):
        with pytest.raises(PipelineMismatch) as refused:
            getattr(backend["runner"](), action)(run_id)
        message = str(refused.value)
        assert "[first, row, gate, second, last]" in message and "now has [" in message
    assert (work / "sub/second.html").exists()  # nothing was done


def test_forced_rollback_finds_each_step_by_its_journaled_name(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    done = backend["runner"]().run(pipeline(work))
    (work / "shape").write_text("reordered")

    undone = backend["runner"]().rollback(done.run_id, force=True)

    assert undone.status == RunStatus.ROLLED_BACK
    assert not (work / "first.html").exists() and row(backend["dsn"]) is None


def test_forced_rollback_reports_a_step_that_no_longer_exists(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    done = backend["runner"]().run(pipeline(work))
    (work / "shape").write_text("fewer")

    undone = backend["runner"]().rollback(done.run_id, force=True)

    assert undone.status == RunStatus.ROLLBACK_FAILED and undone.exit_code == 3
    assert [s.name for s in undone.left_for_manual_attention] == ["first"]
    assert "no step 'first'" in (undone.left_for_manual_attention[0].error or "")
    assert not (work / "sub/second.html").exists()  # the others were undone


# ------------------------------------------------------------------ scopes
def test_a_run_limited_to_global_steps_runs_only_those_and_journals_its_scope(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    runner = backend["runner"]()
    result = runner.run(pipeline(tmp_path / "w"), scopes=[Scope.GLOBAL])

    assert [s.name for s in result.steps] == ["row", "gate", "last"]
    assert row(backend["dsn"]) == "hello" and not (tmp_path / "w/first.html").exists()
    record = runner.journal.get(result.run_id)
    assert record.scopes == ["global"] and record.locks == ["test:alpha"]
    assert backend["runner"]().rollback(result.run_id).status == RunStatus.ROLLED_BACK
    assert row(backend["dsn"]) is None


def test_host_runs_lock_the_target_on_their_host_only(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    holder = backend["runner"]().lock_for("test:alpha@web1")
    holder.acquire("holder", 1)
    global_holder = backend["runner"]().lock_for("test:alpha")
    global_holder.acquire("global-holder", 1)
    try:
        with pytest.raises(LockTimeout, match="test:alpha@web1"):
            backend["runner"](host="web1").run(pipeline(tmp_path / "a"), scopes=[Scope.HOST])
        other_host = backend["runner"](host="web2").run(
            pipeline(tmp_path / "b"), scopes=[Scope.HOST]
        )
        assert other_host.status == RunStatus.SUCCEEDED
        assert [s.name for s in other_host.steps] == ["first", "second"]
    finally:
        holder.release()
        global_holder.release()


# ------------------------------------------------------------------ plan
def test_plan_reports_a_failing_check_as_that_steps_error_and_checks_the_others(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "check-raises-row").write_text("")

    planned = backend["runner"]().plan(pipeline(work))

    outcomes = {s.name: s.outcome for s in planned.steps}
    assert outcomes == {
        "first": Outcome.PLANNED,
        "row": Outcome.FAILED,
        "gate": Outcome.OK,
        "second": Outcome.PLANNED,
        "last": Outcome.OK,
    }
    assert planned.exit_code == 1 and "row: check of row cannot read" in (planned.failure or "")


# ------------------------------------------------------------------ checkpoints
def test_a_big_before_state_is_kept_as_a_checkpoint_not_in_the_journal(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    site = work / "site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("the operator's page " * 1000)
    (site / "css/theme.css").write_text("body { color: red }")
    (site / "css/link").symlink_to("theme.css")
    (work / "die-after-apply-folder").write_text("")
    runner = backend["runner"]()
    with pytest.raises(SimulatedKill):
        runner.run(pipeline(work, with_folder=True))
    (run_id,) = runner.journal.run_ids()
    journal_text = json.dumps(runner.journal.events(run_id))
    assert "the operator's page" not in journal_text and '"checkpoint": "folder"' in journal_text

    assert backend["runner"]().rollback(run_id).status == RunStatus.ROLLED_BACK

    assert (site / "index.html").read_text() == "the operator's page " * 1000
    assert (site / "css/link").readlink() == Path("theme.css")
    assert not (backend["settings"].state_dir / "checkpoints" / run_id).exists()


# ------------------------------------------------------------------ where the journal lives
def test_the_journal_can_live_in_files_while_postgresql_is_configured(
    tmp_path: Path, fresh_pg_dsn: str
) -> None:
    settings = Settings(state_dir=tmp_path / "state", pg_dsn=fresh_pg_dsn, journal="files")
    assert not uses_postgres(settings)
    assert isinstance(open_journal(settings), FileJournal)
    journal = open_journal(replace(settings, journal="auto"))
    assert isinstance(journal, PgJournal)
    journal.close()


def test_the_engine_schema_is_versioned_and_upgrading_twice_is_harmless(
    fresh_pg_dsn: str,
) -> None:
    PgJournal(fresh_pg_dsn).close()
    PgJournal(fresh_pg_dsn).close()
    with psycopg.connect(fresh_pg_dsn) as conn:
        rows = conn.execute("SELECT version, name FROM provision_engine_schema").fetchall()
    assert rows == [(1, "run events")]


# ------------------------------------------------------------------ statement timeouts
def test_a_step_stuck_behind_a_row_lock_gives_up_after_the_lock_timeout(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    dsn = backend["dsn"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE engine_rows (name text PRIMARY KEY, message text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO engine_rows (name, message) VALUES ('alpha', 'old')")
    blocker = psycopg.connect(dsn)
    blocker.execute("SELECT * FROM engine_rows WHERE name = 'alpha' FOR UPDATE")
    outcome: dict[str, Any] = {}
    try:
        thread = threading.Thread(
            target=lambda: outcome.update(
                result=backend["runner"](timeout=0.5).run(pipeline(tmp_path / "w"))
            )
        )
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the step ignored its lock timeout"
    finally:
        blocker.rollback()
        blocker.close()

    result = outcome["result"]
    assert "lock timeout" in (result.failure or "")
    # Undoing the row waited behind the same lock, so it is left for a later rollback.
    assert result.status == RunStatus.ROLLBACK_FAILED
    assert [s.name for s in result.left_for_manual_attention] == ["row"]
    assert backend["runner"]().rollback(result.run_id).status == RunStatus.ROLLED_BACK
    assert row(dsn) == "old" and not (tmp_path / "w/first.html").exists()


# ------------------------------------------------------------------ on failure: keep
def test_a_failed_run_can_keep_what_it_made_for_a_later_rollback(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    runner = backend["runner"]()
    runner.keep_on_failure = True

    failed = runner.run(pipeline(work, fail_at="last"))

    assert failed.status == RunStatus.FAILED_KEPT and failed.exit_code == 1
    assert failed.rollback == [] and (work / "sub/second.html").exists()
    undone = backend["runner"]().rollback(failed.run_id)
    assert undone.status == RunStatus.ROLLED_BACK
    assert not (work / "first.html").exists() and row(backend["dsn"]) is None
