"""The building blocks the phases call: load, validate, sync, shadow reads.

Each lives in its own module (backfill.py, validation.py, sync.py, shadow.py); this module is
the one place the phase steps and the status report reach them through, with the shapes the
phases need: a validation is {started_at, finished_at, mismatches, validated}, an outside write
is {file, at}.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.migration.storage_access import (
    ENTITIES,
    AeimsJsonStore,
    delete_pg_record,
    pg_keys,
)

if TYPE_CHECKING:
    import psycopg

    from provisioner.config import Settings
    from provisioner.migration.sync_state import SyncProgress


def now() -> datetime:
    return datetime.now(UTC)


def parse_instant(value: Any) -> datetime | None:
    """An ISO 8601 instant (or epoch seconds) as an aware datetime; None if it is neither."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        return None
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------- loading
def load_json(
    conn: psycopg.Connection[Any],
    data_dir: Path,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Make PostgreSQL hold exactly JSON's records: the backfill, then any row whose key JSON
    no longer has removed (a copy left by an earlier advance that was rolled back)."""
    from provisioner.migration import backfill

    report = backfill.backfill(conn, data_dir, progress=progress)
    if not report.ok:
        shown = "; ".join(f"{entity}: {error}" for entity, error in report.errors.items())
        raise RuntimeError(f"the backfill failed for {shown}")
    pruned = prune_missing(conn, data_dir)
    return {"backfill": _plain(report), "pruned": pruned}


def prune_missing(conn: psycopg.Connection[Any], data_dir: Path) -> dict[str, int]:
    """Delete the rows whose key JSON does not hold (per entity: how many)."""
    store = AeimsJsonStore(data_dir)
    pruned: dict[str, int] = {}
    for entity in ENTITIES:
        keys = {record.key for record in store.load(entity)}
        extra = [key for key in pg_keys(conn, entity) if key not in keys]
        for key in extra:
            delete_pg_record(conn, entity, key)
        if extra:
            pruned[entity] = len(extra)
    return pruned


def _plain(report: Any) -> Any:
    """A report as JSON-able values (a dataclass, an object with as_json, or plain data)."""
    for name in ("as_json", "to_json"):
        if callable(getattr(report, name, None)):
            return getattr(report, name)()
    from dataclasses import asdict, is_dataclass

    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    return report


# --------------------------------------------------------------------------------- validation
def validate(settings: Settings) -> dict[str, Any]:
    """Run a full validation now (validation.py stores it as the last one); its summary."""
    from provisioner.migration import validation

    assert settings.data_dir is not None and settings.pg_dsn
    report = validation.validate(settings.pg_dsn, settings.data_dir)
    return last_validation(settings) or {"mismatches": getattr(report, "mismatch_count", None)}


def last_validation(settings: Settings) -> dict[str, Any] | None:
    """The last stored validation (normalized), or None when none ran."""
    from provisioner.migration import validation_store

    if not settings.pg_dsn:
        return None
    return normalized_validation(_plain(validation_store.last_validation(settings.pg_dsn)))


def normalized_validation(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    mismatches = raw.get("mismatch_count", raw.get("mismatches"))
    if isinstance(mismatches, list):
        mismatches = len(mismatches)
    return {
        "validation_id": raw.get("validation_id"),
        "started_at": raw.get("started_at"),
        "finished_at": raw.get("finished_at"),
        # Every write acknowledged before this instant was on both sides when they were read.
        "covered_until": raw.get("covered_until") or raw.get("started_at"),
        "records_checked": raw.get("records_checked"),
        "mismatches": mismatches if isinstance(mismatches, int) else None,
    }


# --------------------------------------------------------------------------------- sync
def last_outside_write(settings: Settings) -> dict[str, Any] | None:
    """The newest write made to the JSON files outside the data layer that the sync saw
    ({file, at}), or None when it saw none."""
    from provisioner.migration import sync

    found = _plain(sync.last_outside_write(settings))
    if not isinstance(found, dict) or found.get("at") is None:
        return None
    return {"file": found.get("file"), "at": found.get("at")}


def sync_progress(settings: Settings) -> SyncProgress:
    """The latest outside write and the latest clean pass of the sync."""
    from provisioner.migration import sync

    return sync.sync_progress(settings)


def sync_status(settings: Settings) -> dict[str, Any] | None:
    from provisioner.migration import sync

    found = _plain(sync.sync_status(settings))
    return found if isinstance(found, dict) else None


# --------------------------------------------------------------------------------- shadow reads
def shadow_status(settings: Settings) -> dict[str, Any] | None:
    from provisioner.migration import shadow

    found = _plain(shadow.shadow_status(settings))
    return found if isinstance(found, dict) else None
