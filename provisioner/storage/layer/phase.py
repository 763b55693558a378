"""The migration phase: which store is read and which are written.

The phase is persisted beside the data it governs (`<data_dir>/.provision/phase.json`), so it
is readable when PostgreSQL is down, and mirrored into PostgreSQL's `phase_state` by the
migration steps. The plan's flags override it for an emergency: `USE_DATABASE=false` means
JSON only at once; `USE_JSON=false` means no JSON writes (PostgreSQL only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from provisioner.fsutil import private_dir, write_atomically


class Phase(StrEnum):
    JSON_ONLY = "json_only"
    DUAL_WRITE_READ_JSON = "dual_write_read_json"
    DUAL_WRITE_READ_PG = "dual_write_read_pg"
    PG_ONLY = "pg_only"

    @property
    def writes_json(self) -> bool:
        return self != Phase.PG_ONLY

    @property
    def writes_pg(self) -> bool:
        return self != Phase.JSON_ONLY

    @property
    def reads_pg(self) -> bool:
        return self in {Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY}


class PhaseError(ValueError):
    """The phase file is unreadable or names no known phase."""


@dataclass(frozen=True)
class EffectivePhase:
    """The phase in force: the persisted one, or the one an emergency flag imposes."""

    phase: Phase
    persisted: Phase
    override: str | None = None  # which flag forced it, if any


def phase_file(data_dir: Path) -> Path:
    return data_dir / ".provision" / "phase.json"


def read_phase(data_dir: Path) -> Phase:
    """The persisted phase; json_only when none was ever set (the state AEIMS starts in)."""
    path = phase_file(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Phase.JSON_ONLY
    except (OSError, json.JSONDecodeError) as exc:
        raise PhaseError(
            f"{path}: unreadable phase file ({exc}); set it again with the migration"
        ) from None
    try:
        return Phase(raw["phase"])
    except (KeyError, TypeError, ValueError):
        known = ", ".join(p.value for p in Phase)
        raise PhaseError(f"{path}: unknown phase {raw!r}; known: {known}") from None


def write_phase(data_dir: Path, phase: Phase, changed_by: str = "") -> None:
    path = phase_file(data_dir)
    private_dir(path.parent)
    payload = {
        "phase": phase.value,
        "changed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "changed_by": changed_by or f"pid {os.getpid()}",
    }
    write_atomically(path, json.dumps(payload, indent=4) + "\n", mode=0o600)


def effective_phase(
    persisted: Phase, use_database: bool | None, use_json: bool | None
) -> EffectivePhase:
    """Apply the plan's emergency flags to the persisted phase."""
    if use_database is False:
        return EffectivePhase(Phase.JSON_ONLY, persisted, "USE_DATABASE=false")
    if use_json is False:
        return EffectivePhase(Phase.PG_ONLY, persisted, "USE_JSON=false")
    return EffectivePhase(persisted, persisted)
