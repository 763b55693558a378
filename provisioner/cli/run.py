"""`provision run PIPELINE -p key=value`: any registered pipeline, for scripts and playbooks."""

from __future__ import annotations

import json

import click

from provisioner.cli.common import execute, json_option, lock_timeout_option
from provisioner.engine.pipeline import Pipeline, PipelineError, build


def _parse_params(pairs: tuple[str, ...]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-p")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@click.command("run")
@click.argument("pipeline_name")
@click.option(
    "-p", "--param", "pairs", multiple=True, help="A parameter, key=value (value may be JSON)."
)
@click.option("--plan", is_flag=True, help="Show what would change, with diffs; change nothing.")
@json_option
@lock_timeout_option
def run(
    pipeline_name: str,
    pairs: tuple[str, ...],
    plan: bool,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Run a registered pipeline with the given parameters."""
    params = _parse_params(pairs)

    def make() -> Pipeline:
        if not pipeline_name:
            raise PipelineError("a pipeline name is required")
        return build(pipeline_name, params)

    execute(make, plan=plan, as_json=as_json, lock_timeout=lock_timeout)
