"""The journal's promise: whatever instant a run dies at, it can be finished or undone.

A step is killed inside `apply` (after its work, before its undo record is journaled); then
every sequence of resume, rollback, a rollback that fails, and a rollback that is itself
killed must converge, and after the last rollback the world must be as it was before the
run. For a file step and a database row step, on both journal backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.engine.journal import RunStatus
from provisioner.engine.runner import RunStateError
from tests.engine_pipelines import SimulatedKill
from tests.engine_support import backend, pipeline, row

__all__ = ["backend"]  # the fixture, used by name

KEPT_FIRST = "operator's own first page\n"
KEPT_SECOND = "kept\n"


def arrange(work: Path, dsn: str) -> dict[str, Any]:
    """A world the run will change: two files and a row that existed before it."""
    (work / "sub").mkdir(parents=True)
    (work / "first.html").write_text(KEPT_FIRST)
    (work / "sub/second.html").write_text(KEPT_SECOND)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE engine_rows (name text PRIMARY KEY, message text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO engine_rows (name, message) VALUES ('alpha', 'old')")
    return snapshot(work, dsn)


def snapshot(work: Path, dsn: str) -> dict[str, Any]:
    def text(path: Path) -> str | None:
        return path.read_text() if path.exists() else None

    return {
        "first": text(work / "first.html"),
        "second": text(work / "sub/second.html"),
        "row": row(dsn),
    }


def converged(work: Path, dsn: str) -> bool:
    now = snapshot(work, dsn)
    return (
        now["row"] == "hello"
        and "alpha" in (now["first"] or "")
        and "hello" in (now["second"] or "")
    )


def kill_inside_apply(backend: dict[str, Any], work: Path, step: str) -> str:
    """Start a run and 'SIGKILL' it inside `step`'s apply; return the run id."""
    (work / f"die-after-apply-{step}").write_text("")
    runner = backend["runner"]()
    with pytest.raises(SimulatedKill):
        runner.run(pipeline(work))
    (run_id,) = runner.journal.run_ids()
    assert runner.status_of(runner.journal.get(run_id)) == RunStatus.INTERRUPTED
    return run_id


def act(backend: dict[str, Any], work: Path, run_id: str, action: str, step: str) -> None:
    runner = backend["runner"]()
    if action == "resume":
        assert runner.resume(run_id).status == RunStatus.SUCCEEDED
        assert converged(work, backend["dsn"])
    elif action == "resume-refused":
        with pytest.raises(RunStateError):
            runner.resume(run_id)
    elif action == "rollback":
        result = runner.rollback(run_id)
        assert result.status == RunStatus.ROLLED_BACK and result.exit_code == 0
    elif action == "failing-rollback":
        marker = work / f"fail-rollback-{step}"
        marker.write_text("")
        result = runner.rollback(run_id)
        marker.unlink()
        assert result.status == RunStatus.ROLLBACK_FAILED and result.exit_code == 3
        assert [s.name for s in result.left_for_manual_attention] == [step]
    elif action == "killed-rollback":
        (work / f"die-in-rollback-{step}").write_text("")
        with pytest.raises(SimulatedKill):
            runner.rollback(run_id)
        assert runner.status_of(runner.journal.get(run_id)) == RunStatus.INTERRUPTED
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(action)


SEQUENCES = {
    "resume, rollback": ["resume", "rollback"],
    "rollback": ["rollback"],
    "rollback twice": ["rollback", "rollback"],
    "resume twice, rollback": ["resume", "resume-refused", "rollback"],
    "failed rollback, rollback": ["failing-rollback", "rollback"],
    "failed rollback, resume, rollback": ["failing-rollback", "resume", "rollback"],
    "killed rollback, rollback": ["killed-rollback", "rollback"],
    "killed rollback, resume, rollback": ["killed-rollback", "resume", "rollback"],
    "resume, killed rollback, rollback": ["resume", "killed-rollback", "rollback"],
}


@pytest.mark.parametrize("killed_step", ["first", "row", "second"])
@pytest.mark.parametrize("sequence", list(SEQUENCES), ids=list(SEQUENCES))
def test_every_sequence_after_a_kill_inside_apply_restores_the_world_before_the_run(
    backend: dict[str, Any], tmp_path: Path, killed_step: str, sequence: str
) -> None:
    work = tmp_path / "w"
    before = arrange(work, backend["dsn"])
    run_id = kill_inside_apply(backend, work, killed_step)
    assert snapshot(work, backend["dsn"]) != before  # the killed apply did its work

    for action in SEQUENCES[sequence]:
        act(backend, work, run_id, action, killed_step)

    assert snapshot(work, backend["dsn"]) == before


def test_the_issue_reproduction_resume_then_rollback_puts_back_kept(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    """The page held `kept`; the run was killed inside its apply; resume finds the page
    converged; rollback must still put `kept` back."""
    work = tmp_path / "w"
    arrange(work, backend["dsn"])
    run_id = kill_inside_apply(backend, work, "second")

    resumed = backend["runner"]().resume(run_id)
    second = next(s for s in resumed.steps if s.name == "second")
    assert second.summary.endswith("(finished earlier)")
    backend["runner"]().rollback(run_id)

    assert (work / "sub/second.html").read_text() == KEPT_SECOND


def test_the_first_before_state_survives_a_second_kill_of_the_same_step(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    before = arrange(work, backend["dsn"])
    run_id = kill_inside_apply(backend, work, "second")
    (work / "sub/second.html").write_text("half-written by the killed apply\n")
    (work / "die-after-apply-second").write_text("")
    with pytest.raises(SimulatedKill):
        backend["runner"]().resume(run_id)

    backend["runner"]().rollback(run_id)

    assert snapshot(work, backend["dsn"]) == before


def test_a_step_created_from_nothing_is_removed_with_its_folders(
    backend: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    work.mkdir()
    run_id = kill_inside_apply(backend, work, "second")
    assert (work / "sub/second.html").exists()

    backend["runner"]().rollback(run_id)

    assert not (work / "sub").exists() and not (work / "first.html").exists()
    assert row(backend["dsn"]) is None
