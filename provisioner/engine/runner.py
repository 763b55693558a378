"""The Runner: plan, lock, apply in order with a journal, roll back what this run applied.

The order of writes is the safety argument: a step's Change (with the state it found) is
journaled before `apply` runs, and its undo record is journaled before the next step starts.
Whatever instant a process dies at, the journal says enough to finish or undo the run; the
journal's fold (journal.py) decides what a rollback undoes. Before every step and journal
write the runner checks it still holds its locks, and stops at once if it does not.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.checkpoint import Checkpoints
from provisioner.engine.errors import RunBlocked, UsageError
from provisioner.engine.journal import (
    Journal,
    JournalUnavailable,
    RunRecord,
    RunStatus,
    StepRecord,
    StepState,
    encode_event,
    new_run_id,
    now_iso,
    start_event,
)
from provisioner.engine.locks import TargetLock
from provisioner.engine.pipeline import Pipeline, build
from provisioner.engine.redact import redact
from provisioner.engine.results import Outcome, RunResult, StepResult
from provisioner.engine.step import Change, Progress, RunContext, Scope, Step

__all__ = [
    "LockFactory",
    "Outcome",
    "PipelineMismatch",
    "PreflightError",
    "Reporter",
    "RunResult",
    "RunStateError",
    "RunStopped",
    "Runner",
    "StepResult",
]


class PreflightError(UsageError):
    """The run cannot start: settings missing or services unreachable (nothing was changed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class RunStateError(UsageError):
    """The requested action does not fit the run's state (e.g. resuming a finished run)."""


class PipelineMismatch(UsageError):
    """The pipeline rebuilt today does not have the steps the run was journaled with."""


class RunStopped(RunBlocked):
    """The run stopped before its next step (its journal or lock went away); undo it later."""


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
ALL_SCOPES: tuple[Scope, ...] = (Scope.GLOBAL, Scope.HOST)


class Runner:
    """Runs pipelines against the journal and the locks it is given."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        lock_for: LockFactory,
        reporter: Reporter | None = None,
        lock_timeout: float | None = None,
        host: str | None = None,
        keep_on_failure: bool = False,
    ) -> None:
        self.settings = settings
        # On a failed step, keep what the run made (for inspection; `rollback` removes it later).
        self.keep_on_failure = keep_on_failure
        self.journal = journal
        self.lock_for = lock_for
        self.reporter = reporter or Reporter()
        self.lock_timeout = settings.lock_timeout if lock_timeout is None else lock_timeout
        self.host = host or socket.gethostname()
        self.checkpoint_root: Path = settings.state_dir / "checkpoints"
        self._held: list[TargetLock] = []
        # Clients kept across runs by whoever set this (a status report of many sites opens
        # one Route53 client, not one per site); that owner closes them, not the runner.
        self.shared_clients: dict[Any, Any] | None = None

    # -------------------------------------------------------------------- entry points
    def plan(
        self,
        pipeline: Pipeline,
        scopes: Collection[Scope] | None = None,
        *,
        preflight: bool = True,
    ) -> RunResult:
        """What a run would change, with diffs; changes nothing and takes no lock.

        A `check` that raises is that step's failure (the others are still checked), so a
        status report can show every step. A status report also passes `preflight=False`: a
        service that is down is then that step's error, not a refusal of the whole report.
        """
        pipeline = self._scoped(pipeline, scopes)
        with self._context(pipeline, "plan", checkpoints=False) as ctx:
            if preflight:
                self._preflight(pipeline, ctx)
            self.reporter.run_started(pipeline, None, "plan")
            result = self._result(pipeline, None, "planned")
            for index, step in enumerate(pipeline.steps):
                try:
                    change = step.check(ctx)
                except Exception as exc:
                    error = _error_text(exc)
                    step_result = _step_result(index, step, Outcome.FAILED, error, error=error)
                    result.failure = result.failure or f"{step.name}: {error}"
                else:
                    outcome = Outcome.OK if change is None else Outcome.PLANNED
                    summary = "no change" if change is None else change.summary
                    if change is None and step.skipped:
                        outcome, summary = Outcome.SKIPPED, f"skipped ({step.skipped})"
                    step_result = _step_result(index, step, outcome, summary, change)
                result.steps.append(step_result)
                self.reporter.step_finished(step_result)
            return result

    def run(self, pipeline: Pipeline, scopes: Collection[Scope] | None = None) -> RunResult:
        """Apply the pipeline on its target, under its locks, journaled; roll back on failure."""
        chosen = sorted(set(scopes or ALL_SCOPES))
        pipeline = self._scoped(pipeline, chosen)
        run_id = new_run_id()
        locks = self._lock_names(pipeline.target, chosen)
        event = start_event(
            run_id,
            pipeline.name,
            pipeline.target,
            pipeline.params,
            step_names=pipeline.step_names,
            scopes=[str(s) for s in chosen],
            locks=locks,
        )
        encode_event(event)  # parameters the journal cannot hold stop the run here
        with self._context(pipeline, run_id) as ctx:
            self._preflight(pipeline, ctx)
            self.journal.check_writable()
            with self._holding(locks, run_id):
                self.journal.append(run_id, event)
                record = self.journal.get(run_id)
                self.reporter.run_started(pipeline, run_id, "run")
                return self._execute(pipeline, record, ctx)

    def resume(self, run_id: str) -> RunResult:
        """Continue an interrupted run (or one whose rollback failed) where its journal stops."""
        return self._with_recorded_run(run_id, self._resume, force=False)

    def rollback(self, run_id: str, force: bool = False) -> RunResult:
        """Undo what a run applied, newest first (finished, interrupted, or half rolled back).

        With `force`, a pipeline that changed since the run was journaled is still used: each
        journaled step is found by its name, and one that no longer exists is reported.
        """
        return self._with_recorded_run(run_id, self._rollback_recorded, force=force)

    def status_of(self, record: RunRecord) -> RunStatus:
        """A run journaled as running whose target lock nobody holds was interrupted."""
        if record.status != RunStatus.RUNNING:
            return record.status
        names = record.locks or [record.target]
        if any(self.lock_for(name).is_held_elsewhere() for name in names):
            return record.status
        return RunStatus.INTERRUPTED

    # -------------------------------------------------------------------- context and locks
    def _scoped(self, pipeline: Pipeline, scopes: Collection[Scope] | None) -> Pipeline:
        if not scopes or set(scopes) >= set(ALL_SCOPES):
            return pipeline
        return pipeline.limited_to(scopes)

    def _lock_names(self, target: str, scopes: Collection[Scope]) -> list[str]:
        """The global part locks the target; the host part locks (target, this host)."""
        names = []
        if Scope.GLOBAL in scopes:
            names.append(target)
        if Scope.HOST in scopes:
            names.append(f"{target}@{self.host}")
        return names

    @contextmanager
    def _holding(self, names: list[str], run_id: str) -> Iterator[None]:
        with ExitStack() as stack:
            for name in names:
                lock = self.lock_for(name)
                lock.acquire(run_id, self.lock_timeout)
                stack.callback(lock.release)
                self._held.append(lock)
                stack.callback(self._held.remove, lock)
            yield

    def _verify_locks(self) -> None:
        for lock in self._held:
            lock.verify()

    @contextmanager
    def _context(
        self, pipeline: Pipeline, run_id: str, checkpoints: bool = True
    ) -> Iterator[RunContext]:
        ctx = RunContext(
            run_id=run_id,
            target=pipeline.target,
            params=pipeline.params,
            settings=self.settings,
            progress=self.reporter.progress,
            checkpoints=Checkpoints(self.checkpoint_root, run_id) if checkpoints else None,
            shared=self.shared_clients,
        )
        try:
            yield ctx
        finally:
            ctx.close_clients()

    def _preflight(self, pipeline: Pipeline, ctx: RunContext) -> None:
        problems: list[str] = []
        for step in pipeline.steps:
            try:
                found = step.preflight(ctx)
            except Exception as exc:
                found = [f"could not be checked ({_error_text(exc)})"]
            problems.extend(f"{step.name}: {p}" for p in found)
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

    # -------------------------------------------------------------------- recorded runs
    def _with_recorded_run(
        self,
        run_id: str,
        action: Callable[[Pipeline, RunRecord, RunContext, bool], RunResult],
        force: bool,
    ) -> RunResult:
        record = self.journal.get(run_id)
        if record.status == RunStatus.UNREADABLE:
            raise RunStateError(f"run {run_id}: {record.error}")
        pipeline = build(record.pipeline, record.params, self.settings)
        if record.scopes:
            pipeline = self._scoped(pipeline, [Scope(s) for s in record.scopes])
        self._match(pipeline, record, force)
        locks = record.locks or [record.target]
        with self._context(pipeline, record.run_id) as ctx, self._holding(locks, record.run_id):
            record = self.journal.get(run_id)  # re-read under the lock
            return action(pipeline, record, ctx, force)

    def _match(self, pipeline: Pipeline, record: RunRecord, force: bool) -> None:
        """Refuse to act on a run with a pipeline whose steps are not the journaled ones."""
        if pipeline.target != record.target:
            raise PipelineMismatch(
                f"run {record.run_id}: the pipeline now targets {pipeline.target!r}, "
                f"the journal says {record.target!r}"
            )
        journaled = record.step_names
        if journaled is None or journaled == pipeline.step_names or force:
            return
        raise PipelineMismatch(
            f"run {record.run_id} was journaled with steps [{', '.join(journaled)}] but the "
            f"pipeline {pipeline.name!r} now has [{', '.join(pipeline.step_names)}]; "
            "nothing was done. A rollback can go ahead with force (each step found by its "
            "journaled name)"
        )

    def _resume(
        self, pipeline: Pipeline, record: RunRecord, ctx: RunContext, force: bool
    ) -> RunResult:
        if record.status not in {
            RunStatus.RUNNING,
            RunStatus.ROLLBACK_FAILED,
            RunStatus.FAILED_KEPT,
        }:
            raise RunStateError(
                f"run {record.run_id} is {record.status}: only an interrupted run, one whose "
                "rollback failed, or a failed run whose changes were kept can be resumed "
                "(run the pipeline again to converge instead)"
            )
        self._preflight(pipeline, ctx)
        self._journal_resumed(record, pipeline, "resume")
        self.reporter.run_started(pipeline, record.run_id, "resume")
        return self._execute(pipeline, record, ctx)

    def _rollback_recorded(
        self, pipeline: Pipeline, record: RunRecord, ctx: RunContext, force: bool
    ) -> RunResult:
        result = self._result(pipeline, record.run_id, str(RunStatus.ROLLED_BACK))
        if record.status in {RunStatus.ROLLED_BACK, RunStatus.FAILED}:
            result.note = f"run {record.run_id} is already {record.status}: nothing to undo"
            return result
        self._journal_resumed(record, pipeline, "rollback")
        self.reporter.run_started(pipeline, record.run_id, "rollback")
        self._undo(pipeline, record, ctx, result, "rollback requested", by_name=force)
        final = (
            RunStatus.ROLLBACK_FAILED if result.left_for_manual_attention else RunStatus.ROLLED_BACK
        )
        self._finish(record, final, ctx)
        result.status = str(final)
        return result

    # -------------------------------------------------------------------- journaling
    def _journal(self, record: RunRecord, event: dict[str, Any]) -> None:
        """Write one event, after making sure this run still holds its locks."""
        event.setdefault("at", now_iso())
        try:
            self._verify_locks()
            self.journal.append(record.run_id, event)
        except (RunBlocked, JournalUnavailable) as exc:
            raise RunStopped(
                f"{exc}. Run {record.run_id} stopped before its next step; resume or roll it "
                "back once the cause is fixed"
            ) from None
        record.apply_event(redact(event))

    def _journal_resumed(self, record: RunRecord, pipeline: Pipeline, mode: str) -> None:
        event = start_event(record.run_id, pipeline.name, pipeline.target, pipeline.params)
        event.update(event="run_resumed", mode=mode)
        self._journal(record, event)

    def _step_event(
        self, record: RunRecord, kind: str, index: int, step: Step, **extra: Any
    ) -> None:
        self._journal(record, {"event": kind, "index": index, "step": step.name, **extra})

    def _finish(self, record: RunRecord, status: RunStatus, ctx: RunContext) -> None:
        self._journal(record, {"event": "run_finished", "status": str(status)})
        if status in {RunStatus.ROLLED_BACK, RunStatus.FAILED} and ctx.checkpoints:
            ctx.checkpoints.discard()  # nothing left to restore from them

    # -------------------------------------------------------------------- forward
    def _execute(self, pipeline: Pipeline, record: RunRecord, ctx: RunContext) -> RunResult:
        result = self._result(pipeline, record.run_id, "")
        for index, step in enumerate(pipeline.steps):
            known = record.steps.get(index)
            if known and known.state in {StepState.APPLIED, StepState.UNCHANGED}:
                done = self._earlier(index, step, known)
                result.steps.append(done)
                self.reporter.step_finished(done)
                continue
            self.reporter.step_started(index, step)
            try:
                done = self._apply_step(record, ctx, index, step, known)
            except RunStopped:
                raise
            except Exception as exc:
                return self._fail(pipeline, record, ctx, result, index, step, exc)
            result.steps.append(done)
            self.reporter.step_finished(done)
        self._finish(record, RunStatus.SUCCEEDED, ctx)
        result.status = str(RunStatus.SUCCEEDED)
        return result

    def _earlier(self, index: int, step: Step, known: StepRecord) -> StepResult:
        prior = known.change["summary"] if known.change else "no change"
        outcome = Outcome.CHANGED if known.state == StepState.APPLIED else Outcome.OK
        return _step_result(index, step, outcome, f"{prior} (earlier attempt)")

    def _apply_step(
        self, record: RunRecord, ctx: RunContext, index: int, step: Step, known: StepRecord | None
    ) -> StepResult:
        self._verify_locks()
        change = step.check(ctx)
        if change is None:
            if known is not None and known.attempt_open and known.change is not None:
                # An earlier attempt of this run got this far before it was cut short: the
                # step counts as applied by this run, undone from its first before-state.
                first = Change.from_json(known.change)
                undo = step.undo_from_change(first)
                self._step_event(record, "step_applied", index, step, undo=undo, recovered=True)
                return _step_result(
                    index, step, Outcome.CHANGED, f"{first.summary} (finished earlier)", first
                )
            if step.skipped:
                self._step_event(record, "step_unchanged", index, step, skipped=step.skipped)
                return _step_result(index, step, Outcome.SKIPPED, f"skipped ({step.skipped})")
            self._step_event(record, "step_unchanged", index, step)
            return _step_result(index, step, Outcome.OK, _said(step, False) or "no change")
        change = step.keep_before(ctx, change)
        self._step_event(record, "step_planned", index, step, change=change.as_json())
        undo = step.apply(ctx)
        self._step_event(record, "step_applied", index, step, undo=undo)
        return _step_result(
            index, step, Outcome.CHANGED, _said(step, True) or change.summary, change
        )

    def _fail(
        self,
        pipeline: Pipeline,
        record: RunRecord,
        ctx: RunContext,
        result: RunResult,
        index: int,
        step: Step,
        exc: Exception,
    ) -> RunResult:
        error = _error_text(exc)
        trace = str(redact(traceback.format_exc(limit=8)))
        self._step_event(record, "step_failed", index, step, error=error, trace=trace)
        known = record.steps.get(index)
        change = Change.from_json(known.change) if known and known.change else None
        failed = _step_result(index, step, Outcome.FAILED, error, change, error)
        result.steps.append(failed)
        result.failure = f"{step.name}: {error}"
        self.reporter.step_finished(failed)
        for later_index, later in enumerate(pipeline.steps[index + 1 :], start=index + 1):
            result.steps.append(_step_result(later_index, later, Outcome.NOT_RUN))
        if self.keep_on_failure:
            self._finish(record, RunStatus.FAILED_KEPT, ctx)
            result.status = str(RunStatus.FAILED_KEPT)
            return result
        self._undo(pipeline, record, ctx, result, reason=result.failure)
        final = RunStatus.ROLLBACK_FAILED if result.left_for_manual_attention else RunStatus.FAILED
        self._finish(record, final, ctx)
        result.status = str(final)
        return result

    # -------------------------------------------------------------------- backward
    def _undo(
        self,
        pipeline: Pipeline,
        record: RunRecord,
        ctx: RunContext,
        result: RunResult,
        reason: str,
        by_name: bool = False,
    ) -> None:
        """Roll back, newest first, every step of this run that applied or may have applied."""
        to_undo = sorted(
            (s for s in record.steps.values() if s.may_have_changed),
            key=lambda s: s.index,
            reverse=True,
        )
        if not to_undo:
            return
        self.reporter.rollback_started(reason)
        steps_by_name = {s.name: s for s in pipeline.steps}
        for known in to_undo:
            step = steps_by_name.get(known.name) if by_name else _at(pipeline, known.index)
            undone = self._undo_step(record, ctx, known, step)
            result.rollback.append(undone)
            self.reporter.step_rolled_back(undone)

    def _undo_step(
        self, record: RunRecord, ctx: RunContext, known: StepRecord, step: Step | None
    ) -> StepResult:
        change = Change.from_json(known.change or {"summary": known.name})
        scope = str(step.scope) if step else "?"
        label = step.label if step else ""
        try:
            if step is None or step.name != known.name:
                raise RuntimeError(
                    f"the pipeline has no step {known.name!r} any more; undo it by hand from "
                    "the journal's before-state"
                )
            self._verify_locks()
            if known.cut_short or known.undo is None:
                undo = step.undo_from_change(change)
            else:
                undo = known.undo
            step.rollback(ctx, undo)
        except RunStopped:
            raise
        except Exception as exc:
            if isinstance(exc, RunBlocked):
                raise RunStopped(f"{exc}. Run {record.run_id} stopped mid-rollback") from None
            error = _error_text(exc)
            self._journal(
                record,
                {
                    "event": "step_rollback_failed",
                    "index": known.index,
                    "step": known.name,
                    "error": error,
                },
            )
            return StepResult(
                known.index,
                known.name,
                scope,
                Outcome.ROLLBACK_FAILED,
                change.summary,
                change,
                error,
                label,
            )
        self._journal(
            record, {"event": "step_rolled_back", "index": known.index, "step": known.name}
        )
        return StepResult(
            known.index, known.name, scope, Outcome.ROLLED_BACK, change.summary, change, None, label
        )


def _said(step: Step, changed: bool) -> str | None:
    """The step's own line about what it did; a failure to say it never fails the run."""
    try:
        return step.outcome(changed)
    except Exception:
        return None


def _at(pipeline: Pipeline, index: int) -> Step | None:
    return pipeline.steps[index] if 0 <= index < len(pipeline.steps) else None


def _step_result(
    index: int,
    step: Step,
    outcome: Outcome,
    summary: str = "",
    change: Change | None = None,
    error: str | None = None,
) -> StepResult:
    return StepResult(
        index, step.name, str(step.scope), outcome, summary, change, error, step.label
    )
