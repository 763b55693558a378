"""The demo pipeline: a database row and a rendered page, to show the engine on real things."""

from __future__ import annotations

import re
from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, PipelineError, register
from provisioner.steps.database_row import DatabaseRowStep
from provisioner.steps.rendered_file import RenderedFileStep

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        shown = repr(name)[:80] if isinstance(name, str) else f"of type {type(name).__name__}"
        raise PipelineError(
            f"invalid demo name {shown}: use 1-63 lowercase letters, digits and dashes, "
            "starting with a letter or digit"
        )
    return name


@register("demo")
def demo_pipeline(params: dict[str, Any], settings: Settings) -> Pipeline:
    name = validate_name(params.get("name"))
    message = str(params.get("message", ""))
    if (
        not isinstance(params.get("message"), str)
        or not message
        or len(message) > 500
        or not message.isprintable()
    ):
        raise PipelineError("the demo message must be 1-500 printable characters")
    page = settings.state_dir / "demo" / name / "index.html"
    return Pipeline(
        name="demo",
        target=f"demo:{name}",
        params={"name": name, "message": message},
        title=f"demo greeting {name!r}",
        steps=[
            DatabaseRowStep("record", "demo_greetings", name, message),
            RenderedFileStep(
                "page", page, "demo/greeting.html.j2", {"name": name, "message": message}
            ),
        ],
        next_steps=[
            f"Look at the page: {page}",
            "Look at the row: psql \"$PROVISION_PG_DSN\" -c 'table demo_greetings'",
            "List runs: provision runs list",
        ],
    )
