"""The Runner: plan, lock, apply in order with a journal, roll back what this run applied.

The order of writes is the safety argument: a step's Change (with the state it found) is
journaled before `apply` runs, and its undo record is journaled before the next step starts.
Whatever instant a process dies at, the journal says enough to finish or undo the run.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from provisioner.config import Settings
from provisioner.engine.journal import (
    Journal,
    JournalError,
    RunRecord,
    RunStatus,
    StepState,
    new_run_id,
    now_iso,
    start_event,
)
from provisioner.engine.locks import TargetLock
from provisioner.engine.pipeline import Pipeline, build
from provisioner.engine.redact import redact
from provisioner.engine.step import Change, Progress, RunContext, Step


class PreflightError(ValueError):
    """The run cannot start: settings missing or services unreachable (nothing was changed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class RunStateError(ValueError):
    """The requested action does not fit the run's state (e.g. resuming a finished run)."""


class Outcome(StrEnum):
    """How one step ended, in the words the output uses."""

    CHANGED = "changed"
    OK = "ok"  # already converged
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
        if self.status == RunStatus.FAILED or self.failure:
            return 1
        return 0

    @property
    def left_for_manual_attention(self) -> list[StepResult]:
        return [s for s in self.rollback if s.outcome == Outcome.ROLLBACK_FAILED]


class Reporter:
    """Receives the run's events as they happen; the default says nothing (used for --json)."""

    progress: Progress = Progress()

    def run_started(self, pipeline: Pipeline, run_id: str | None, mode: str) -> None: ...

    def step_started(self, index: int, step: Step) -> None: ...

    def step_finished(self, result: StepResult) -> None: ...

    def rollback_started(self, reason: str) -> None: ...

    def step_rolled_back(self, result: StepResult) -> None: ...


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return str(redact(text))


LockFactory = Callable[[str], TargetLock]


class Runner:
    """Runs pipelines against the journal and the locks it is given."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        lock_for: LockFactory,
        reporter: Reporter | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.lock_for = lock_for
        self.reporter = reporter or Reporter()
        self.lock_timeout = settings.lock_timeout if lock_timeout is None else lock_timeout

    # -------------------------------------------------------------------- entry points
    def plan(self, pipeline: Pipeline) -> RunResult:
        """What a run would change, with diffs; changes nothing and takes no lock."""
        ctx = self._context(pipeline, run_id="plan")
        try:
            self._preflight(pipeline, ctx)
            self.reporter.run_started(pipeline, None, "plan")
            result = self._result(pipeline, None, "planned")
            for index, step in enumerate(pipeline.steps):
                change = step.check(ctx)
                outcome = Outcome.OK if change is None else Outcome.PLANNED
                summary = "no change" if change is None else change.summary
                step_result = StepResult(
                    index, step.name, str(step.scope), outcome, summary, change
                )
                result.steps.append(step_result)
                self.reporter.step_finished(step_result)
            return result
        finally:
            ctx.close_resources()

    def run(self, pipeline: Pipeline) -> RunResult:
        """Apply the pipeline on its target, under its lock, journaled; roll back on failure."""
        run_id = new_run_id()
        ctx = self._context(pipeline, run_id)
        try:
            self._preflight(pipeline, ctx)
            lock = self.lock_for(pipeline.target)
            lock.acquire(run_id, self.lock_timeout)
            try:
                self.journal.append(
                    run_id, start_event(run_id, pipeline.name, pipeline.target, pipeline.params)
                )
                record = self.journal.get(run_id)
                self.reporter.run_started(pipeline, run_id, "run")
                return self._execute(pipeline, record, ctx)
            finally:
                lock.release()
        finally:
            ctx.close_resources()

    def resume(self, run_id: str) -> RunResult:
        """Continue an interrupted run where its journal stops."""
        return self._with_recorded_run(run_id, self._resume)

    def rollback(self, run_id: str) -> RunResult:
        """Undo what a run applied, newest first (finished, interrupted, or half rolled back)."""
        return self._with_recorded_run(run_id, self._rollback_recorded)

    def status_of(self, record: RunRecord) -> RunStatus:
        """A run journaled as running whose target lock nobody holds was interrupted."""
        if (
            record.status == RunStatus.RUNNING
            and not self.lock_for(record.target).is_held_elsewhere()
        ):
            return RunStatus.INTERRUPTED
        return record.status

    # -------------------------------------------------------------------- internals
    def _context(self, pipeline: Pipeline, run_id: str) -> RunContext:
        return RunContext(
            run_id=run_id,
            target=pipeline.target,
            params=pipeline.params,
            settings=self.settings,
            progress=self.reporter.progress,
        )

    def _preflight(self, pipeline: Pipeline, ctx: RunContext) -> None:
        problems: list[str] = []
        for step in pipeline.steps:
            problems.extend(f"{step.name}: {p}" for p in step.preflight(ctx))
        if problems:
            raise PreflightError(problems)

    def _result(self, pipeline: Pipeline, run_id: str | None, status: str) -> RunResult:
        return RunResult(
            run_id=run_id,
            pipeline=pipeline.name,
            target=pipeline.target,
            status=status,
            title=pipeline.title,
            next_steps=list(pipeline.next_steps),
        )

    def _with_recorded_run(
        self, run_id: str, action: Callable[[Pipeline, RunRecord, RunContext], RunResult]
    ) -> RunResult:
        record = self.journal.get(run_id)
        pipeline = build(record.pipeline, record.params)
        if pipeline.target != record.target:
            raise JournalError(
                f"run {run_id}: the pipeline now targets {pipeline.target!r}, "
                f"the journal says {record.target!r}"
            )
        ctx = self._context(pipeline, run_id)
        try:
            lock = self.lock_for(record.target)
            lock.acquire(run_id, self.lock_timeout)
            try:
                record = self.journal.get(run_id)  # re-read under the lock
                return action(pipeline, record, ctx)
            finally:
                lock.release()
        finally:
            ctx.close_resources()

    def _resume(self, pipeline: Pipeline, record: RunRecord, ctx: RunContext) -> RunResult:
        if record.status != RunStatus.RUNNING:
            raise RunStateError(
                f"run {record.run_id} is {record.status}, not interrupted: only an interrupted run "
                "can be resumed (re-run the command to converge, or `provision runs rollback`)"
            )
        self._preflight(pipeline, ctx)
        event = start_event(record.run_id, pipeline.name, pipeline.target, pipeline.params)
        event["event"] = "run_resumed"
        self._journal(record, event)
        self.reporter.run_started(pipeline, record.run_id, "resume")
        return self._execute(pipeline, record, ctx)

    def _rollback_recorded(
        self, pipeline: Pipeline, record: RunRecord, ctx: RunContext
    ) -> RunResult:
        if record.status in {RunStatus.ROLLED_BACK, RunStatus.FAILED}:
            raise RunStateError(f"run {record.run_id} is already {record.status}: nothing to undo")
        if record.status == RunStatus.RUNNING:
            event = start_event(record.run_id, pipeline.name, pipeline.target, pipeline.params)
            event["event"] = "run_resumed"
            self._journal(record, event)
        self.reporter.run_started(pipeline, record.run_id, "rollback")
        result = self._result(pipeline, record.run_id, "")
        self._undo(pipeline, record, ctx, result, reason="rollback requested")
        final = (
            RunStatus.ROLLBACK_FAILED if result.left_for_manual_attention else RunStatus.ROLLED_BACK
        )
        self._finish(record, final)
        result.status = str(final)
        return result

    def _journal(self, record: RunRecord, event: dict[str, Any]) -> None:
        event.setdefault("at", now_iso())
        self.journal.append(record.run_id, event)
        record.apply_event(redact(event))

    def _step_event(
        self, record: RunRecord, kind: str, index: int, step: Step, **extra: Any
    ) -> None:
        self._journal(record, {"event": kind, "index": index, "step": step.name, **extra})

    def _finish(self, record: RunRecord, status: RunStatus) -> None:
        self._journal(record, {"event": "run_finished", "status": str(status)})

    def _execute(self, pipeline: Pipeline, record: RunRecord, ctx: RunContext) -> RunResult:
        result = self._result(pipeline, record.run_id, "")
        for index, step in enumerate(pipeline.steps):
            known = record.steps.get(index)
            if known and known.state in {StepState.APPLIED, StepState.UNCHANGED}:
                prior = known.change["summary"] if known.change else "no change"
                outcome = Outcome.CHANGED if known.state == StepState.APPLIED else Outcome.OK
                done = StepResult(
                    index, step.name, str(step.scope), outcome, f"{prior} (earlier attempt)"
                )
                result.steps.append(done)
                self.reporter.step_finished(done)
                continue
            self.reporter.step_started(index, step)
            change: Change | None = None
            try:
                change = step.check(ctx)
                if change is None:
                    self._step_event(record, "step_unchanged", index, step)
                    done = StepResult(index, step.name, str(step.scope), Outcome.OK, "no change")
                else:
                    self._step_event(record, "step_planned", index, step, change=change.as_json())
                    undo = step.apply(ctx)
                    self._step_event(record, "step_applied", index, step, undo=undo)
                    done = StepResult(
                        index, step.name, str(step.scope), Outcome.CHANGED, change.summary, change
                    )
            except Exception as exc:
                error = _error_text(exc)
                self._step_event(
                    record,
                    "step_failed",
                    index,
                    step,
                    error=error,
                    trace=traceback.format_exc(limit=8),
                )
                failed = StepResult(
                    index, step.name, str(step.scope), Outcome.FAILED, error, change, error
                )
                result.steps.append(failed)
                result.failure = f"{step.name}: {error}"
                self.reporter.step_finished(failed)
                for later_index, later in enumerate(pipeline.steps[index + 1 :], start=index + 1):
                    result.steps.append(
                        StepResult(later_index, later.name, str(later.scope), Outcome.NOT_RUN)
                    )
                self._undo(pipeline, record, ctx, result, reason=result.failure)
                final = (
                    RunStatus.ROLLBACK_FAILED
                    if result.left_for_manual_attention
                    else RunStatus.FAILED
                )
                self._finish(record, final)
                result.status = str(final)
                return result
            result.steps.append(done)
            self.reporter.step_finished(done)
        self._finish(record, RunStatus.SUCCEEDED)
        result.status = str(RunStatus.SUCCEEDED)
        return result

    def _undo(
        self, pipeline: Pipeline, record: RunRecord, ctx: RunContext, result: RunResult, reason: str
    ) -> None:
        """Roll back, newest first, every step of this run that applied or may have applied."""
        to_undo = [
            s
            for s in sorted(record.steps.values(), key=lambda s: s.index, reverse=True)
            if s.change is not None
            and s.state
            in {StepState.APPLIED, StepState.PLANNED, StepState.FAILED, StepState.ROLLBACK_FAILED}
        ]
        if not to_undo:
            return
        self.reporter.rollback_started(reason)
        for known in to_undo:
            step = pipeline.steps[known.index]
            change = Change.from_json(known.change or {})
            undo = known.undo if known.undo is not None else step.undo_from_change(change)
            try:
                step.rollback(ctx, undo)
            except Exception as exc:
                error = _error_text(exc)
                self._step_event(record, "step_rollback_failed", known.index, step, error=error)
                undone = StepResult(
                    known.index,
                    step.name,
                    str(step.scope),
                    Outcome.ROLLBACK_FAILED,
                    change.summary,
                    change,
                    error,
                )
            else:
                self._step_event(record, "step_rolled_back", known.index, step)
                undone = StepResult(
                    known.index,
                    step.name,
                    str(step.scope),
                    Outcome.ROLLED_BACK,
                    change.summary,
                    change,
                )
            result.rollback.append(undone)
            self.reporter.step_rolled_back(undone)
