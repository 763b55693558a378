"""The archive step of `site destroy`: the site's folder moved to `<sites_root>/_archived/`.

AEIMS kept a removed site as `_archived/<domain>_<timestamp>/`; here the timestamp is the run
id (`<domain>_<YYYYmmdd-HHMMSS-xxxxxx>`), so every attempt of one run names the same folder and
two destroys never collide. A rename on one filesystem: nothing is copied, nothing is lost,
and rollback renames it back. No vhost serves `_archived/` (each serves its own folder).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.fsutil import fsync_dir
from provisioner.site.spec import SiteSpec

ARCHIVE = "_archived"


class ArchiveStep(Step):
    """`<sites_root>/<domain>/` is gone from where nginx serves it, kept in the archive."""

    name = "archive"
    label = "Files"
    scope = Scope.HOST

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.folder = settings.sites_root / spec.domain
        self.root = settings.sites_root / ARCHIVE

    def destination(self, ctx: RunContext) -> Path:
        return self.root / f"{self.spec.domain}_{ctx.run_id}"

    def preflight(self, ctx: RunContext) -> list[str]:
        if self.folder.exists() and not os.access(self.folder.parent, os.W_OK | os.X_OK):
            return [f"archive: {self.folder.parent} is not writable by this user: fix its owner"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        if not (self.folder.exists() or self.folder.is_symlink()):
            return None
        archive = self.destination(ctx)
        return Change(
            summary=f"moved {self.folder}/ to {archive}/",
            before={"folder": str(self.folder)},
            after={
                "archive": str(archive),
                "created_root": not self.root.exists(),
            },
        )

    def apply(self, ctx: RunContext) -> Undo:
        change = self.check(ctx)
        if change is None:
            return {"folder": str(self.folder), "archive": None}
        undo = self.undo_from_change(change)
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.rename(self.folder, undo["archive"])
        fsync_dir(self.root)
        fsync_dir(self.folder.parent)
        return undo

    def undo_from_change(self, change: Change) -> Undo:
        return {"folder": str(self.folder), **(change.after or {})}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        if not undo.get("archive"):
            return
        archive = Path(undo["archive"])
        if archive.exists() and not (self.folder.exists() or self.folder.is_symlink()):
            os.rename(archive, self.folder)
            fsync_dir(self.folder.parent)
        if undo.get("created_root"):
            with contextlib.suppress(OSError):  # other sites' archives live there
                self.root.rmdir()
