"""Rung 6, PostgreSQL only: JSON is no longer read nor written.

Entering needs the files quiet (no write from outside the data layer within the quiet period:
gate.py), the outbox replayed and nothing quarantined or left unfinished, since from then on
PostgreSQL alone is the truth. Leaving (and undoing the entry) first switches writes back to
both stores, then writes PostgreSQL's current records into the JSON files in the shape and
encoding the PHP application reads (json_export.py), so every write made in pg_only is kept.
The files as they were are kept in the run's checkpoint, for undoing the leave.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.step import Change, RunContext, Undo
from provisioner.migration import gate
from provisioner.migration.json_export import export_to_json
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage
from provisioner.migration.storage_access import (
    DataUnavailable,
    Phase,
    data_files,
    open_layer,
)


class PgOnlyStep(StageStep):
    stage = Stage.PG_ONLY
    step_name = "pg-only"
    label = "PostgreSQL only"

    def preflight(self, ctx: RunContext) -> list[str]:
        problems = super().preflight(ctx)
        if self.advancing and not problems:
            quiet = gate.quiet_period_problem(self.settings, self.options.quiet_period)
            if quiet:
                problems.append(quiet)
        return problems

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        if self.advancing:
            return change
        kept = {
            str(path.relative_to(self.data_dir)): ctx.checkpoint().keep(f"json-{i:02d}", path)
            for i, path in enumerate(data_files(self.data_dir))
        }
        before = change.before if isinstance(change.before, dict) else {}
        return Change(change.summary, {**before, "files": kept}, change.after, change.diff)

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        quiet = gate.quiet_period_problem(self.settings, self.options.quiet_period)
        if quiet:
            raise RuntimeError(quiet)
        self._settle()
        self.set_phase(ctx, Phase.PG_ONLY)
        return {}

    def _settle(self) -> None:
        """Replay the outbox and unfinished writes; refuse while anything is still pending."""
        layer = open_layer(self.data_dir, self.settings.pg_dsn)
        try:
            try:
                layer.reconcile()
            except DataUnavailable as exc:
                raise RuntimeError(f"JSON stays written: {exc}") from None
            health = layer.health()
        finally:
            layer.close()
        pending = {
            "outbox": health.get("outbox_depth"),
            "quarantined": (health.get("quarantine") or {}).get("count"),
            "unfinished writes": (health.get("intents") or {}).get("abandoned"),
        }
        waiting = {name: n for name, n in pending.items() if n}
        if waiting:
            shown = ", ".join(f"{name} {n}" for name, n in waiting.items())
            raise RuntimeError(
                f"PostgreSQL is behind JSON ({shown}): `provision migrate reconcile` and "
                "`provision data health` show what is left; advance again once it is empty"
            )

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        self.set_phase(ctx, Phase.DUAL_WRITE_READ_PG)
        written = export_to_json(self.pg(ctx), self.data_dir, self.settings.pg_dsn)
        return {"written": written}

    def undo_enter(self, ctx: RunContext, undo: Undo) -> None:
        self.leave(ctx)

    def undo_leave(self, ctx: RunContext, undo: Undo) -> None:
        self.set_phase(ctx, Phase.PG_ONLY)
        files = undo.get("files")
        if isinstance(files, dict) and ctx.checkpoints is not None:
            for rel, reference in files.items():
                ctx.checkpoint().restore(reference, self.data_dir / rel)

    def undo_from_change(self, change: Change) -> Undo:
        undo = super().undo_from_change(change)
        return undo

    def apply(self, ctx: RunContext) -> Undo:
        undo = super().apply(ctx)
        if not self.advancing:
            kept = self.keep_before(ctx, Change("", {}, None)).before
            undo["files"] = kept.get("files") if isinstance(kept, dict) else None
        return undo
