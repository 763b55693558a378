"""Rung 5, the read switch: reads from PostgreSQL, writes still to both.

Entering needs the gate open (gate.py): a validation with 0 mismatches no older than the last
write it could have missed. JSON keeps being written, so leaving is switching reads back, with
no database needed.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.step import RunContext
from provisioner.migration import gate
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage
from provisioner.migration.storage_access import Phase


class ReadSwitchStep(StageStep):
    stage = Stage.DUAL_WRITE_READ_PG
    step_name = "read-switch"
    label = "Read switch"
    needs_database_to_leave = False

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        problem = gate.validation_problem(self.settings)
        if problem is not None:
            raise RuntimeError(f"reads stay on JSON: {problem}")
        self.set_phase(ctx, Phase.DUAL_WRITE_READ_PG)
        return {}

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        self.set_phase(ctx, Phase.DUAL_WRITE_READ_JSON)
        return {}
