"""Every step honours the step contract, and no step escapes the contract table."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import provisioner.steps
from provisioner.app import PIPELINE_MODULES
from provisioner.config import Settings
from provisioner.engine import pipeline as pipelines
from provisioner.engine.step import Step
from tests.contract.cases import CASES, EXAMPLE_PARAMS
from tests.contract.harness import StepCase, World, verify_step_contract

COVERED = {case.kind for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_step_honours_the_contract(
    case: StepCase, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """check is pure, apply converges, rollback restores, a cut-short apply is undone."""
    dsn = request.getfixturevalue("fresh_pg_dsn") if case.database else None
    with World.open(tmp_path, dsn) as world:
        verify_step_contract(case, world)


def test_every_step_of_every_pipeline_has_a_contract_case(tmp_path: Path) -> None:
    """A new step in a pipeline fails the suite until it has a case in the contract table."""
    pipelines.load_modules(PIPELINE_MODULES)
    ours = {
        name: factory
        for name, factory in pipelines._REGISTRY.items()
        if factory.__module__ in PIPELINE_MODULES  # not the test suites' own pipelines
    }
    assert ours, "no pipeline registered by provisioner.app.PIPELINE_MODULES"
    settings = Settings(state_dir=tmp_path / "state")
    missing: dict[str, str] = {}
    for name in sorted(ours):
        assert name in EXAMPLE_PARAMS, f"add example params for pipeline {name!r} to cases.py"
        for step in pipelines.build(name, EXAMPLE_PARAMS[name], settings).steps:
            if type(step) not in COVERED:
                missing[f"{type(step).__module__}.{type(step).__qualname__}"] = name
    assert not missing, f"step classes without a contract case (pipeline): {missing}"


def test_every_step_class_in_provisioner_steps_has_a_contract_case() -> None:
    """A step written but not yet wired into a pipeline needs its case too."""
    defined = set()
    for module_info in pkgutil.iter_modules(provisioner.steps.__path__):
        module = importlib.import_module(f"provisioner.steps.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            ours = issubclass(cls, Step) and cls.__module__ == module.__name__
            if ours and not inspect.isabstract(cls):
                defined.add(cls)
    assert defined, "no step classes found in provisioner.steps"
    missing = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in defined - COVERED)
    assert not missing, f"step classes without a contract case: {missing}"
