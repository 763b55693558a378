"""What the data steps (record, operators) share: the data layer's preflight and AEIMS's clocks."""

from __future__ import annotations

from datetime import datetime

from provisioner.clients import DATA_LAYER
from provisioner.engine.step import RunContext


def data_layer_problems(ctx: RunContext) -> list[str]:
    """A missing data folder, or PostgreSQL down in the phase that cannot do without it."""
    data_dir = ctx.settings.data_dir
    if data_dir is None:
        return [
            "no AEIMS data folder configured: set PROVISION_DATA_DIR to the application root "
            "holding data/*.json"
        ]
    if not (data_dir / "data").is_dir():
        return [
            f"{data_dir / 'data'} does not exist: set PROVISION_DATA_DIR to the AEIMS "
            "application root (the folder holding data/*.json)"
        ]
    layer = ctx.client(DATA_LAYER)
    phase = layer.phase().phase
    if phase.writes_json:  # PostgreSQL down only delays its copy (the outbox replays it)
        return []
    health = layer.health()
    if health["database"]["reachable"] is False:
        return [
            f"PostgreSQL is unreachable ({health['database']['error']}) and the data layer is "
            f"in phase {phase.value}, which writes nowhere else: start it or check "
            "PROVISION_PG_DSN"
        ]
    return []


def php_time(moment: datetime) -> str:
    """sites.json's timestamps: naive `Y-m-d H:i:s` (UTC), as AEIMS writes them."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def iso_z(moment: datetime) -> str:
    """domains.json's timestamps: ISO 8601 with a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
