"""Pipelines for the engine's tests: real files and a real row, plus gates that fail or pause.

Registered under `engine-test`; subprocess tests load them with
PROVISION_PIPELINE_MODULES=tests.engine_pipelines.

Faults are switched on by files in the run's work folder, so a pipeline rebuilt from the
journal by another process (resume, rollback) sees the same switches:
- `die-after-apply-<step>`: the step's apply does its work, then the process "dies"
  (SimulatedKill, a BaseException the runner does not catch), once;
- `fail-rollback-<step>`: the step's rollback raises;
- `die-in-rollback-<step>`: the step's rollback does its work, then the process dies, once;
- `continue-<step>`: a paused step goes on (see `pause_until_released`);
- `shape`: "reordered", "extra" or "fewer" changes the pipeline's steps after the fact.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.steps.database_row import DatabaseRowStep
from provisioner.steps.rendered_file import RenderedFileStep


class StepFailed(RuntimeError):
    pass


class SimulatedKill(BaseException):
    """Stands for SIGKILL inside a step: nothing after it runs, no handler sees it."""


def _once(marker: Path) -> bool:
    """True the first time a fault marker is seen; the marker is renamed so it fires once."""
    if not marker.exists():
        return False
    marker.rename(marker.with_name("fired-" + marker.name))
    return True


class Faulty(Step):
    """Wraps a step with the fault switches above; otherwise it is the wrapped step."""

    def __init__(self, inner: Step, work_dir: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.scope = inner.scope
        self.work_dir = work_dir

    def preflight(self, ctx: RunContext) -> list[str]:
        return self.inner.preflight(ctx)

    def check(self, ctx: RunContext) -> Change | None:
        if (self.work_dir / f"check-raises-{self.name}").exists():
            raise StepFailed(f"check of {self.name} cannot read the world")
        return self.inner.check(ctx)

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        return self.inner.keep_before(ctx, change)

    def apply(self, ctx: RunContext) -> Undo:
        undo = self.inner.apply(ctx)
        if _once(self.work_dir / f"die-after-apply-{self.name}"):
            raise SimulatedKill(f"killed inside apply of {self.name}")
        return undo

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        if (self.work_dir / f"fail-rollback-{self.name}").exists():
            raise StepFailed(f"rollback of {self.name} fails (fail-rollback marker)")
        self.inner.rollback(ctx, undo)
        if _once(self.work_dir / f"die-in-rollback-{self.name}"):
            raise SimulatedKill(f"killed inside rollback of {self.name}")

    def undo_from_change(self, change: Change) -> Undo:
        return self.inner.undo_from_change(change)


class Gate(Step):
    """Changes nothing itself; fails or pauses the run when the parameters say so."""

    scope = Scope.GLOBAL

    def __init__(self, name: str, work_dir: Path, fail: bool, pause: bool) -> None:
        self.name = name
        self.work_dir = work_dir
        self.fail = fail
        self.pause = pause

    def check(self, ctx: RunContext) -> Change | None:
        if not (self.fail or self.pause):
            return None
        return Change(f"pass gate {self.name}")

    def apply(self, ctx: RunContext) -> Undo:
        if self.fail:
            raise StepFailed(f"gate {self.name} told to fail")
        pause_until_released(self.work_dir, self.name, self.pause)
        return {"before": None}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        marker = self.work_dir / "rollback-fails"
        if marker.exists():
            raise StepFailed(f"gate {self.name} cannot be rolled back ({marker} exists)")


class PausingFileStep(RenderedFileStep):
    """Writes its file, then pauses inside `apply` (before the undo is journaled)."""

    def __init__(self, *args: Any, work_dir: Path, pause: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work_dir = work_dir
        self.pause = pause

    def apply(self, ctx: RunContext) -> Undo:
        undo = super().apply(ctx)
        pause_until_released(self.work_dir, self.name, self.pause)
        return undo


class ReplaceFolderStep(Step):
    """Makes a folder hold exactly one file; its before-state is the whole folder, kept as a
    checkpoint rather than in the journal."""

    scope = Scope.HOST

    def __init__(self, name: str, folder: Path, content: str) -> None:
        self.name = name
        self.folder = folder
        self.content = content

    def _converged(self) -> bool:
        if not self.folder.is_dir():
            return False
        entries = list(self.folder.iterdir())
        return [e.name for e in entries] == ["index.html"] and (
            entries[0].read_text() == self.content
        )

    def check(self, ctx: RunContext) -> Change | None:
        if self._converged():
            return None
        return Change(f"replace {self.folder}", before={"folder": str(self.folder)})

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        kept = ctx.checkpoint().keep(self.name, self.folder)
        return Change(change.summary, before=kept, after=change.after, diff=change.diff)

    def apply(self, ctx: RunContext) -> Undo:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        (self.folder / "index.html").write_text(self.content)
        return {"before": None}

    def undo_from_change(self, change: Change) -> Undo:
        return {"before": change.before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        ctx.checkpoint().restore(undo["before"], self.folder)


def pause_until_released(work_dir: Path, name: str, pause: bool) -> None:
    """Say we are here (once) and wait to be killed or released by a `continue-<name>` file;
    a resumed run passes straight on."""
    marker = work_dir / f"paused-{name}"
    if not pause or marker.exists():
        return
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (work_dir / f"continue-{name}").exists():
            return
        time.sleep(0.05)
    raise StepFailed("paused step was never killed")


def _shape(steps: list[Step], work: Path) -> list[Step]:
    shape = (work / "shape").read_text().strip() if (work / "shape").exists() else ""
    if shape == "reordered":
        return [steps[1], steps[0], *steps[2:]]
    if shape == "extra":
        return [*steps, Gate("added", work, fail=False, pause=False)]
    if shape == "fewer":
        return [s for s in steps if s.name != "first"]
    return steps


@register("engine-test")
def engine_test_pipeline(params: dict[str, Any], settings: Settings) -> Pipeline:
    """first file -> row -> gate -> second file (pausing when asked) -> [folder] -> last gate."""
    work = Path(params["dir"])
    name = str(params.get("name", "t"))
    fail_at = params.get("fail_at")
    pause_at = params.get("pause_at")
    steps: list[Step] = [
        RenderedFileStep(
            "first", work / "first.html", "demo/greeting.html.j2", {"name": name, "message": "one"}
        ),
    ]
    if params.get("with_row", True):
        steps.append(
            DatabaseRowStep(
                "row", params.get("table", "engine_rows"), name, str(params.get("message", "m"))
            )
        )
    steps += [
        Gate("gate", work, fail=fail_at == "gate", pause=pause_at == "gate"),
        PausingFileStep(
            "second",
            work / "sub" / "second.html",
            "demo/greeting.html.j2",
            {"name": name, "message": str(params.get("message", "m"))},
            work_dir=work,
            pause=pause_at == "second",
        ),
    ]
    if params.get("with_folder"):
        steps.append(ReplaceFolderStep("folder", work / "site", f"site {name}"))
    steps.append(Gate("last", work, fail=fail_at == "last", pause=pause_at == "last"))
    steps = [Faulty(step, work) for step in _shape(steps, work)]
    return Pipeline(
        "engine-test", f"test:{params.get('target', name)}", params, steps, next_steps=["look"]
    )
