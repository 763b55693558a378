"""A site-create pipeline that fails right after a chosen step applied, for the end-to-end
rollback tests (loaded with PROVISION_PIPELINE_MODULES=tests.site_pipelines)."""

from __future__ import annotations

from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.step import Change, RunContext, Step, Undo
from provisioner.site.pipelines import create_steps, site_target
from provisioner.site.validate import site_spec


class InjectedFailure(RuntimeError):
    pass


class FailsAfterApply(Step):
    """The wrapped step, whose apply does all its work and then fails."""

    def __init__(self, inner: Step) -> None:
        self.inner = inner
        self.name, self.scope, self.label = inner.name, inner.scope, inner.label

    def preflight(self, ctx: RunContext) -> list[str]:
        return self.inner.preflight(ctx)

    def check(self, ctx: RunContext) -> Change | None:
        return self.inner.check(ctx) or Change(f"{self.name} (then fail)")

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        return self.inner.keep_before(ctx, change)

    def apply(self, ctx: RunContext) -> Undo:
        if self.inner.check(ctx):
            self.inner.apply(ctx)
        raise InjectedFailure(f"injected failure after {self.name} applied")

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        self.inner.rollback(ctx, undo)

    def undo_from_change(self, change: Change) -> Undo:
        return self.inner.undo_from_change(change)


@register("site-create-failing")
def site_create_failing(params: dict[str, Any], settings: Settings) -> Pipeline:
    spec = site_spec(params)
    fail_after = str(params["fail_after"])
    steps = [
        FailsAfterApply(step) if step.name == fail_after else step
        for step in create_steps(spec, settings)
    ]
    return Pipeline(
        "site-create-failing",
        site_target(spec),
        {**spec.as_params(), "fail_after": fail_after},
        steps,
    )
