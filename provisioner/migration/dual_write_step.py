"""Rung 3, dual writes: the layer writes JSON, then PostgreSQL; reads stay on JSON.

Entering switches the phase, then catches PostgreSQL up with the writes made to JSON alone
since the backfill: each entity is loaded again under its write turn (no write of the layer
interleaves; unchanged rows are not touched), and rows JSON no longer has are removed. Writes
the PHP application makes from then on reach PostgreSQL through `provision migrate sync`.
Leaving switches back to JSON only, which needs no database: JSON was written all along.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.step import RunContext
from provisioner.migration import blocks
from provisioner.migration.stage_step import StageStep
from provisioner.migration.stages import Stage
from provisioner.migration.storage_access import (
    ENTITIES,
    AeimsJsonStore,
    Phase,
    copy_records,
    delete_pg_record,
    entity_turn,
    open_layer,
    pg_keys,
)


class DualWriteStep(StageStep):
    stage = Stage.DUAL_WRITE_READ_JSON
    step_name = "dual-write"
    label = "Dual write"
    needs_database_to_leave = False

    def enter(self, ctx: RunContext) -> dict[str, Any]:
        self.set_phase(ctx, Phase.DUAL_WRITE_READ_JSON)
        self.mark(ctx, Stage.BACKFILL, dual_write_since=blocks.now().isoformat())
        return {"caught_up": self.catch_up(ctx)}

    def catch_up(self, ctx: RunContext) -> int:
        """Each entity's JSON records into PostgreSQL under the entity's write turn."""
        conn = self.pg(ctx)
        store = AeimsJsonStore(self.data_dir)
        layer = open_layer(self.data_dir, self.settings.pg_dsn)
        changed = 0
        try:
            for entity in ENTITIES:
                with entity_turn(layer, entity):
                    records = [r.without_plaintext() for r in store.load(entity)]
                    changed += copy_records(conn, records)
                    keys = {r.key for r in records}
                    for key in [k for k in pg_keys(conn, entity) if k not in keys]:
                        changed += delete_pg_record(conn, entity, key)
        finally:
            layer.close()
        return changed

    def leave(self, ctx: RunContext) -> dict[str, Any]:
        self.set_phase(ctx, Phase.JSON_ONLY)
        return {}
