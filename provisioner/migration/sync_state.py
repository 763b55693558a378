"""What `provision migrate sync` keeps on disk, beside the data it watches.

Everything lives in `<data_dir>/.provision/sync/` (0700, files 0600), so it is readable while
PostgreSQL is down and by every process of the host (`migrate status`, the pg_only gate):

- `hashes/<entity>.jsonl`: the content hash of every record as the sync last loaded it, so a
  restart diffs against the last state instead of re-upserting everything. JSON lines, each
  `{"set": {track: [hash, key]}, "del": [track]}`, applied in order; a line with
  `"reset": true` starts over (and names the `mode`: "spans" for hashes of a record's bytes in
  a pretty-printed file, "records" for hashes of parsed records). Appended durably after the
  pass's PostgreSQL commit; rewritten compacted when it grows past its snapshot.
- `outside_writes.jsonl`: one line per record that changed outside the data layer: the file,
  the entity, the key, the operation, when the file was written (`at`, epoch seconds, its
  mtime) and when the sync saw it (`seen_at`). Appended durably before the change is applied;
  bounded (the older half goes past 1 MiB).
- `status.json`: the last pass (lag, counts, errors), the files as last synced (inode, size,
  mtime), the last outside write (with when it was seen), the entities left for the next pass,
  and the latest clean pass (when it began and ended); rewritten atomically at each pass, so
  one read of it gives a consistent picture (`sync_progress`, `sync_status`).

Never a value of a record: keys, field names and times only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from provisioner.fsutil import append_durably, private_dir, write_atomically
from provisioner.migration.sync_scan import stamp

if TYPE_CHECKING:
    from provisioner.config import Settings

__all__ = [
    "IDLE_SECONDS",
    "HashState",
    "LastOutsideWrite",
    "OutsideWrite",
    "SyncProgress",
    "last_outside_write",
    "outside_writes",
    "read_outside_writes",
    "read_status",
    "record_outside_writes",
    "sync_dir",
    "sync_progress",
    "sync_status",
    "write_status",
]

# With no file event, the service passes anyway this often (deferred records, missed events,
# the status): a status older than three of these is a sync that is not running.
IDLE_SECONDS = 5.0
_OUTSIDE_LOG = "outside_writes.jsonl"
_OUTSIDE_LOG_MAX_BYTES = 1 << 20
_STATUS = "status.json"
# Compact a hashes journal when it holds this many lines after its snapshot.
_COMPACT_LINES = 200


def sync_dir(data_dir: Path) -> Path:
    """The sync's own folder under the data layer's state folder."""
    return Path(data_dir) / ".provision" / "sync"


@dataclass(frozen=True)
class OutsideWrite:
    """A record that changed in a file without going through the data layer."""

    file: str  # relative to the data folder, e.g. data/customers.json
    entity: str
    key: str
    op: str  # "upsert" or "delete"
    at: float  # when the file was written (its mtime), epoch seconds
    seen_at: float  # when the sync saw it

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "entity": self.entity,
            "key": self.key,
            "op": self.op,
            "at": self.at,
            "seen_at": self.seen_at,
        }


class HashState:
    """The durable per-record hashes of one entity: `track -> (hash, record key)`.

    A track names a record where the sync finds it: `<file>#<member key>` for hashes of bytes,
    the record key for hashes of parsed records.
    """

    def __init__(self, data_dir: Path, entity: str) -> None:
        self.path = sync_dir(data_dir) / "hashes" / f"{entity}.jsonl"
        self.mode: str | None = None
        self.tracks: dict[str, tuple[str, str]] = {}
        self._lines = 0
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in raw.splitlines():
            try:
                item = json.loads(line)
                if item.get("reset"):
                    self.tracks = {}
                    self.mode = item.get("mode")
                    self._lines = 0
                for track, (digest, key) in item.get("set", {}).items():
                    self.tracks[track] = (str(digest), str(key))
                for track in item.get("del", ()):
                    self.tracks.pop(track, None)
                self._lines += 1
            except (ValueError, TypeError, AttributeError):
                continue  # a torn last line: that pass's changes are diffed again

    def commit(self, mode: str, changed: dict[str, tuple[str, str]], removed: list[str]) -> None:
        """Apply and persist one pass's changes (a mode change starts the state over)."""
        if mode != self.mode:
            self.mode = mode
            self.tracks = {}
            self.tracks.update(changed)
            for track in removed:
                self.tracks.pop(track, None)
            self._rewrite()
            return
        if not changed and not removed:
            return
        self.tracks.update(changed)
        for track in removed:
            self.tracks.pop(track, None)
        if self._lines >= _COMPACT_LINES:
            self._rewrite()
            return
        line = {"set": {t: list(v) for t, v in changed.items()}, "del": removed}
        private_dir(self.path.parent)
        append_durably(self.path, _line(line), mode=0o600, own_line=True)
        self._lines += 1

    def _rewrite(self) -> None:
        private_dir(self.path.parent)
        snapshot = {
            "reset": True,
            "mode": self.mode,
            "set": {t: list(v) for t, v in self.tracks.items()},
        }
        write_atomically(self.path, _line(snapshot), mode=0o600)
        self._lines = 1


def _line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def record_outside_writes(data_dir: Path, writes: list[OutsideWrite]) -> None:
    """Append outside writes durably (the older half goes when the log passes 1 MiB)."""
    if not writes:
        return
    log = sync_dir(data_dir) / _OUTSIDE_LOG
    private_dir(log.parent)
    try:
        if log.stat().st_size > _OUTSIDE_LOG_MAX_BYTES:
            lines = log.read_bytes().splitlines(keepends=True)
            write_atomically(log, b"".join(lines[len(lines) // 2 :]), mode=0o600)
    except FileNotFoundError:
        pass
    append_durably(log, b"".join(_line(w.as_json()) for w in writes), mode=0o600, own_line=True)


def read_outside_writes(data_dir: Path) -> list[OutsideWrite]:
    """Every outside write still in the log, oldest first (damaged lines skipped)."""
    try:
        raw = (sync_dir(data_dir) / _OUTSIDE_LOG).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            item = json.loads(line)
            out.append(
                OutsideWrite(
                    str(item["file"]),
                    str(item["entity"]),
                    str(item["key"]),
                    str(item["op"]),
                    float(item["at"]),
                    float(item["seen_at"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return out


def read_status(data_dir: Path) -> dict[str, Any]:
    """The last pass's status ({} before the first pass, or when unreadable)."""
    try:
        value = json.loads((sync_dir(data_dir) / _STATUS).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_status(data_dir: Path, status: dict[str, Any]) -> None:
    status = {**status, "updated_at": time.time(), "pid": os.getpid()}
    path = sync_dir(data_dir) / _STATUS
    private_dir(path.parent)
    write_atomically(path, json.dumps(status, indent=1, sort_keys=True) + "\n", mode=0o600)


# --------------------------------------------------------------------------------------------
# Reading the status (other processes: `migrate status`, the gates)
# --------------------------------------------------------------------------------------------


def data_root(where: Path | str | Settings) -> Path:
    """The data folder, from a path or from Settings."""
    if isinstance(where, Path | str):
        return Path(where)
    if where.data_dir is None:
        raise ValueError("no AEIMS data folder configured: set PROVISION_DATA_DIR")
    return where.data_dir


class LastOutsideWrite(NamedTuple):
    """The latest write seen outside the layer: unpacks as `(file, when)`."""

    file: str
    at: datetime  # UTC

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "at": self.at.isoformat(timespec="seconds")}


def outside_writes(where: Path | str | Settings) -> list[OutsideWrite]:
    """Every outside write still in the log, oldest first."""
    return read_outside_writes(data_root(where))


def last_outside_write(where: Path | str | Settings) -> LastOutsideWrite | None:
    """The file and time of the latest write seen outside the layer; None when none was.

    For the gate of `advance --to pg_only`: refuse while it is within the quiet period.
    """
    root = data_root(where)
    latest = read_status(root).get("last_outside_write")
    if not latest:
        logged = read_outside_writes(root)
        if not logged:
            return None
        last = max(logged, key=lambda w: w.at)
        latest = {"file": last.file, "at": last.at}
    return LastOutsideWrite(str(latest["file"]), datetime.fromtimestamp(float(latest["at"]), UTC))


@dataclass(frozen=True)
class SyncProgress:
    """What the sync has carried into PostgreSQL, from one status snapshot (written at the
    end of each pass, so the latest outside write and the latest clean pass agree)."""

    outside_file: str | None = None  # the latest outside write seen: its file,
    outside_at: float | None = None  # when the file was written (epoch seconds),
    outside_seen_at: float | None = None  # and when the sync saw it
    clean_began_at: float | None = None  # the latest clean pass: when it began,
    clean_ended_at: float | None = None  # and ended
    updated_at: float | None = None  # the end of the last pass, clean or not

    @property
    def running(self) -> bool:
        return self.updated_at is not None and time.time() - self.updated_at < 3 * IDLE_SECONDS

    def applied_outside_write(self) -> bool:
        """Whether the latest outside write seen is in PostgreSQL: a clean pass ended after the
        sync saw it."""
        if self.outside_at is None:
            return True
        seen = self.outside_seen_at if self.outside_seen_at is not None else self.outside_at
        return self.clean_ended_at is not None and self.clean_ended_at >= seen

    def looked_after_outside_write(self) -> bool:
        """Whether a clean pass began after the latest outside write was made: every write to
        the files up to then is in PostgreSQL, and none newer was seen."""
        if self.outside_at is None:
            return True
        return self.clean_began_at is not None and self.clean_began_at >= self.outside_at


def sync_progress(where: Path | str | Settings) -> SyncProgress:
    """The latest outside write and the latest clean pass (for the gates); readable with
    PostgreSQL down."""
    root = data_root(where)
    status = read_status(root)
    latest = status.get("last_outside_write") or {}
    clean = status.get("clean_pass") or {}
    if not latest and not status:
        logged = read_outside_writes(root)  # a log kept without a status (an older sync)
        if logged:
            last = max(logged, key=lambda w: w.at)
            latest = {"file": last.file, "at": last.at, "seen_at": last.seen_at}

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, int | float) else None

    return SyncProgress(
        outside_file=latest.get("file"),
        outside_at=number(latest.get("at")),
        outside_seen_at=number(latest.get("seen_at")),
        clean_began_at=number(clean.get("began_at")),
        clean_ended_at=number(clean.get("ended_at")),
        updated_at=number(status.get("updated_at")),
    )


def sync_status(where: Path | str | Settings) -> dict[str, Any]:
    """For `migrate status`: whether the sync has run, its lag, the last pass, the last outside
    write. `lag_seconds` is now minus the oldest write not synced yet (0 when caught up; None
    before any pass); `last_lag_seconds` what the last pass measured."""
    root = data_root(where).absolute()
    status = read_status(root)
    if not status:
        return {
            "running": False,
            "lag_seconds": None,
            "last_pass": None,
            "last_outside_write": None,
            "outside_writes": 0,
        }
    now = time.time()
    behind = []
    for rel, synced in (status.get("files") or {}).items():
        try:
            st = os.stat(root / rel)
        except FileNotFoundError:
            if synced is not None:
                behind.append(now)
            continue
        if stamp(st) != synced:
            behind.append(st.st_mtime)
    last = last_outside_write(root)
    updated = float(status.get("updated_at") or 0)
    return {
        "running": now - updated < 3 * IDLE_SECONDS,
        "updated_at": updated,
        "pid": status.get("pid"),
        "lag_seconds": round(max(0.0, now - min(behind)), 3) if behind else 0.0,
        "last_lag_seconds": status.get("last_lag_seconds"),
        "max_lag_seconds": status.get("max_lag_seconds"),
        "deferred": status.get("deferred", 0),
        "left_for_next_pass": status.get("retry", []),
        "last_clean_pass": status.get("clean_pass"),
        "last_pass": status.get("last_pass"),
        "last_outside_write": None if last is None else last.as_json(),
        "outside_writes": len(read_outside_writes(root)),
    }
