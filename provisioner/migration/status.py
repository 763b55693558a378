"""`provision migrate status`: where the migration stands, read without changing anything.

The phase (and any emergency override), the rung, the records on each side per entity, the
outbox, what the sync and the shadow reads report, the last validation and its age, and whether
the gate would open. Safe on a live installation: it takes no lock, writes no file, and opens
one short read-only database session (statement timeout 5 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provisioner.migration import archive, blocks, gate, pg_side
from provisioner.migration.reconcile_step import pending
from provisioner.migration.stages import DESCRIPTIONS, Stage, recorded_stage, stage_from_phase
from provisioner.migration.storage_access import (
    ENTITIES,
    AeimsJsonStore,
    Phase,
    count_records,
    effective_phase,
    read_phase,
)

if TYPE_CHECKING:
    import psycopg

    from provisioner.config import Settings


class StatusError(ValueError):
    """The installation cannot be read at all (bad configuration): exit 2."""


def _connect(settings: Settings) -> tuple[psycopg.Connection[Any] | None, str | None]:
    import psycopg

    if not settings.pg_dsn:
        return None, "not configured (PROVISION_PG_DSN)"
    try:
        conn = psycopg.connect(
            settings.pg_dsn,
            autocommit=True,
            connect_timeout=max(1, int(settings.pg_connect_timeout + 0.999)),
            options="-c statement_timeout=5000 -c default_transaction_read_only=on",
            application_name="provision migrate status",
        )
    except psycopg.Error as exc:
        text = str(exc).strip()
        return None, text.splitlines()[0] if text else type(exc).__name__
    return conn, None


def current_stage(settings: Settings) -> Stage:
    """The rung the installation stands on; StatusError when it cannot be told."""
    assert settings.data_dir is not None
    found = recorded_stage(settings.data_dir)
    if found is not None:
        return _with_archive(settings, found)
    phase = read_phase(settings.data_dir)
    if phase is not Phase.JSON_ONLY:
        return _with_archive(settings, stage_from_phase(phase, None, None))
    conn, error = _connect(settings)
    if conn is None:
        if not settings.pg_dsn:
            return Stage.JSON_ONLY
        raise StatusError(f"PostgreSQL is unreachable ({error}); start it and try again")
    with conn:
        return stage_from_phase(
            phase, pg_side.schema_version(conn), sum(pg_side.rows_held(conn).values())
        )


def _with_archive(settings: Settings, stage: Stage) -> Stage:
    assert settings.data_dir is not None
    if stage == Stage.PG_ONLY and archive.archive_state(settings.data_dir) is not None:
        return Stage.ARCHIVED
    return stage


def gather(settings: Settings) -> dict[str, Any]:
    """The whole report (see the module's docstring)."""
    data_dir = settings.data_dir
    if data_dir is None:
        raise StatusError("no AEIMS data folder configured: set PROVISION_DATA_DIR")
    persisted = read_phase(data_dir)
    effective = effective_phase(persisted, settings.use_database, settings.use_json)
    conn, error = _connect(settings)
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "phase": effective.phase.value,
        "persisted_phase": persisted.value,
        "override": effective.override,
        "database": {
            "configured": bool(settings.pg_dsn),
            "reachable": conn is not None,
            "error": error,
            "schema_version": None,
        },
    }
    try:
        if conn is not None:
            report["database"]["schema_version"] = pg_side.schema_version(conn)
        stage = recorded_stage(data_dir)
        if stage is None and (persisted is not Phase.JSON_ONLY or conn is not None):
            rows = sum(pg_side.rows_held(conn).values()) if conn is not None else None
            stage = stage_from_phase(persisted, report["database"]["schema_version"], rows)
        stage = _with_archive(settings, stage) if stage is not None else None
        report["stage"] = stage.value if stage else None
        report["stage_description"] = (
            DESCRIPTIONS[stage] if stage else "unknown: PostgreSQL is unreachable"
        )
        report["counts"] = _counts(data_dir, conn, stage)
    finally:
        if conn is not None:
            conn.close()
    report["pending"] = pending(data_dir)
    report["archive"] = archive.archive_state(data_dir)
    report["sync"] = _guarded(lambda: blocks.sync_status(settings))
    report["last_outside_write"] = _guarded(lambda: blocks.last_outside_write(settings))
    report["shadow"] = _guarded(lambda: blocks.shadow_status(settings))
    last = _guarded(lambda: blocks.last_validation(settings))
    if isinstance(last, dict) and last.get("started_at"):
        started = blocks.parse_instant(last.get("finished_at") or last["started_at"])
        last["age_seconds"] = round((blocks.now() - started).total_seconds()) if started else None
    report["last_validation"] = last
    problem = _guarded(lambda: gate.validation_problem(settings))
    report["gate"] = {"open": problem is None, "reason": problem}
    return report


def _counts(
    data_dir: Any, conn: Any, stage: Stage | None
) -> dict[str, dict[str, int | str | None]]:
    store = AeimsJsonStore(data_dir)
    counts: dict[str, dict[str, int | str | None]] = {}
    archived = stage == Stage.ARCHIVED
    has_tables = conn is not None and bool(pg_side.schema_version(conn))
    for entity in ENTITIES:
        entry: dict[str, int | str | None] = {"json": None, "postgresql": None}
        if not archived:
            try:
                entry["json"] = len(store.load(entity))
            except Exception as exc:  # an unreadable file is reported, not fatal
                entry["json"] = f"unreadable: {str(exc).splitlines()[0][:200]}"
        if has_tables:
            entry["postgresql"] = count_records(conn, entity)
        counts[entity] = entry
    return counts


def _guarded(read: Any) -> Any:
    """A building block's report; its failure is shown in the report, never raised."""
    try:
        return read()
    except Exception as exc:
        return {"error": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}
