"""Rung 1, the schema: PostgreSQL's versioned tables for the AEIMS data.

Entering applies every pending schema migration (each in its own transaction). Leaving drops
the tables and views the schema files made, and refuses while they hold data unless the run
was asked with `--force`: the rows are then kept in the run's checkpoint first, so `provision
runs rollback` of that run brings them back.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.step import Change, RunContext, Undo
from provisioner.migration import pg_side
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage
from provisioner.migration.storage_access import apply_migrations, pending_migrations

CHECKPOINT = "schema-rows"


class SchemaStep(StageStep):
    stage = Stage.SCHEMA
    step_name = "schema"
    label = "Schema"

    def preflight(self, ctx: RunContext) -> list[str]:
        problems = super().preflight(ctx)
        if problems or self.advancing or self.options.force:
            return problems
        held = pg_side.rows_held(self.pg(ctx))
        if held:
            return [_holds_data(held)]
        return []

    def converged(self, ctx: RunContext) -> bool:
        if not self.advancing:
            return pg_side.schema_version(self.pg(ctx)) == 0
        return not pending_migrations(self.pg(ctx))

    def before_state(self, ctx: RunContext, now: Stage) -> dict[str, Any]:
        conn = self.pg(ctx)
        return {
            "stage": now.value,
            "version": pg_side.schema_version(conn),
            "rows": pg_side.rows_held(conn),
        }

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        before = change.before if isinstance(change.before, dict) else {}
        if self.advancing or not before.get("rows"):
            return change
        folder = ctx.checkpoint().folder / CHECKPOINT
        if not folder.exists():
            tables, _ = pg_side.schema_objects()
            partial = folder.with_name(CHECKPOINT + ".partial")
            pg_side.dump_tables(self.pg(ctx), tables, partial)
            partial.rename(folder)
        return Change(
            change.summary, {**before, "checkpoint": CHECKPOINT}, change.after, change.diff
        )

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        conn = self.pg(ctx)
        version = pg_side.schema_version(conn)
        applied = apply_migrations(conn)
        return {"version": version, "applied": applied}

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        conn = self.pg(ctx)
        held = pg_side.rows_held(conn)
        if held and not self.options.force:
            raise RuntimeError(_holds_data(held))
        version = pg_side.schema_version(conn)
        pg_side.drop_schema(conn)
        return {"version": version, "rows": held}

    def undo_enter(self, ctx: RunContext, undo: Undo) -> None:
        if undo.get("version", 0):
            return  # the schema was there before this run: it stays
        conn = self.pg(ctx)
        held = pg_side.rows_held(conn)
        if held:
            raise RuntimeError(_holds_data(held) + " (left in place for manual attention)")
        pg_side.drop_schema(conn)

    def undo_leave(self, ctx: RunContext, undo: Undo) -> None:
        conn = self.pg(ctx)
        apply_migrations(conn)
        if undo.get("checkpoint") and ctx.checkpoints is not None:
            tables, _ = pg_side.schema_objects()
            pg_side.restore_tables(conn, tables, ctx.checkpoint().folder / undo["checkpoint"])

    def apply(self, ctx: RunContext) -> Undo:
        undo = super().apply(ctx)
        if not self.advancing and (ctx.checkpoint().folder / CHECKPOINT).exists():
            undo["checkpoint"] = CHECKPOINT
        return undo


def _holds_data(held: dict[str, int]) -> str:
    shown = ", ".join(f"{table} ({rows})" for table, rows in sorted(held.items()))
    return (
        f"the schema's tables hold data: {shown}; dropping them loses it. Roll back with "
        "--force to drop them anyway (the rows are kept in the run's checkpoint)"
    )
