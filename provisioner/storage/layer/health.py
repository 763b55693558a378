"""`DataLayer.health()`: what monitoring needs to know, and whether to alert (`degraded`).

Degraded: the database is unreachable in a phase that uses it, the breaker is not closed, writes
are waiting for PostgreSQL (in the outbox, or left by a writer that died), the outbox holds
damaged lines or cannot be read, PostgreSQL refused records for good (the quarantine), or an
AEIMS file cannot be read. Nothing here carries a password, a hash or a record's values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from provisioner.config import redact_dsn
from provisioner.fsutil import LockBusy
from provisioner.storage.layer.breaker import BreakerState
from provisioner.storage.model import ENTITIES
from provisioner.storage.phpjson import recent_writes
from provisioner.storage.phpjson.errors import JsonFileError

if TYPE_CHECKING:
    from provisioner.storage.layer.datalayer import DataLayer


def _age_seconds(at: str | None) -> float | None:
    if at is None:
        return None
    try:
        return round((datetime.now(UTC) - datetime.fromisoformat(at)).total_seconds(), 3)
    except ValueError:
        return None


def _json_file_errors(layer: DataLayer) -> list[str]:
    """Every AEIMS file that cannot be read (malformed, unreadable), named with its position."""
    errors = []
    for entity in ENTITIES:
        try:
            layer.json.load(entity)
        except (JsonFileError, OSError) as exc:
            errors.append(str(exc))
    return errors


def _intents(layer: DataLayer) -> dict[str, Any]:
    """Intents left by writers that did not finish (their entity's write lock is free), and
    those of writes in flight right now (normal, not counted as degraded)."""
    abandoned: dict[str, int] = {}
    oldest: str | None = None
    in_flight = 0
    for entity in layer.intents.entities():
        try:
            with layer._ordered(entity, timeout=0):
                left = layer.intents.leftovers(entity)
        except LockBusy:
            in_flight += len(layer.intents.pending_keys(entity))
            continue
        if left:
            abandoned[entity] = len(left)
            first = min(e.at for e in left)
            oldest = first if oldest is None else min(oldest, first)
    return {
        "abandoned": sum(abandoned.values()),
        "by_entity": abandoned,
        "oldest_age_seconds": _age_seconds(oldest),
        "in_flight": in_flight,
    }


def reapplied_writes(layer: DataLayer) -> dict[str, Any]:
    """The JSON write path's report (recent_writes.py): this layer's writes that a PHP writer
    reverted and that were written again, and file writes a crash cut short (degraded)."""
    try:
        return recent_writes.health_report(layer.data_dir)
    except OSError as exc:
        return {"error": f"{exc.filename or ''}: {exc.strerror or exc}", "degraded": True}


def health(layer: DataLayer) -> dict[str, Any]:
    """Phase, reachability, breaker, outbox, intents, quarantine and files; see the module doc."""
    effective = layer.phase()
    reachable: bool | None = None
    error = None
    if layer.pg_dsn:
        try:
            with psycopg.connect(layer.pg_dsn, connect_timeout=layer._connect_seconds) as conn:
                conn.execute("SELECT 1")
            reachable = True
            layer.breaker.succeeded()
        except psycopg.OperationalError as exc:
            reachable = False
            error = redact_dsn(
                str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
            )
    outbox = layer.outbox.status()
    outbox["oldest_age_seconds"] = _age_seconds(outbox["oldest_at"])
    intents = _intents(layer)
    try:
        quarantine = layer.quarantine.summary()
    except OSError as exc:
        quarantine = {"count": None, "by_entity": {}, "records": [], "error": exc.strerror}
    file_errors = _json_file_errors(layer) if effective.phase.writes_json else []
    uses_pg = effective.phase.writes_pg or effective.phase.reads_pg
    reapplied = reapplied_writes(layer)
    degraded = bool(
        (uses_pg and reachable is False)
        or outbox["depth"] > 0
        or outbox["corrupt_lines"]
        or outbox["error"]
        or intents["abandoned"]
        or quarantine["count"] != 0
        or layer.breaker.state != BreakerState.CLOSED
        or file_errors
        or reapplied.get("degraded")
    )
    return {
        "phase": effective.phase.value,
        "persisted_phase": effective.persisted.value,
        "override": effective.override,
        "database": {
            "configured": bool(layer.pg_dsn),
            "dsn": redact_dsn(layer.pg_dsn) if layer.pg_dsn else None,
            "reachable": reachable,
            "error": error,
        },
        "breaker": layer.breaker.state.value,
        "outbox_depth": outbox["depth"],
        "outbox": outbox,
        "intents": intents,
        "quarantine": quarantine,
        "reapplied_writes": reapplied,
        "json_file_errors": file_errors,
        "degraded": degraded,
    }
