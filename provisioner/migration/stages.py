"""The migration's ladder of stages, and where the installation stands on it.

The data layer knows four phases (which store is read, which are written); the migration has
more rungs around them: the schema created, the JSON loaded, the validation gate passed, the
JSON archived. The rung reached is kept beside the data (`.provision/migration.json`), readable
while PostgreSQL is down, and agrees with the data layer's phase file: when the two disagree
(the phase was set by hand), the phase file wins and the rung is derived from it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.fsutil import private_dir, write_atomically
from provisioner.migration.storage_access import Phase, read_phase, state_dir


class Stage(StrEnum):
    """The rungs, in order: `advance` climbs them, `rollback` goes down."""

    JSON_ONLY = "json_only"
    SCHEMA = "schema"
    BACKFILL = "backfill"
    DUAL_WRITE_READ_JSON = "dual_write_read_json"
    VALIDATED = "validated"
    DUAL_WRITE_READ_PG = "dual_write_read_pg"
    PG_ONLY = "pg_only"
    ARCHIVED = "archived"

    @property
    def index(self) -> int:
        return ORDER.index(self)

    @property
    def phase(self) -> Phase:
        """The data layer's phase while the installation stands on this rung."""
        return PHASE_OF[self]

    @property
    def previous(self) -> Stage:
        return ORDER[self.index - 1]

    @property
    def next(self) -> Stage:
        return ORDER[self.index + 1]


ORDER: tuple[Stage, ...] = tuple(Stage)
PHASE_OF: dict[Stage, Phase] = {
    Stage.JSON_ONLY: Phase.JSON_ONLY,
    Stage.SCHEMA: Phase.JSON_ONLY,
    Stage.BACKFILL: Phase.JSON_ONLY,
    Stage.DUAL_WRITE_READ_JSON: Phase.DUAL_WRITE_READ_JSON,
    Stage.VALIDATED: Phase.DUAL_WRITE_READ_JSON,
    Stage.DUAL_WRITE_READ_PG: Phase.DUAL_WRITE_READ_PG,
    Stage.PG_ONLY: Phase.PG_ONLY,
    Stage.ARCHIVED: Phase.PG_ONLY,
}
# What each rung does, for help texts and plans.
DESCRIPTIONS: dict[Stage, str] = {
    Stage.JSON_ONLY: "JSON files only; nothing in PostgreSQL",
    Stage.SCHEMA: "PostgreSQL schema created; JSON only",
    Stage.BACKFILL: "JSON records loaded into PostgreSQL; JSON only",
    Stage.DUAL_WRITE_READ_JSON: "writes to both, reads from JSON",
    Stage.VALIDATED: "validation passed with 0 mismatches; writes to both, reads from JSON",
    Stage.DUAL_WRITE_READ_PG: "writes to both, reads from PostgreSQL",
    Stage.PG_ONLY: "PostgreSQL only; JSON no longer written",
    Stage.ARCHIVED: "PostgreSQL only; JSON files archived under backups/",
}


class StageError(ValueError):
    """An unknown stage name (bad input)."""


def parse_stage(name: str) -> Stage:
    try:
        return Stage(name.strip().lower().replace("-", "_"))
    except ValueError:
        known = ", ".join(s.value for s in ORDER)
        raise StageError(f"unknown phase {name!r}; known, in order: {known}") from None


def marker_path(data_dir: Path) -> Path:
    return state_dir(data_dir) / "migration.json"


def read_marker(data_dir: Path) -> dict[str, Any]:
    """The migration's own record: the rung reached and when dual writes began ({} if none)."""
    try:
        raw = json.loads(marker_path(data_dir).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def write_marker(data_dir: Path, stage: Stage, by: str, **more: Any) -> None:
    """Record the rung reached (keeping the other fields unless given anew)."""
    marker = read_marker(data_dir)
    marker.update(more)
    marker["stage"] = stage.value
    marker["changed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    marker["changed_by"] = by
    private_dir(marker_path(data_dir).parent)
    write_atomically(
        marker_path(data_dir), json.dumps(marker, indent=4, sort_keys=True) + "\n", mode=0o600
    )


def recorded_stage(data_dir: Path) -> Stage | None:
    """The rung the marker names, when it agrees with the phase file; None otherwise."""
    name = read_marker(data_dir).get("stage")
    try:
        stage = Stage(name) if isinstance(name, str) else None
    except ValueError:
        return None
    if stage is None or stage.phase != read_phase(data_dir):
        return None
    return stage


def stage_from_phase(phase: Phase, schema_version: int | None, rows: int | None) -> Stage:
    """The rung a phase implies when the marker is absent or disagrees: in json_only it
    depends on the database (no schema, an empty one, a loaded one)."""
    if phase is Phase.PG_ONLY:
        return Stage.PG_ONLY
    if phase is Phase.DUAL_WRITE_READ_PG:
        return Stage.DUAL_WRITE_READ_PG
    if phase is Phase.DUAL_WRITE_READ_JSON:
        return Stage.DUAL_WRITE_READ_JSON
    if not schema_version:
        return Stage.JSON_ONLY
    return Stage.BACKFILL if rows else Stage.SCHEMA


def restore_marker(data_dir: Path, marker: dict[str, Any]) -> None:
    """Put back a marker as it was read ({}: there was none)."""
    path = marker_path(data_dir)
    if not marker:
        path.unlink(missing_ok=True)
        return
    private_dir(path.parent)
    write_atomically(path, json.dumps(marker, indent=4, sort_keys=True) + "\n", mode=0o600)
