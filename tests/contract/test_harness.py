"""The harness has teeth: a step breaking one rule of the contract fails it, with that rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from provisioner.engine.step import Change, RunContext, Undo
from provisioner.steps.rendered_file import RenderedFileStep
from tests.contract.cases import FILE_CASES, PAGE, PAGE_VARIABLES
from tests.contract.harness import StepCase, World, verify_step_contract

CREATE, UPDATE = FILE_CASES[0], FILE_CASES[1]


class ImpureCheck(RenderedFileStep):
    def check(self, ctx: RunContext) -> Change | None:
        change = super().check(ctx)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return change


class UnjournalableUndo(RenderedFileStep):
    def apply(self, ctx: RunContext) -> Undo:
        return {**super().apply(ctx), "path": self.path}


class RollbackDeletesWhatExisted(RenderedFileStep):
    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        self.path.unlink(missing_ok=True)


class UndoFromChangeForgetsFolders(RenderedFileStep):
    def undo_from_change(self, change: Change) -> Undo:
        return {"before": change.before}


class NeverConverges(RenderedFileStep):
    def render(self) -> str:
        return super().render() + ("\n" if self.path.exists() else "")


def broken(case: StepCase, kind: type[RenderedFileStep]) -> StepCase:
    def build(world: World) -> RenderedFileStep:
        return kind("page", world.root / PAGE, "demo/greeting.html.j2", PAGE_VARIABLES)

    return replace(case, kind=kind, build=build)


def breaking(case: StepCase, kind: type[RenderedFileStep], rule: str) -> object:
    return pytest.param(broken(case, kind), rule, id=kind.__name__)


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        breaking(CREATE, ImpureCheck, "check changed the world"),
        breaking(CREATE, UnjournalableUndo, "apply's undo record cannot be journaled"),
        breaking(UPDATE, RollbackDeletesWhatExisted, "rollback did not restore"),
        breaking(CREATE, UndoFromChangeForgetsFolders, "did not undo an apply cut short"),
        breaking(CREATE, NeverConverges, "check still finds work after apply"),
    ],
)
def test_a_broken_step_fails_the_contract(case: StepCase, rule: str, tmp_path: Path) -> None:
    with World.open(tmp_path, None) as world, pytest.raises(AssertionError, match=rule):
        verify_step_contract(case, world)
