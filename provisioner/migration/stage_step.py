"""What every phase step shares: one rung of the ladder, climbed or left.

A phase step is built for a direction. Going up (`advance`), its `apply` enters its rung and
its `rollback` leaves it again; going down (`rollback --to`), its `apply` leaves the rung and
its `rollback` enters it again. So a migration rollback is itself a run that `provision runs
rollback` can undo. Each step keeps the rung reached in the migration marker, written last in
`apply` and first restored in `rollback`, and its undo record names the rung it found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.migration.stages import (
    DESCRIPTIONS,
    Stage,
    read_marker,
    recorded_stage,
    restore_marker,
    stage_from_phase,
    write_marker,
)
from provisioner.migration.storage_access import Phase, read_phase, write_phase

if TYPE_CHECKING:
    import psycopg

    from provisioner.config import Settings

log = logging.getLogger("provisioner.migration")

DEFAULT_QUIET_PERIOD = 300.0
NO_DATA_DIR = (
    "no AEIMS data folder configured: set PROVISION_DATA_DIR to the application root holding "
    "data/*.json"
)


@dataclass(frozen=True)
class Options:
    """What a migration run was asked for, journaled with it (plain values only)."""

    force: bool = False
    quiet_period: float = DEFAULT_QUIET_PERIOD

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Options:
        quiet = params.get("quiet_period", DEFAULT_QUIET_PERIOD)
        if isinstance(quiet, bool) or not isinstance(quiet, int | float) or not quiet >= 0:
            raise ValueError(f"quiet_period must be a number of seconds >= 0, not {quiet!r}")
        return cls(force=bool(params.get("force", False)), quiet_period=float(quiet))


class StageStep(Step):
    """Enter (advancing) or leave (retreating) one rung. Subclasses set `stage` and write
    `enter`, `leave`, and the undo of each (by default the other move)."""

    stage: Stage = Stage.SCHEMA
    scope = Scope.GLOBAL
    # The step's name going up; going down it is `leave-<name>`.
    step_name: str = "stage"
    needs_database_to_leave: bool = True
    needs_database_to_enter: bool = True

    def __init__(self, settings: Settings, advancing: bool, options: Options | None = None):
        self.settings = settings
        # Checked by preflight: a pipeline is built (to be listed, say) without one.
        self.data_dir: Path = settings.data_dir or Path()
        self.advancing = advancing
        self.options = options or Options()
        self.name = self.step_name if advancing else f"leave-{self.step_name}"

    # ------------------------------------------------------------------ where we stand
    @property
    def source(self) -> Stage:
        """The rung this step starts from."""
        return self.stage.previous if self.advancing else self.stage

    @property
    def target(self) -> Stage:
        return self.stage if self.advancing else self.stage.previous

    def current(self, ctx: RunContext) -> Stage:
        """The rung the installation stands on now (asks PostgreSQL only when the marker and
        the phase file cannot tell)."""
        found = recorded_stage(self.data_dir)
        if found is not None:
            return found
        phase = read_phase(self.data_dir)
        if phase is not Phase.JSON_ONLY:
            return stage_from_phase(phase, None, None)
        from provisioner.migration import pg_side

        conn = self.pg(ctx)
        return stage_from_phase(
            phase, pg_side.schema_version(conn), sum(pg_side.rows_held(conn).values())
        )

    def pg(self, ctx: RunContext) -> psycopg.Connection[Any]:
        from provisioner.clients import PG

        return ctx.client(PG)

    # ------------------------------------------------------------------ the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        if self.settings.data_dir is None:
            return [NO_DATA_DIR]
        needs = self.needs_database_to_enter if self.advancing else self.needs_database_to_leave
        if needs and not self.settings.pg_dsn:
            return ["no database configured: set PROVISION_PG_DSN"]
        if needs:
            try:
                self.pg(ctx).execute("SELECT 1")
            except Exception as exc:
                return [f"PostgreSQL is unreachable ({_first_line(exc)}); start it and try again"]
        return []

    def converged(self, ctx: RunContext) -> bool:
        """Whether, standing on the target rung, nothing else is left to do."""
        return True

    def _check(self, ctx: RunContext) -> Change | None:
        now = self.current(ctx)
        if now == self.target and self.converged(ctx):
            return None
        verb = "enter" if self.advancing else "leave"
        summary = (
            f"{verb} {self.stage.value}: {now.value} -> {self.target.value} "
            f"({DESCRIPTIONS[self.target]})"
        )
        return Change(summary, before=self.before_state(ctx, now), after={"stage": self.target})

    def before_state(self, ctx: RunContext, now: Stage) -> dict[str, Any]:
        return {"stage": now.value}

    def check(self, ctx: RunContext) -> Change | None:
        change = self._check(ctx)
        if change is None or not isinstance(change.before, dict):
            return change
        before = {**change.before, "marker": read_marker(self.data_dir)}
        return Change(change.summary, before, change.after, change.diff)

    def apply(self, ctx: RunContext) -> Undo:
        now = self.current(ctx)
        undo: Undo = {"stage": now.value, "marker": read_marker(self.data_dir)}
        if now == self.target and self.converged(ctx):
            return undo
        if now not in (self.source, self.target):
            raise RuntimeError(
                f"the migration stands at {now.value}, not {self.source.value}: "
                "run `provision migrate status` and plan again"
            )
        undo.update(self.enter(ctx) if self.advancing else self.leave(ctx))
        self.mark(ctx, self.target)
        return undo

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        back = Stage(undo.get("stage") or self.source.value)
        if back == self.target:
            return  # this run found the rung already reached: nothing of it to undo
        if self.advancing:
            self.undo_enter(ctx, undo)
        else:
            self.undo_leave(ctx, undo)
        if isinstance(undo.get("marker"), dict):
            restore_marker(self.data_dir, undo["marker"])
        else:
            self.mark(ctx, back)

    def undo_from_change(self, change: Change) -> Undo:
        before = change.before if isinstance(change.before, dict) else {}
        return {**before, "stage": before.get("stage", self.source.value)}

    # ------------------------------------------------------------------ the moves
    def enter(self, ctx: RunContext) -> dict[str, Any]:
        return {}

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        return {}

    def undo_enter(self, ctx: RunContext, undo: Undo) -> None:
        self.leave(ctx)

    def undo_leave(self, ctx: RunContext, undo: Undo) -> None:
        self.enter(ctx)

    # ------------------------------------------------------------------ shared helpers
    def mark(self, ctx: RunContext, stage: Stage, **more: Any) -> None:
        write_marker(self.data_dir, stage, f"provision run {ctx.run_id}", **more)

    def set_phase(self, ctx: RunContext, phase: Phase) -> None:
        """The data layer's phase, in its file (which every process stats per request) and
        mirrored into PostgreSQL's phase_state when it is reachable."""
        by = f"provision run {ctx.run_id}"
        if read_phase(self.data_dir) != phase:
            write_phase(self.data_dir, phase, by)
        if not self.settings.pg_dsn:
            return
        try:
            self.pg(ctx).execute(
                "INSERT INTO phase_state (phase, changed_by) VALUES (%s, %s) "
                "ON CONFLICT (singleton) DO UPDATE SET phase = EXCLUDED.phase, "
                "changed_at = now(), changed_by = EXCLUDED.changed_by "
                "WHERE phase_state.phase IS DISTINCT FROM EXCLUDED.phase",
                (phase.value, by),
            )
        except Exception as exc:  # the file is the truth; the mirror is for queries
            log.warning("phase %s not mirrored into phase_state: %s", phase.value, exc)
            from provisioner.clients import PG

            ctx.forget_client(PG)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
