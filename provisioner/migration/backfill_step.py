"""Rung 2, the backfill: every JSON record loaded into PostgreSQL.

Entering loads the files with COPY and upserts (backfill.py), then removes rows whose key JSON
no longer holds (a copy left by an earlier advance), so PostgreSQL holds exactly JSON's records.
Rows that were there before are kept in the run's checkpoint (COPY, binary) and put back by a
rollback; tables that were empty are emptied again. Leaving the rung keeps the rows: in
json_only they are an unused copy, refreshed by the next advance, and dropping them is the
schema's rollback (`--force`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, closing
from typing import Any

from provisioner.engine.step import Change, Progress, RunContext, Undo
from provisioner.migration import blocks, pg_side
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage

CHECKPOINT = "backfill-rows"


def data_tables() -> list[str]:
    tables, _ = pg_side.schema_objects()
    return [t for t in tables if t not in pg_side.BOOKKEEPING]


class BackfillStep(StageStep):
    stage = Stage.BACKFILL
    step_name = "backfill"
    label = "Backfill"
    needs_database_to_leave = False

    def before_state(self, ctx: RunContext, now: Stage) -> dict[str, Any]:
        if not self.advancing:
            return {"stage": now.value}
        return {"stage": now.value, "rows": pg_side.rows_held(self.pg(ctx))}

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        before = change.before if isinstance(change.before, dict) else {}
        if not self.advancing or not before.get("rows"):
            return change
        folder = ctx.checkpoint().folder / CHECKPOINT
        if not folder.exists():
            partial = folder.with_name(CHECKPOINT + ".partial")
            pg_side.dump_tables(self.pg(ctx), data_tables(), partial)
            partial.rename(folder)
        return Change(
            change.summary, {**before, "checkpoint": CHECKPOINT}, change.after, change.diff
        )

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        conn = self.pg(ctx)
        rows = pg_side.rows_held(conn)
        with closing(EntityBars(ctx.progress)) as bars:
            report = blocks.load_json(conn, self.data_dir, progress=bars)
        undo: dict[str, Any] = {"rows": rows, "report": _short(report)}
        if rows and (ctx.checkpoint().folder / CHECKPOINT).exists():
            undo["checkpoint"] = CHECKPOINT
        return undo

    def undo_enter(self, ctx: RunContext, undo: Undo) -> None:
        conn = self.pg(ctx)
        if undo.get("checkpoint"):
            pg_side.restore_tables(
                conn, data_tables(), ctx.checkpoint().folder / undo["checkpoint"]
            )
        elif not undo.get("rows"):
            pg_side.empty_tables(conn, data_tables())
        else:
            raise RuntimeError(
                "the tables held rows before this backfill and no copy of them was kept; "
                "they are left as the backfill made them"
            )

    def undo_leave(self, ctx: RunContext, undo: Undo) -> None:
        return  # leaving kept the rows: climbing back needs nothing but the marker

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        return {}


class EntityBars:
    """The backfill's `progress(entity, done, total)` as the run's progress: one bar per
    entity (drawn on a terminal, nothing under --json or without one)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars = ExitStack()
        self.entity: str | None = None
        self.done = 0
        self.advance: Callable[[int], None] = lambda n: None

    def __call__(self, entity: str, done: int, total: int) -> None:
        if entity != self.entity:
            self.bars.close()
            self.entity, self.done = entity, 0
            self.advance = self.bars.enter_context(self.progress.track(f"backfill {entity}", total))
        self.advance(done - self.done)
        self.done = done

    def close(self) -> None:
        self.bars.close()


def _short(report: Any) -> Any:
    """The backfill's report, small enough for the journal (totals per entity, no records)."""
    return report if len(repr(report)) < 20_000 else {"note": "report too long to journal"}
