"""Pipelines: named, ordered lists of steps, rebuilt from their parameters.

A run is journaled as (pipeline name, parameters), never as pickled objects, so that another
process (`provision runs resume ID`) can rebuild exactly the same steps. Parameters are
therefore plain JSON values and hold no secrets: steps read secrets from settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.engine.step import Step


class PipelineError(ValueError):
    """The pipeline or its parameters are unknown or invalid (bad input: exit 2)."""


@dataclass
class Pipeline:
    """The steps of one run on one target, with what to tell the operator afterwards."""

    name: str
    target: str
    params: dict[str, Any]
    steps: list[Step]
    title: str = ""
    next_steps: list[str] = field(default_factory=list)


PipelineFactory = Callable[[dict[str, Any]], Pipeline]

_REGISTRY: dict[str, PipelineFactory] = {}

# Modules that register the tool's own pipelines; imported on first lookup.
BUILTIN_MODULES: tuple[str, ...] = ("provisioner.demo.pipeline",)


def register(name: str) -> Callable[[PipelineFactory], PipelineFactory]:
    """Decorator: make a factory known under `name` so runs can be rebuilt from the journal."""

    def decorate(factory: PipelineFactory) -> PipelineFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def load_modules(extra: tuple[str, ...] = ()) -> None:
    """Import the modules whose import registers pipelines (built-in ones, then `extra`)."""
    for module in (*BUILTIN_MODULES, *extra):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PipelineError(
                f"cannot import pipeline module {module!r} ({exc}); "
                "check PROVISION_PIPELINE_MODULES"
            ) from None


def build(name: str, params: dict[str, Any]) -> Pipeline:
    """The pipeline `name` for these parameters."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise PipelineError(f"unknown pipeline {name!r}; known: {known}") from None
    return factory(dict(params))
