"""The demo pipeline: a database row and a rendered page, to show the engine on real things."""

from __future__ import annotations

import re
from typing import Any

from provisioner.config import load_settings
from provisioner.demo.file_step import RenderedFileStep
from provisioner.demo.row_step import DatabaseRowStep
from provisioner.engine.pipeline import Pipeline, PipelineError, register

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def validate_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise PipelineError(
            f"invalid demo name {name!r}: use 1-63 lowercase letters, digits and dashes, "
            "starting with a letter or digit"
        )
    return name


@register("demo")
def demo_pipeline(params: dict[str, Any]) -> Pipeline:
    name = validate_name(str(params.get("name", "")))
    message = str(params.get("message", ""))
    if not message or len(message) > 500 or any(ord(c) < 32 for c in message):
        raise PipelineError("the demo message must be 1-500 printable characters")
    page = load_settings().state_dir / "demo" / name / "index.html"
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
