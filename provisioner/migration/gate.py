"""The validation gate: may the migration go past dual_write_read_json, and may it stop
writing JSON?

Past dual_write_read_json takes a validation with 0 mismatches that began after dual writes
began, and every write made to the files outside the data layer after it began (a write it
could have missed) carried into PostgreSQL by the sync: a clean sync pass (every entity looked
at, nothing deferred, failed or left over) ended after the sync saw it. So the PHP application
may go on writing the files through the read switch. pg_only also takes a quiet period with no
outside write, and a clean sync pass that began after the last one: in pg_only nobody may
still be writing the files, and PostgreSQL must hold everything they were given.

A running sync applies what it sees within a pass or two: the gates give it up to
SYNC_SETTLE_SECONDS before refusing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from provisioner.migration import blocks
from provisioner.migration.stages import read_marker

if TYPE_CHECKING:
    from collections.abc import Callable

    from provisioner.config import Settings
    from provisioner.migration.sync_state import SyncProgress

SYNC_SETTLE_SECONDS = 5.0
_POLL_SECONDS = 0.05


def validation_problem(settings: Settings, *, settle: float = SYNC_SETTLE_SECONDS) -> str | None:
    """Why the last validation does not open the gate, or None when it does."""
    assert settings.data_dir is not None
    last = blocks.last_validation(settings)
    if last is None or last.get("started_at") is None:
        return "no validation has run: `provision migrate validate` (or advance) runs one"
    if last.get("mismatches") != 0:
        return (
            f"the last validation found {last.get('mismatches')} mismatch(es): "
            "`provision migrate validate` lists them; fix them and validate again"
        )
    started = blocks.parse_instant(last.get("covered_until") or last["started_at"])
    if started is None:
        return "the last validation has no readable start time: validate again"
    since = blocks.parse_instant(read_marker(settings.data_dir).get("dual_write_since"))
    if since is not None and started < since:
        return (
            f"the last validation covers writes up to {started.isoformat()}, before dual "
            f"writes began at {since.isoformat()}: validate again"
        )
    progress = _settled(settings, settle, lambda p: _applied_after(p, started))
    if _applied_after(progress, started):
        return None
    return (
        f"a write outside the data layer to {progress.outside_file} at "
        f"{_instant(progress.outside_at)} came after the last validation (covering writes up "
        f"to {started.isoformat()}) and {_not_applied(progress)}"
    )


def quiet_period_problem(
    settings: Settings, quiet_period: float, *, settle: float = SYNC_SETTLE_SECONDS
) -> str | None:
    """Why the files are not quiet enough for pg_only, or None."""
    outside = blocks.last_outside_write(settings)
    if not outside:
        return None
    at = blocks.parse_instant(outside["at"])
    if at is None:
        return None
    age = blocks.now() - at
    if age < timedelta(seconds=quiet_period):
        return (
            f"a write outside the data layer to {outside['file']} was seen at {outside['at']} "
            f"({age.total_seconds():.0f} s ago), within the quiet period of {quiet_period:g} s: "
            "stop every writer of the JSON files (the PHP application's USE_JSON=false), then "
            "wait or pass a shorter --quiet-period"
        )
    progress = _settled(settings, settle, lambda p: p.looked_after_outside_write())
    if progress.looked_after_outside_write():
        return None
    return (
        f"the last write outside the data layer, to {progress.outside_file} at "
        f"{_instant(progress.outside_at)}, may not be in PostgreSQL: no clean sync pass began "
        f"after it and {_not_applied(progress)}"
    )


def _applied_after(progress: SyncProgress, started: datetime) -> bool:
    """No outside write after `started`, or the latest one is in PostgreSQL."""
    at = progress.outside_at
    return at is None or at <= started.timestamp() or progress.applied_outside_write()


def _settled(settings: Settings, settle: float, ok: Callable[[SyncProgress], bool]) -> SyncProgress:
    """The sync's progress once `ok(progress)` holds, waiting up to `settle` seconds while the
    sync runs (a pass or two); the last progress read otherwise."""
    deadline = time.monotonic() + settle
    while True:
        progress = blocks.sync_progress(settings)
        if ok(progress) or not progress.running or time.monotonic() >= deadline:
            return progress
        time.sleep(_POLL_SECONDS)


def _not_applied(progress: SyncProgress) -> str:
    """The end of a refusal: why the sync has not carried the write, and what to do."""
    if not progress.running:
        return (
            "the sync is not running to carry it into PostgreSQL: start `provision migrate "
            "sync` (or run `provision migrate sync --once`), then advance again"
        )
    last = progress.clean_ended_at
    shown = f"its last clean pass ended at {_instant(last)}" if last else "no clean pass yet"
    return (
        f"the sync has not applied it yet ({shown}): `provision migrate status` shows what it "
        "is left with; advance again once it has caught up"
    )


def _instant(epoch: float | None) -> str:
    if epoch is None:
        return "an unknown time"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
