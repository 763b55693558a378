"""A step that renders a jinja2 template into a file, and puts back what was there before."""

from __future__ import annotations

import glob
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

    def _missing_parents(self) -> list[str]:
        """The folders `apply` would create, innermost first (rollback removes them)."""
        missing: list[str] = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(str(parent))
            parent = parent.parent
        return missing

    def check(self, ctx: RunContext) -> Change | None:
        wanted = self.render()
        current = self._current()
        if current["exists"] and current["content"] == wanted:
            return None
        verb = "update" if current["exists"] else "create"
        after: dict[str, Any] = {"exists": True, "content": wanted}
        if missing := self._missing_parents():
            after["created_dirs"] = missing
        return Change(
            summary=f"{verb} {self.path}",
            before=current,
            after=after,
            diff=unified_diff(current.get("content"), wanted, str(self.path)),
        )

    def undo_from_change(self, change: Change) -> Undo:
        after = change.after or {}
        return {"before": change.before, "created_dirs": after.get("created_dirs", [])}

    def apply(self, ctx: RunContext) -> Undo:
        before = self._current()
        created = self._missing_parents()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, self.render(), before.get("mode", 0o644))
        return {"before": before, "created_dirs": created}

    def _remove_torn_writes(self) -> None:
        """Temp files left beside the file by a write killed half-way.

        `write_atomically` writes `.<name>.<random>.tmp` in the same folder, then renames it;
        a process killed in between leaves it there, and its folder could not be removed.
        """
        if self.path.parent.is_dir():
            for torn in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
                torn.unlink(missing_ok=True)

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        self._remove_torn_writes()
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
