"""The crash drill's pipeline: any registered pipeline, one of whose steps pauses at a chosen
point so the test can SIGKILL the real process there (loaded with
PROVISION_PIPELINE_MODULES=tests.drill_pipelines).

`provision run drill -p pipeline=site-create -p params='{...}' -p kill_at=nginx:inside
-p work=/tmp/x` builds `site-create` with those parameters and wraps its steps. At the point
named, the process writes `<work>/paused` (holding its run id) and sleeps until it is killed.
A run rebuilt from the journal (`runs resume`, `runs rollback`) finds the marker and passes
straight on, so the drilled run and its recovery share one pipeline, as the journal requires.

Points: `boundary` (every earlier step applied and journaled, nothing of this one done: the
process dies as the runner checks it) and `inside` (the step's apply did all its work, its undo
record is not journaled yet: a process dying in the middle of the step; a step the runner finds
converged, like health once the certificate step made the site answer, dies right after its
check instead, before `step_unchanged` is journaled).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, build, register
from provisioner.engine.step import Change, RunContext, Step, Undo

POINTS = ("boundary", "inside")
PAUSE_LIMIT = 120.0


class NeverKilled(RuntimeError):
    pass


def pause_for_the_kill(work: Path, ctx: RunContext, where: str) -> None:
    """Say where we are (once per drill) and wait for SIGKILL; a rebuilt run passes on."""
    marker = work / "paused"
    if marker.exists():
        return
    temp = work / "paused.tmp"
    temp.write_text(json.dumps({"run_id": ctx.run_id, "pid": os.getpid(), "at": where}))
    temp.rename(marker)  # the test never reads a half-written marker
    deadline = time.monotonic() + PAUSE_LIMIT
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise NeverKilled(f"paused at {where} but was never killed")


class PausesForKill(Step):
    """The wrapped step, pausing as the runner checks it or inside its apply; otherwise the
    step itself. Only a run pauses: a plan's context has no checkpoints."""

    def __init__(self, inner: Step, point: str, work: Path) -> None:
        self.inner = inner
        self.point = point
        self.work = work
        self.name, self.scope, self.label = inner.name, inner.scope, inner.label

    @property
    def skipped(self) -> str | None:
        return self.inner.skipped

    def outcome(self, changed: bool) -> str | None:
        return self.inner.outcome(changed)

    def preflight(self, ctx: RunContext) -> list[str]:
        return self.inner.preflight(ctx)

    def check(self, ctx: RunContext) -> Change | None:
        running = ctx.checkpoints is not None
        if running and self.point == "boundary":
            pause_for_the_kill(self.work, ctx, f"{self.name}:boundary")
        change = self.inner.check(ctx)
        if running and change is None and self.point == "inside":
            pause_for_the_kill(self.work, ctx, f"{self.name}:inside (found converged)")
        return change

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        return self.inner.keep_before(ctx, change)

    def apply(self, ctx: RunContext) -> Undo:
        undo = self.inner.apply(ctx)
        if self.point == "inside":
            pause_for_the_kill(self.work, ctx, f"{self.name}:inside")
        return undo

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        self.inner.rollback(ctx, undo)

    def undo_from_change(self, change: Change) -> Undo:
        return self.inner.undo_from_change(change)


@register("drill")
def drill(params: dict[str, Any], settings: Settings) -> Pipeline:
    inner = build(str(params["pipeline"]), dict(params["params"]), settings)
    step_name, _, point = str(params["kill_at"]).partition(":")
    if point not in POINTS or step_name not in inner.step_names:
        raise ValueError(f"kill_at {params['kill_at']!r}: <step of {inner.name}>:<boundary|inside>")
    work = Path(str(params["work"]))
    steps = [
        PausesForKill(step, point, work) if step.name == step_name else step for step in inner.steps
    ]
    return Pipeline(
        "drill",
        inner.target,
        dict(params),
        steps,
        title=inner.title,
        next_steps=list(inner.next_steps),
    )
