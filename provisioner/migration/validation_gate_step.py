"""Rung 4, the validation gate: PostgreSQL proven to hold what JSON holds.

Entering runs a full validation (validation.py: every record compared field by field, stored
as the last validation) unless one already opens the gate (gate.py), and fails the run on any
mismatch: reads never switch to PostgreSQL on data that differs. Nothing in the data changes
either way, so leaving the rung, or undoing it, moves only the marker.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.step import RunContext, Undo
from provisioner.migration import blocks, gate
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage


class ValidationGateError(RuntimeError):
    """The validation found mismatches: the gate stays closed."""


class ValidationGateStep(StageStep):
    stage = Stage.VALIDATED
    step_name = "validation-gate"
    label = "Validation gate"
    needs_database_to_leave = False

    def converged(self, ctx: RunContext) -> bool:
        return not self.advancing or gate.validation_problem(self.settings) is None

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        if gate.validation_problem(self.settings) is None:
            return {"validation": "already passed"}
        _drain_quietly(self.settings)
        result = blocks.validate(self.settings)
        problem = gate.validation_problem(self.settings)
        if problem is not None:
            raise ValidationGateError(f"the gate stays closed: {problem}")
        return {"validation": {k: result.get(k) for k in ("started_at", "mismatches")}}

    def undo_enter(self, ctx: RunContext, undo: Undo) -> None:
        return  # a validation changes no data: only the marker moves back

    def undo_leave(self, ctx: RunContext, undo: Undo) -> None:
        return


def _drain_quietly(settings: Any) -> None:
    """Replay the outbox first (a write waiting there would be a mismatch); never fails."""
    from provisioner.migration.storage_access import DataUnavailable, open_layer

    layer = open_layer(settings.data_dir, settings.pg_dsn)
    try:
        layer.reconcile()
    except DataUnavailable:
        pass
    finally:
        layer.close()
