"""Rung 7, the archive: the JSON files moved to backups/json-archive-YYYYMMDD/ with a manifest
of sha256 sums (archive.py). Leaving (and undoing the archive) checks the manifest and moves
them back byte for byte. Neither needs the database.
"""

from __future__ import annotations

import contextlib
from typing import Any

from provisioner.engine.step import RunContext, Undo
from provisioner.migration import archive
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage


class ArchiveStep(StageStep):
    stage = Stage.ARCHIVED
    step_name = "archive-json"
    label = "Archive JSON"
    needs_database_to_enter = False
    needs_database_to_leave = False

    def current(self, ctx: RunContext) -> Stage:
        found = super().current(ctx)
        if found == Stage.PG_ONLY and archive.archive_state(self.data_dir) is not None:
            return Stage.ARCHIVED  # an archive cut short is the archived rung, not yet done
        return found

    def converged(self, ctx: RunContext) -> bool:
        state = archive.archive_state(self.data_dir)
        if not self.advancing:
            return state is None
        return state is not None and not any(
            (self.data_dir / rel).exists() for rel in archive.archived_paths(self.data_dir)
        )

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        return archive.archive(self.data_dir)

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        return archive.unarchive(self.data_dir)

    def undo_enter(self, ctx: RunContext, undo: Undo) -> None:
        archive.unarchive(self.data_dir)

    def before_state(self, ctx: RunContext, now: Stage) -> dict[str, Any]:
        """Leaving: the archive taken apart (its folder and manifest date), so that undoing a
        leave cut short puts it back as it was."""
        before = super().before_state(ctx, now)
        state = archive.archive_state(self.data_dir)
        if self.advancing or state is None:
            return before
        folder = self.data_dir / state["folder"]
        created_at = None
        if (folder / archive.MANIFEST).exists():
            with contextlib.suppress(archive.ArchiveError):  # leave() will say what is wrong
                created_at = archive.read_manifest(folder).get("created_at")
        return {**before, "folder": state["folder"], "created_at": created_at}

    def undo_leave(self, ctx: RunContext, undo: Undo) -> None:
        folder = undo.get("folder")
        archive.archive(
            self.data_dir, self.data_dir / folder if folder else None, undo.get("created_at")
        )
