"""What a run did, step by step, in a form both the human and the JSON output read."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from provisioner.engine.journal import RunStatus
from provisioner.engine.step import Change


class Outcome(StrEnum):
    """How one step ended, in the words the output uses."""

    CHANGED = "changed"
    OK = "ok"  # already converged
    SKIPPED = "skipped"  # does nothing in this configuration
    PLANNED = "planned"  # --plan: would change
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    NOT_RUN = "not_run"


@dataclass
class StepResult:
    index: int
    name: str
    scope: str
    outcome: Outcome
    summary: str = ""
    change: Change | None = None
    error: str | None = None
    label: str = ""  # how the output names the step ("Database", "SSL"); the name otherwise

    @property
    def changed(self) -> bool:
        return self.outcome in {Outcome.CHANGED, Outcome.PLANNED}


@dataclass
class RunResult:
    """What a run (or plan, resume, rollback) did, for the human and the JSON output."""

    run_id: str | None
    pipeline: str
    target: str
    status: str
    title: str = ""
    steps: list[StepResult] = field(default_factory=list)
    rollback: list[StepResult] = field(default_factory=list)
    failure: str | None = None
    note: str | None = None  # e.g. "already rolled back: nothing to undo"
    next_steps: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        if self.status == RunStatus.FAILED:
            return False
        return any(s.changed for s in self.steps) or any(
            s.outcome == Outcome.ROLLED_BACK for s in self.rollback
        )

    @property
    def exit_code(self) -> int:
        if self.status == RunStatus.ROLLBACK_FAILED:
            return 3
        if self.status in {RunStatus.FAILED, RunStatus.FAILED_KEPT} or self.failure:
            return 1
        return 0

    @property
    def left_for_manual_attention(self) -> list[StepResult]:
        return [s for s in self.rollback if s.outcome == Outcome.ROLLBACK_FAILED]
