"""A step that renders a jinja2 template into a file, and puts back what was there before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.fsutil import write_atomically

_TEMPLATES = Environment(
    loader=PackageLoader("provisioner", "templates"),
    undefined=StrictUndefined,
    autoescape=select_autoescape(["html", "html.j2"]),
    keep_trailing_newline=True,
)


class RenderedFileStep(Step):
    """`path` holds `template` rendered with `variables`."""

    scope = Scope.HOST

    def __init__(self, name: str, path: Path, template: str, variables: dict[str, Any]) -> None:
        self.name = name
        self.path = path
        self.template = template
        self.variables = variables

    def render(self) -> str:
        return _TEMPLATES.get_template(self.template).render(**self.variables)

    def _current(self) -> dict[str, Any]:
        try:
            content = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"exists": False}
        return {"exists": True, "content": content, "mode": self.path.stat().st_mode & 0o7777}

    def check(self, ctx: RunContext) -> Change | None:
        wanted = self.render()
        current = self._current()
        if current["exists"] and current["content"] == wanted:
            return None
        verb = "update" if current["exists"] else "create"
        return Change(
            summary=f"{verb} {self.path}",
            before=current,
            after={"exists": True, "content": wanted},
            diff=unified_diff(current.get("content"), wanted, str(self.path)),
        )

    def apply(self, ctx: RunContext) -> Undo:
        before = self._current()
        created: list[str] = []
        parent = self.path.parent
        while not parent.exists():
            created.append(str(parent))
            parent = parent.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, self.render(), before.get("mode", 0o644))
        return {"before": before, "created_dirs": created}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before") or {"exists": False}
        if before.get("exists"):
            write_atomically(self.path, before["content"], before.get("mode", 0o644))
            return
        self.path.unlink(missing_ok=True)
        for folder in undo.get("created_dirs", []):
            try:
                Path(folder).rmdir()
            except OSError:
                break  # not empty: something else lives there now
