"""Where validation results live: the `migration_validations` table (schema 0003).

`last_validation(target)` is what the gate of `provision migrate advance` reads: the newest
result, with `covered_until`, the instant up to which every acknowledged write was on both
sides when they were read. A gate passes when `ok` and `covered_until` is later than the last
write the validation could have missed (the sync's last outside write, the outbox's oldest).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from provisioner.migration.validation import ValidationReport

# Mismatches kept with a stored result (the count is always exact).
STORED_MISMATCHES = 1000


@dataclass(frozen=True)
class ValidationSummary:
    """A stored validation result."""

    validation_id: int
    started_at: datetime
    finished_at: datetime
    covered_until: datetime
    records_checked: int
    mismatch_count: int
    counts: dict[str, Any]
    mismatches: list[dict[str, Any]]
    data_dir: str

    @property
    def ok(self) -> bool:
        return self.mismatch_count == 0

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.finished_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {
            "validation_id": self.validation_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "covered_until": self.covered_until.isoformat(),
            "records_checked": self.records_checked,
            "mismatch_count": self.mismatch_count,
            "ok": self.ok,
            "age_seconds": round(self.age_seconds(), 1),
            "counts": self.counts,
            "data_dir": self.data_dir,
        }


def table_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('migration_validations') IS NOT NULL").fetchone()
    return bool(row and row[0])


def save_result(conn: psycopg.Connection, report: ValidationReport) -> int:
    """Store `report`; its id."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO migration_validations (started_at, finished_at, covered_until, "
            "records_checked, mismatch_count, counts, mismatches, data_dir) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING validation_id",
            [
                report.started_at,
                report.finished_at,
                report.covered_until,
                report.records_checked,
                report.mismatch_count,
                Jsonb(report.counts_json()),
                Jsonb([m.to_json() for m in report.mismatches[:STORED_MISMATCHES]]),
                report.data_dir,
            ],
        ).fetchone()
    assert row is not None
    return int(row[0])


def last_validation(target: str | psycopg.Connection) -> ValidationSummary | None:
    """The newest stored validation, or None (never validated, or schema 0003 not applied)."""
    from provisioner.migration.backfill import connection

    with connection(target, "validate") as conn, conn.transaction():
        if not table_exists(conn):
            return None
        row = conn.execute(
            "SELECT validation_id, started_at, finished_at, covered_until, records_checked, "
            "mismatch_count, counts, mismatches, data_dir FROM migration_validations "
            "ORDER BY finished_at DESC, validation_id DESC LIMIT 1"
        ).fetchone()
    if row is None:
        return None
    return ValidationSummary(
        validation_id=int(row[0]),
        started_at=row[1],
        finished_at=row[2],
        covered_until=row[3],
        records_checked=int(row[4]),
        mismatch_count=int(row[5]),
        counts=row[6],
        mismatches=row[7],
        data_dir=row[8],
    )
