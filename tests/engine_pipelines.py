"""Pipelines for the engine's tests: real files and a real row, plus gates that fail or pause.

Registered under `engine-test`; subprocess tests load them with
PROVISION_PIPELINE_MODULES=tests.engine_pipelines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from provisioner.demo.file_step import RenderedFileStep
from provisioner.demo.row_step import DatabaseRowStep
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo


class StepFailed(RuntimeError):
    pass


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
        pause_until_killed(self.work_dir / f"paused-{self.name}", self.pause)
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
        pause_until_killed(self.work_dir / f"paused-{self.name}", self.pause)
        return undo


def pause_until_killed(marker: Path, pause: bool) -> None:
    """Say we are here (once) and wait to be killed; a resumed run passes straight on."""
    if not pause or marker.exists():
        return
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise StepFailed("paused step was never killed")


@register("engine-test")
def engine_test_pipeline(params: dict[str, Any]) -> Pipeline:
    """first file -> row -> gate -> second file (pausing when asked) -> last gate."""
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
        Gate("last", work, fail=fail_at == "last", pause=pause_at == "last"),
    ]
    return Pipeline(
        "engine-test", f"test:{params.get('target', name)}", params, steps, next_steps=["look"]
    )
