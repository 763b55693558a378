"""`provision run PIPELINE -p key=value`: any registered pipeline, for scripts and playbooks."""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli.common import (
    execute,
    json_option,
    lock_timeout_option,
    on_failure_option,
    scope_option,
)

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.pipeline import Pipeline

# Deep enough for any real parameter, shallow enough that json.loads and the journal's own
# encoder never recurse near Python's limit.
MAX_DEPTH = 32
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


def _depth(text: str) -> int:
    """The deepest nesting of [ and { in a JSON text, outside its strings (no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _not_finite(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number as a float, refusing one too large for a float (1e999 reads as inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large")
    return value


def _check_text(key: str, value: Any) -> None:
    """Every string (and object key) in a value must be text the journal can store."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise click.BadParameter(
                    f"{key}: the value is not valid UTF-8 text (undecodable bytes or a lone "
                    "surrogate); pass it as UTF-8",
                    param_hint="-p",
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_value(key: str, raw: str) -> object:
    """A -p value: JSON when it parses as JSON (finite, not null, not too deep), else the text."""
    _check_text(key, raw)
    if _depth(raw) > MAX_DEPTH:
        raise click.BadParameter(
            f"{key}: the value nests deeper than {MAX_DEPTH} levels; flatten it", param_hint="-p"
        )
    try:
        value = json.loads(raw, parse_constant=_not_finite, parse_float=_finite)
    except json.JSONDecodeError:
        return raw
    except RecursionError:
        raise click.BadParameter(
            f"{key}: the value nests too deep; flatten it", param_hint="-p"
        ) from None
    except ValueError:
        raise click.BadParameter(
            f"{key}: NaN, Infinity and numbers past 1e308 are not JSON numbers; pass a finite "
            "number, or quote the "
            f"word as a JSON string (-p {key}='\"NaN\"')",
            param_hint="-p",
        ) from None
    if value is None:
        raise click.BadParameter(
            f"{key}=null sets nothing; leave the parameter out for its default, or pass the "
            f"word as a JSON string (-p {key}='\"null\"')",
            param_hint="-p",
        )
    _check_text(key, value)
    return value


def parse_params(pairs: tuple[str, ...]) -> dict[str, object]:
    """-p key=value pairs as the pipeline's parameters; each key once."""
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            shown = repr(pair) if len(pair) <= 40 else repr(pair[:37]) + "..."
            raise click.BadParameter(f"{shown} is not key=value", param_hint="-p")
        if not _KEY.match(key):
            raise click.BadParameter(
                f"{key[:40]!r} is not a parameter name; use letters, digits and _ . -",
                param_hint="-p",
            )
        if key in params:
            raise click.BadParameter(f"{key} is given twice; give it once", param_hint="-p")
        params[key] = parse_value(key, raw)
    return params


@click.command("run")
@click.argument("pipeline_name")
@click.option(
    "-p", "--param", "pairs", multiple=True, help="A parameter, key=value (value may be JSON)."
)
@click.option("--plan", is_flag=True, help="Show what would change, with diffs; change nothing.")
@on_failure_option
@scope_option
@json_option
@lock_timeout_option
def run(
    pipeline_name: str,
    pairs: tuple[str, ...],
    plan: bool,
    on_failure: str,
    scope: str,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Run a registered pipeline with the given parameters."""
    params = parse_params(pairs)

    def make(settings: Settings) -> Pipeline:
        from provisioner.engine.pipeline import PipelineError, build

        if not pipeline_name:
            raise PipelineError("a pipeline name is required")
        return build(pipeline_name, params, settings)

    execute(
        make,
        plan=plan,
        as_json=as_json,
        lock_timeout=lock_timeout,
        scope=scope,
        keep_on_failure=on_failure == "keep",
    )
