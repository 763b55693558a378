"""Pipelines: named, ordered lists of steps, rebuilt from their parameters and the settings.

A run is journaled as (pipeline name, parameters, step names), never as pickled objects, so
that another process (`resume`, `rollback`) can rebuild exactly the same steps. Parameters are
therefore plain JSON values and hold no secrets; factories receive the settings, so no step
reads the environment itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from provisioner.engine.errors import UsageError
from provisioner.engine.step import Scope, Step

if TYPE_CHECKING:
    from provisioner.config import Settings


class PipelineError(UsageError):
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

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise PipelineError(
                f"pipeline {self.name!r} names more than one step {', '.join(repeated)}: "
                "step names must be unique, the journal finds steps by them"
            )

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    def limited_to(self, scopes: Iterable[Scope]) -> Pipeline:
        """The same pipeline with only the steps of these scopes (a fleet's global or host part)."""
        wanted = set(scopes)
        return replace(self, steps=[s for s in self.steps if s.scope in wanted])


PipelineFactory = Callable[[dict[str, Any], "Settings"], Pipeline]

_REGISTRY: dict[str, PipelineFactory] = {}
# Pipelines known by name whose module is imported only when one is built, so a command that
# builds none (listing runs, say) does not pay for every pipeline's imports.
_LAZY: dict[str, str] = {}


def register_lazy(name: str, module: str) -> None:
    """Make `name` known now; `module` (whose import registers it) is imported on first build."""
    _LAZY[name] = module


def register(name: str) -> Callable[[PipelineFactory], PipelineFactory]:
    """Decorator: make a factory known under `name` so runs can be rebuilt from the journal."""

    def decorate(factory: PipelineFactory) -> PipelineFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def load_modules(modules: Iterable[str]) -> None:
    """Import the modules whose import registers pipelines."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PipelineError(
                f"cannot import pipeline module {module!r} ({exc}); "
                "check the list of pipeline modules in the settings"
            ) from None


def build(name: str, params: dict[str, Any], settings: Settings) -> Pipeline:
    """The pipeline `name` for these parameters and settings."""
    if name not in _REGISTRY and name in _LAZY:
        load_modules([_LAZY[name]])
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted({*_REGISTRY, *_LAZY})) or "none"
        raise PipelineError(f"unknown pipeline {name!r}; known: {known}") from None
    try:
        return factory(dict(params), settings)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, UsageError):
            raise
        reason = f"missing parameter {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PipelineError(f"invalid parameters for pipeline {name!r}: {reason}") from None
