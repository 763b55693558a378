"""How runs are shown: a line per step for people, Ansible-style JSON for machines.

The JSON follows Ansible's return-value conventions (`changed`, `failed`, `msg`, and per step
`diff` with `before`/`after`/`prepared`) so a playbook can register and test it directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from provisioner.engine.journal import RunRecord
from provisioner.engine.pipeline import Pipeline
from provisioner.engine.redact import redact
from provisioner.engine.results import Outcome, RunResult, StepResult
from provisioner.engine.runner import Reporter
from provisioner.engine.step import Progress, Step

MARKS = {
    Outcome.CHANGED: "✓",
    Outcome.OK: "✓",
    Outcome.SKIPPED: "–",
    Outcome.PLANNED: "•",
    Outcome.FAILED: "✗",
    Outcome.ROLLED_BACK: "↺",
    Outcome.ROLLBACK_FAILED: "✗",
    Outcome.NOT_RUN: "·",
}


def step_line(result: StepResult) -> str:
    mark = MARKS[result.outcome]
    if result.outcome == Outcome.OK:
        text = (
            f"{result.summary}"
            if result.summary != "no change"
            else "already as wanted (no change)"
        )
    elif result.outcome == Outcome.NOT_RUN:
        text = "not run"
    elif result.outcome == Outcome.ROLLED_BACK:
        text = f"rolled back ({result.summary})"
    elif result.outcome == Outcome.ROLLBACK_FAILED:
        text = f"ROLLBACK FAILED: {result.error}"
    else:
        text = result.summary
    return f"{mark} {result.label or result.name.capitalize()}: {text}"


def human_lines(result: RunResult, show_diffs: bool = False) -> list[str]:
    """The whole result as text, for printing after the streamed lines or on its own."""
    lines: list[str] = []
    if result.status == "planned":
        changes = sum(1 for s in result.steps if s.outcome == Outcome.PLANNED)
        lines.append(
            f"Plan for {result.pipeline} on {result.target}: {changes} step(s) would change"
        )
        if result.failure:
            lines.append(f"Could not check: {result.failure}")
        for step in result.steps:
            lines.append(step_line(step))
            if show_diffs and step.change and step.change.diff:
                lines.extend("    " + d for d in step.change.diff.rstrip("\n").splitlines())
        lines.append("Nothing was changed (--plan).")
        return lines
    if result.note:
        lines.append(result.note)
        return lines
    if result.failure:
        lines.append(f"Failed: {result.failure}")
        if result.status == "rollback_failed":
            lines.append("Rollback did not complete; needs manual attention:")
            lines.extend(f"  - {s.name}: {s.error}" for s in result.left_for_manual_attention)
            lines.append(f"Retry the undo with: provision runs rollback {result.run_id}")
        elif result.status == "failed_kept":
            lines.append("What this run made was kept for inspection (--on-failure keep).")
            lines.append(f"Remove it with: provision runs rollback {result.run_id}")
            lines.append(f"Or, once fixed, finish it with: provision runs resume {result.run_id}")
        else:
            lines.append("Everything this run changed was rolled back.")
    elif result.status == "rolled_back":
        lines.append(f"Run {result.run_id} rolled back.")
    elif result.status == "rollback_failed":
        lines.append("Rollback did not complete; needs manual attention:")
        lines.extend(f"  - {s.name}: {s.error}" for s in result.left_for_manual_attention)
    else:
        changed = sum(1 for s in result.steps if s.outcome == Outcome.CHANGED)
        unchanged = len(result.steps) - changed
        lines.append(
            f"Done: {changed} changed, {unchanged} already as wanted (run {result.run_id})."
        )
        if result.next_steps:
            lines.append("")
            lines.append("Next steps:")
            lines.extend(f"{i}. {text}" for i, text in enumerate(result.next_steps, 1))
    return lines


def _step_json(step: StepResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": step.name,
        "scope": step.scope,
        "status": str(step.outcome),
        "changed": step.changed or step.outcome == Outcome.ROLLED_BACK,
        "failed": step.outcome in {Outcome.FAILED, Outcome.ROLLBACK_FAILED},
        "msg": step.error or step.summary,
    }
    if step.change is not None:
        out["diff"] = {"before": step.change.before, "after": step.change.after}
        if step.change.diff:
            out["diff"]["prepared"] = step.change.diff
    return out


def result_json(result: RunResult) -> dict[str, Any]:
    """The result in Ansible's return-value shape, secrets masked."""
    if result.failure:
        msg = result.failure
    elif result.note:
        msg = result.note
    elif result.status == "planned":
        msg = "plan only: nothing changed"
    else:
        msg = f"{result.pipeline} on {result.target}: {result.status}"
    payload = {
        "changed": result.changed,
        "failed": result.exit_code != 0,
        "msg": msg,
        "rc": result.exit_code,
        "run_id": result.run_id,
        "pipeline": result.pipeline,
        "target": result.target,
        "status": result.status,
        "steps": [_step_json(s) for s in result.steps],
        "rollback": [_step_json(s) for s in result.rollback],
        "left_for_manual_attention": [s.name for s in result.left_for_manual_attention],
        "next_steps": result.next_steps,
    }
    return redact(payload)


def dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, indent=2, default=str)


def run_record_json(record: RunRecord, status: str) -> dict[str, Any]:
    out = record.summary_line()
    out["status"] = status
    out["params"] = record.params
    out["steps"] = [
        {
            "index": s.index,
            "name": s.name,
            "state": str(s.state),
            "summary": (s.change or {}).get("summary"),
            "error": s.error,
        }
        for s in sorted(record.steps.values(), key=lambda s: s.index)
    ]
    return redact(out)


class RichStepProgress(Progress):
    """Spinner notes and progress bars for long steps, on the console."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, message: str) -> None:
        if self.console.is_terminal:
            self.console.log(f"  … {message}")

    @contextmanager
    def track(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        with RichProgress(
            TextColumn("  {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


class HumanReporter(Reporter):
    """Prints one line per step as it finishes, and the rollback as it happens."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.progress = RichStepProgress(self.console)
        self.mode = "run"

    def run_started(self, pipeline: Pipeline, run_id: str | None, mode: str) -> None:
        self.mode = mode
        title = pipeline.title or f"{pipeline.name} on {pipeline.target}"
        suffix = f" (run {run_id})" if run_id else ""
        verb = {"plan": "Planning", "resume": "Resuming", "rollback": "Rolling back"}.get(
            mode, "Running"
        )
        self.console.print(f"{verb}: {title}{suffix}", markup=False)

    def step_started(self, index: int, step: Step) -> None: ...

    def step_finished(self, result: StepResult) -> None:
        if self.mode != "plan" and result.outcome != Outcome.NOT_RUN:
            self.console.print(step_line(result), markup=False)

    def rollback_started(self, reason: str) -> None:
        self.console.print(f"Rolling back this run's changes ({reason})", markup=False)

    def step_rolled_back(self, result: StepResult) -> None:
        self.console.print(step_line(result), markup=False)
