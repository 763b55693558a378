"""The maintenance page step: `<site>/maintenance.html`, what a disabled site answers with.

The vhost's `maintenance` state answers every path with 503 and this page, so it must exist
before nginx switches. It is rendered from `templates/site/_maintenance.html.j2` (or the site
template's own `_maintenance.html.j2`) with the site's name, and carries a digest of itself:
a page whose digest no longer matches was edited by hand (an operator's own message) and is
kept, never overwritten. Rollback puts back the page found before, or removes the one it made.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.fsutil import write_atomically
from provisioner.site.spec import SiteSpec
from provisioner.site.templates import (
    TemplateError,
    load_site_template,
    site_variables,
    templates_root,
)

PAGE = "maintenance.html"
PARTIAL = "_maintenance.html.j2"
_MARKER = re.compile(r"provision-page: ([0-9a-f]{16})")


@lru_cache(maxsize=16)
def _environment(folder: Path, shared: Path) -> Environment:
    # Autoescaped: the site's name is user text.
    return Environment(
        loader=ChoiceLoader([FileSystemLoader(folder), FileSystemLoader(shared)]),
        undefined=StrictUndefined,
        autoescape=True,
        keep_trailing_newline=True,
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def render_page(spec: SiteSpec) -> str:
    """The page for `spec`; its marker is a digest of the page rendered without one."""
    tpl = load_site_template(spec.template)
    template = _environment(tpl.folder, templates_root() / "site").get_template(PARTIAL)
    variables = site_variables(spec, tpl)
    draft = template.render(**variables, marker="")
    return template.render(**variables, marker=_digest(draft))


def ours_unedited(data: bytes) -> bool:
    """Whether `data` is a page this step rendered, untouched since (its digest still holds)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    found = _MARKER.search(text)
    if found is None:
        return False
    draft = text.replace(found.group(0), "provision-page: ", 1)
    return _digest(draft) == found.group(1)


class MaintenancePageStep(Step):
    """`<sites_root>/<domain>/maintenance.html` shows the site's name (hand edits kept)."""

    name = "maintenance-page"
    label = "Maintenance page"
    scope = Scope.HOST

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.path = settings.sites_root / spec.domain / PAGE

    def _current(self) -> bytes | None:
        try:
            return None if self.path.is_symlink() else self.path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def _before(self, current: bytes | None) -> dict[str, Any]:
        if current is None:
            return {"path": str(self.path), "content": None}
        mode = self.path.stat().st_mode & 0o7777
        return {"path": str(self.path), "content": current.decode("utf-8"), "mode": mode}

    def outcome(self, changed: bool) -> str | None:
        current = self._current()
        if not changed and current is not None and not ours_unedited(current):
            return f"kept {self.path}, edited by hand (not overwritten)"
        return None

    # ---------------------------------------------------------------- the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        folder = self.path.parent
        if not folder.is_dir():
            return [
                f"site folder {folder} does not exist on this host: run `provision site create "
                f"--domain {self.spec.domain}` (with --scope host on a new web host) first"
            ]
        if not os.access(folder, os.W_OK | os.X_OK):
            return [f"site folder {folder} is not writable by this user: fix its owner"]
        try:
            render_page(self.spec)
        except (TemplateError, OSError) as exc:
            return [f"maintenance page: {exc}: reinstall provisioner"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        current = self._current()
        page = render_page(self.spec)
        if current == page.encode("utf-8"):
            return None
        if current is not None and not ours_unedited(current):
            return None  # the operator's own page: kept as it is
        old = None if current is None else current.decode("utf-8")
        how = "written" if current is None else "updated"
        marker = _MARKER.search(page)
        assert marker is not None  # every render carries one
        return Change(
            summary=f"{self.path} {how}, showing {self.spec.name!r}",
            before=self._before(current),
            after={"path": str(self.path), "marker": marker.group(1)},
            diff=unified_diff(old, page, PAGE),
        )

    def apply(self, ctx: RunContext) -> Undo:
        if self.check(ctx) is None:
            return {"before": None}
        before = self._before(self._current())
        write_atomically(self.path, render_page(self.spec), 0o644)
        return {"before": before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before")
        if before is None:  # apply found nothing to do
            return
        path = Path(before["path"])
        if path.parent.is_dir():  # temp files of a write killed half-way
            for torn in path.parent.glob(f".{path.name}.*.tmp"):
                torn.unlink(missing_ok=True)
        if before["content"] is None:
            path.unlink(missing_ok=True)
        else:
            write_atomically(path, before["content"], before["mode"])
