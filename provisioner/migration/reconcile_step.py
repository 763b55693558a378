"""Reconcile: writes PostgreSQL is behind on (the outbox, unfinished writes, the quarantine)
replayed from JSON's current state, as `provision data reconcile` does, as a journaled run.

A replay only makes PostgreSQL hold what JSON, the truth in the dual-write phases, already
holds, and replaying again changes nothing; so there is nothing to undo, and its rollback
leaves PostgreSQL caught up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.migration.storage_access import (
    DataUnavailable,
    Outbox,
    Quarantine,
    open_layer,
    state_dir,
)

if TYPE_CHECKING:
    from provisioner.config import Settings


def pending(data_dir: Path) -> dict[str, int]:
    """What PostgreSQL is behind on, read without creating anything."""
    folder = state_dir(data_dir)
    outbox = Outbox(folder).status()["depth"] if folder.is_dir() else 0
    quarantined = 0
    if (folder / "quarantine.jsonl").exists():
        quarantined = Quarantine(folder).summary()["count"]
    intents = 0
    intents_dir = folder / "intents"
    if intents_dir.is_dir():
        intents = sum(1 for p in intents_dir.glob("*.jsonl") if _holds_intents(p))
    return {"outbox": outbox, "quarantined": quarantined, "entities_with_intents": intents}


def _holds_intents(path: Path) -> bool:
    with path.open("rb") as source:
        return source.read(1) not in (b"", b"\0")


class ReconcileStep(Step):
    name = "reconcile"
    label = "Reconcile"
    scope = Scope.GLOBAL

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir or Path()

    def preflight(self, ctx: RunContext) -> list[str]:
        if self.settings.data_dir is None:
            from provisioner.migration.stage_step import NO_DATA_DIR

            return [NO_DATA_DIR]
        if not self.settings.pg_dsn:
            return ["no database configured: set PROVISION_PG_DSN"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        found = pending(self.data_dir)
        if not any(found.values()):
            return None
        shown = ", ".join(f"{k} {v}" for k, v in found.items() if v)
        return Change(f"replay into PostgreSQL: {shown}", before=found, after={})

    def apply(self, ctx: RunContext) -> Undo:
        layer = open_layer(self.data_dir, self.settings.pg_dsn)
        try:
            settled = layer.reconcile()
        except DataUnavailable as exc:
            raise RuntimeError(str(exc)) from None
        finally:
            layer.close()
        left = pending(self.data_dir)
        if left["quarantined"]:
            raise RuntimeError(
                f"{left['quarantined']} record(s) are still refused by PostgreSQL: "
                "`provision data health --json` lists them"
            )
        return {"settled": settled}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        return  # see the module's docstring: nothing a replay did needs undoing

    def undo_from_change(self, change: Change) -> dict[str, Any]:
        return {}
