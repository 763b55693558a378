"""The sync of writers outside the data layer: PHP's writes to the JSON files, into PostgreSQL.

During the dual-write phases the PHP application keeps writing the JSON files (in place, under
`flock`), and those writes never pass through the data layer, so PostgreSQL would miss them.
`provision migrate sync` watches the data files (inotify through watchfiles), and for each
changed file:

1. reads it under `LOCK_SH` on the inode at its path, the lock PHP's readers take (PHP writes
   under `LOCK_EX` on the same inode, so no half-written file is read);
2. diffs it against the state it last loaded, record by record, by content hash (`sync_state`:
   durable, so a restart diffs instead of re-upserting everything). A pretty-printed file of
   records in a wrapper (customers.json as PHP writes it) is diffed on its bytes: each record's
   bytes are hashed where they sit and only the records whose bytes changed are parsed (a
   100k-customer file costs a regex pass and a hash of its bytes, not a parse); any other file
   goes through the data layer's reader (`AeimsJsonStore`), whose records are hashed;
3. takes the layer's write turn of the entity (`<data_dir>/.provision/locks/<entity>.lock`,
   which the layer holds across its JSON and PostgreSQL writes), checks that the file did not
   change meanwhile (when it did, as it does all the time beside busy writers, the file is
   read again inside the turn, where no write of the layer can be half done, so a pass always
   gets through), and compares each changed record with its row: a row holding the same
   record (the layer wrote it, or nothing really changed) is left alone; a record the layer
   is still writing (an intent), has in its outbox or quarantine is left to the layer's
   replay (`deferred`, looked at again a second later); anything else changed outside the
   layer: it is logged (file, entity, key, time; `sync_state.record_outside_writes`), then
   upserted or deleted with the layer's own record-to-row mapping (storage/pg), all in one
   transaction. Upserts carry a content hash, so running a pass twice changes nothing.

In `json_only` nothing is synced (the backfill loads everything); in `pg_only` changed files are
reported as outside writes and never applied (PostgreSQL is the truth, and nobody may still be
writing the files).

Names for other modules:
- `sync_once(data_dir, pg_dsn, ...) -> SyncReport`: one pass (what `--once` runs).
- `watch(data_dir, pg_dsn, stop=..., on_report=...)`: passes on every change until `stop`.
- `sync_status(data_dir) -> dict`: lag (now, and at the last pass), the last pass, the last
  outside write; readable with PostgreSQL down (for `migrate status`).
- `last_outside_write(data_dir) -> (file, when) | None`: the latest write seen outside the
  layer (for the gate that refuses `advance --to pg_only` within a quiet period).
- `outside_writes(data_dir) -> list[OutsideWrite]`: the log, oldest first.
- `sync_progress(data_dir) -> SyncProgress`: the latest outside write and the latest clean
  pass, from one status snapshot (for the gates: has the sync applied what it saw?).

A pass is clean when it looked at every entity in a dual-write phase and ended with nothing
deferred, failed or left for the next pass: every write made to the files before it began is
then in PostgreSQL, and so is every outside write seen up to its end. The service's passes
always look at every entity (a stat per unchanged file), so that they can be.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from provisioner.migration.sync_scan import (
    KEEP_BYTES_MAX,
    Scan,
    Snapshot,
    Span,
    eligible_for_spans,
    keys_unique,
    read_locked,
    record_digest,
    record_of_span,
    scan_spans_since,
    stamp,
)
from provisioner.migration.sync_state import (
    IDLE_SECONDS,
    HashState,
    LastOutsideWrite,
    OutsideWrite,
    SyncProgress,
    last_outside_write,
    outside_writes,
    read_status,
    record_outside_writes,
    sync_progress,
    sync_status,
    write_status,
)
from provisioner.storage.aeims.catalog import CATALOG, FileSpec
from provisioner.storage.layer.datalayer import DataLayer, write_turn
from provisioner.storage.layer.phase import Phase
from provisioner.storage.model import ENTITIES, StoredRecord
from provisioner.storage.pg import columns as pg_columns
from provisioner.storage.pg import maps as pg_maps
from provisioner.storage.pg import records as pg_records
from provisioner.storage.pg import rows as pg_rows
from provisioner.storage.phpjson import write_ahead
from provisioner.storage.phpjson.errors import JsonFileError

if TYPE_CHECKING:
    from provisioner.config import Settings

__all__ = [
    "LastOutsideWrite",
    "OutsideWrite",
    "SyncProgress",
    "SyncReport",
    "Syncer",
    "last_outside_write",
    "outside_writes",
    "sync_once",
    "sync_progress",
    "sync_status",
    "watch",
]

log = logging.getLogger("provisioner.migration.sync")

# A record deferred to the layer's replay is looked at again after this long.
RETRY_SECONDS = 1.0
_KEYS_PER_QUERY = 5000


@dataclass
class SyncReport:
    """What one pass saw and did."""

    phase: str
    applied: bool = False  # whether this phase carries changes into PostgreSQL
    files_changed: list[str] = field(default_factory=list)
    upserted: int = 0
    deleted: int = 0
    unchanged: int = 0  # changed in the file, but PostgreSQL already held it (the layer's writes)
    outside_writes: list[OutsideWrite] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)  # (entity, key)
    refused: list[dict[str, str]] = field(default_factory=list)  # entity, key, reason
    errors: list[str] = field(default_factory=list)
    lag_seconds: float | None = None  # from the latest file write to its commit here
    seconds: float = 0.0  # how long the pass took
    clean: bool = False  # every entity looked at, all applied: see the module's docstring

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "applied": self.applied,
            "files_changed": self.files_changed,
            "upserted": self.upserted,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "outside_writes": [w.as_json() for w in self.outside_writes],
            "deferred": [{"entity": e, "key": k} for e, k in self.deferred],
            "refused": self.refused,
            "errors": self.errors,
            "lag_seconds": self.lag_seconds,
            "seconds": round(self.seconds, 4),
            "clean": self.clean,
        }


# --------------------------------------------------------------------------------------------
# The syncer
# --------------------------------------------------------------------------------------------


class Syncer:
    """Passes over the data files of one AEIMS root; keeps its PostgreSQL connection and the
    per-record hashes between passes. One per process (the state files are its own)."""

    def __init__(
        self,
        data_dir: Path,
        pg_dsn: str,
        *,
        use_database: bool | None = None,
        use_json: bool | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pg_dsn = pg_dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        # The layer is used to read (its phase, its JSON reader, what it has in flight); the
        # sync never writes through it.
        self.layer = DataLayer(self.data_dir, pg_dsn, use_database=use_database, use_json=use_json)
        self._conn: psycopg.Connection[Any] | None = None
        self._states: dict[str, HashState] = {}
        status = read_status(self.data_dir)
        self._synced: dict[str, Any] = dict(status.get("files") or {})
        self._retry: set[str] = set()
        # The last scan of each file read by its bytes (a change is then found by comparing).
        self._scans: dict[str, Scan] = {}
        self._max_lag: float | None = status.get("max_lag_seconds")
        self._last_lag: float | None = status.get("last_lag_seconds")
        self._last_outside: dict[str, Any] | None = status.get("last_outside_write")
        self._clean_pass: dict[str, Any] | None = status.get("clean_pass")

    def close(self) -> None:
        self.layer.close()
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------- files
    def watched_dirs(self) -> list[Path]:
        folders = {p.parent for e in ENTITIES for p in self.layer.json.file_paths(e)}
        return sorted(f for f in folders if f.is_dir())

    def entity_of(self, path: str | Path) -> str | None:
        wanted = Path(path).absolute()
        for entity in ENTITIES:
            if wanted in self.layer.json.file_paths(entity):
                return entity
        return None

    def _relpath(self, path: Path) -> str:
        return str(path.relative_to(self.data_dir))

    # ---------------------------------------------------------------------- PostgreSQL
    def _pg(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.pg_dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
                options=(
                    f"-c statement_timeout={round(self.statement_timeout * 1000)} "
                    "-c synchronous_commit=on"
                ),
            )
        return self._conn

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
        self._conn = None

    # ---------------------------------------------------------------------- passes
    def sync_once(self, entities: Iterable[str] | None = None) -> SyncReport:
        """One pass over `entities` (default: all; an entity whose files did not change since
        the last pass and has nothing deferred costs a stat per file)."""
        began = time.monotonic()
        began_at = time.time()
        try:
            phase = self.layer.phase().phase
        except ValueError as exc:  # an unreadable phase file
            report = SyncReport("unknown", errors=[str(exc)])
            self._finish(report, began)
            return report
        report = SyncReport(phase.value, applied=phase.writes_json and phase.writes_pg)
        if phase is Phase.JSON_ONLY:
            self._finish(report, began)
            return report
        for entity in ENTITIES if entities is None else entities:
            try:
                self._sync_entity(entity, phase, report)
            except psycopg.Error as exc:
                self._drop_conn()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                report.errors.append(f"{entity}: PostgreSQL: {first}")
                self._retry.add(entity)
            except (OSError, ValueError, JsonFileError) as exc:
                report.errors.append(f"{entity}: {exc}")
                self._retry.add(entity)
            except Exception as exc:  # a service goes on with the other files
                log.exception("sync of %s failed", entity)
                report.errors.append(f"{entity}: {type(exc).__name__}: {exc}")
                self._retry.add(entity)
        report.clean = (
            entities is None
            and report.applied
            and not report.errors
            and not report.deferred
            and not self._retry
        )
        if report.clean:
            self._clean_pass = {"began_at": began_at, "ended_at": time.time()}
        self._finish(report, began)
        return report

    @property
    def behind(self) -> bool:
        """Whether an entity is left for the next pass (its file kept changing, or it failed)."""
        return bool(self._retry)

    def _finish(self, report: SyncReport, began: float) -> None:
        report.seconds = time.monotonic() - began
        if report.lag_seconds is not None:
            self._max_lag = max(self._max_lag or 0.0, report.lag_seconds)
            self._last_lag = report.lag_seconds
        if report.outside_writes:
            latest = max(report.outside_writes, key=lambda w: w.at)
            self._last_outside = {
                "file": latest.file,
                "at": latest.at,
                "key": latest.key,
                "seen_at": max(w.seen_at for w in report.outside_writes),
            }
        summary = report.as_json() | {"outside_writes": len(report.outside_writes)}
        try:
            write_status(
                self.data_dir,
                {
                    "files": self._synced,
                    "last_pass": summary,
                    "last_lag_seconds": self._last_lag,
                    "max_lag_seconds": self._max_lag,
                    "last_outside_write": self._last_outside,
                    "deferred": len(report.deferred),
                    "retry": sorted(self._retry),
                    "clean_pass": self._clean_pass,
                },
            )
        except OSError as exc:
            report.errors.append(f"cannot write the sync status: {exc}")

    def _state(self, entity: str) -> HashState:
        state = self._states.get(entity)
        if state is None:
            state = self._states[entity] = HashState(self.data_dir, entity)
        return state

    def _stamps(self, entity: str) -> dict[str, list[int] | None]:
        out: dict[str, list[int] | None] = {}
        for path in self.layer.json.file_paths(entity):
            try:
                out[self._relpath(path)] = stamp(os.stat(path))
            except FileNotFoundError:
                out[self._relpath(path)] = None
        return out

    def _unchanged_since_last_pass(self, entity: str) -> bool:
        return (
            entity not in self._retry
            and self._state(entity).mode is not None
            and all(self._synced.get(r, "?") == s for r, s in self._stamps(entity).items())
        )

    def _snapshot(self, entity: str, *, by_records: bool = False) -> Snapshot:
        """The entity's records as they are now, by the cheapest exact way."""
        spec = CATALOG[entity]
        if not by_records and len(spec.files) == 1 and eligible_for_spans(spec.file):
            fs = spec.file
            path = self.data_dir / fs.relpath
            # A rewrite a crash cut short is completed by the layer's reader first.
            got = None if write_ahead.pending(path) else read_locked(path)
            if got is not None:
                raw, st = got
                scan = scan_spans_since(raw, fs, self._scans.pop(entity, None))
                if scan is not None:
                    if len(raw) <= KEEP_BYTES_MAX:
                        self._scans[entity] = scan
                    return self._span_snapshot(entity, fs, raw, st, scan.spans)
        return self._record_snapshot(entity)

    def _span_snapshot(
        self, entity: str, fs: FileSpec, raw: bytes, st: os.stat_result, spans: list[Span]
    ) -> Snapshot:
        state = self._state(entity)
        known = state.tracks if state.mode == "spans" else {}
        tracks: dict[str, tuple[str, str]] = {}
        by_track: dict[str, Span] = {}
        for span in spans:
            track = f"{fs.relpath}#{span.member.decode('utf-8', 'surrogateescape')}"
            before = known.get(track)
            # An unchanged record keeps its key without being parsed.
            key = before[1] if before is not None and before[0] == span.digest else ""
            tracks[track] = (span.digest, key)
            by_track[track] = span

        def load(track: str) -> StoredRecord | None:
            return record_of_span(raw, by_track[track], fs, entity)

        return Snapshot(
            "spans",
            tracks,
            {fs.relpath: stamp(st)},
            st.st_mtime,
            loader=load,
            track_file=dict.fromkeys(tracks, fs.relpath),
        )

    def _record_snapshot(self, entity: str) -> Snapshot:
        stamps = self._stamps(entity)
        records = self.layer.json.load(entity)  # under LOCK_SH, through the layer's reader
        files = [rel for rel, s in stamps.items() if s is not None]
        changed = [rel for rel in files if self._synced.get(rel, "?") != stamps[rel]] or files
        tracks: dict[str, tuple[str, str]] = {}
        by_track: dict[str, StoredRecord | None] = {}
        for record in records:
            tracks[record.key] = (record_digest(record), record.key)
            by_track[record.key] = record
        mtimes = [os.stat(self.data_dir / rel).st_mtime for rel in files] or [time.time()]
        return Snapshot(
            "records",
            tracks,
            stamps,
            max(mtimes),
            records=by_track,
            track_file=dict.fromkeys(tracks, ", ".join(changed)),
        )

    def _turn(self, entity: str) -> Any:
        """The layer's write turn of `entity` (held across its JSON and PostgreSQL writes)."""
        return write_turn(self.data_dir, entity)

    def _sync_entity(self, entity: str, phase: Phase, report: SyncReport) -> None:
        """Diff the entity's files against the last state and apply what changed. The first
        read is made outside the layer's turn (a big file is read without holding the layer's
        writers); when the file changed before the turn was taken, it is read again inside the
        turn, where the layer cannot be half-way through a write, so busy files get through."""
        if self._unchanged_since_last_pass(entity):
            return
        by_records = False
        in_turn = False
        for _attempt in range(4):
            with self._turn(entity) if in_turn else nullcontext():
                outcome = self._sync_snapshot(entity, phase, report, by_records, in_turn)
            if outcome == "done":
                return
            if outcome == "by_records":
                by_records = True  # two records with one id: the layer's reader names them
            else:  # "moved": the file changed before the turn was taken
                in_turn = True
        self._retry.add(entity)  # the next pass takes it

    def _sync_snapshot(
        self, entity: str, phase: Phase, report: SyncReport, by_records: bool, in_turn: bool
    ) -> str:
        """One read-diff-apply of `entity`: "done", "by_records" (read it through the layer's
        reader) or "moved" (changed before the turn was taken: read it again inside)."""
        snap = self._snapshot(entity, by_records=by_records)
        state = self._state(entity)
        baseline = state.mode != snap.mode
        known = {} if baseline else state.tracks
        changed = [t for t, (d, _) in snap.tracks.items() if known.get(t, ("",))[0] != d]
        removed = [t for t in known if t not in snap.tracks]
        if not changed and not removed:
            state.commit(snap.mode, {}, [])
            self._synced.update(snap.stamps)
            self._retry.discard(entity)
            return "done"
        records, not_records = _changed_records(snap, changed)
        if snap.mode == "spans" and not keys_unique(snap, records):
            return "by_records"
        if phase is Phase.PG_ONLY:
            if baseline:  # nothing to compare with: this is the state from now on
                self._commit_state(entity, snap, records, not_records, removed, set())
            else:  # reported (nobody may still write the files), never applied
                self._apply(entity, snap, known, records, not_records, removed, report, False)
            return "done"
        if in_turn:
            self._apply(entity, snap, known, records, not_records, removed, report)
            return "done"
        with self._turn(entity):
            # The layer writes JSON, then PostgreSQL, inside this turn: a file changed since
            # it was read may hold a write of the layer's that PostgreSQL has too: read again.
            if self._stamps(entity) != snap.stamps:
                return "moved"
            self._apply(entity, snap, known, records, not_records, removed, report)
            return "done"

    def _commit_state(
        self,
        entity: str,
        snap: Snapshot,
        records: dict[str, StoredRecord],
        not_records: set[str],
        removed: list[str],
        held_back: set[str],
    ) -> None:
        """Persist the hashes of what was synced; held-back tracks keep their old hash, so the
        next pass looks at them again."""
        changed = {t: (snap.tracks[t][0], r.key) for t, r in records.items() if t not in held_back}
        changed |= {t: (snap.tracks[t][0], "") for t in not_records}
        gone = [t for t in removed if t not in held_back]
        self._state(entity).commit(snap.mode, changed, gone)
        if held_back:
            self._retry.add(entity)
        else:
            self._retry.discard(entity)
            self._synced.update(snap.stamps)

    def _pending(self, entity: str) -> set[str]:
        """Keys of `entity` the layer has not finished writing to PostgreSQL: intents of writes
        in flight (or of a writer that died), outbox entries, quarantined records."""
        keys = set(self.layer.intents.pending_keys(entity))
        if not self.layer.outbox.is_empty():
            keys |= {e.key for e in self.layer.outbox.entries() if e.entity == entity}
        keys |= set(self.layer.quarantine.keys(entity))
        return keys

    def _rows(self, entity: str, keys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """content_hash and placement of the rows of `keys` that exist."""
        mapping = pg_maps.entity_map(entity)
        query = sql.SQL("SELECT {k}, content_hash, placement FROM {t} WHERE {k} = ANY(%s)").format(
            k=sql.Identifier(mapping.key_column), t=sql.Identifier(mapping.table)
        )
        rows: dict[str, tuple[str, dict[str, Any]]] = {}
        conn = self._pg()
        for i in range(0, len(keys), _KEYS_PER_QUERY):
            for key, digest, placement in conn.execute(query, [keys[i : i + _KEYS_PER_QUERY]]):
                rows[key] = (digest, placement or {})
        return rows

    def _all_keys(self, entity: str) -> set[str]:
        mapping = pg_maps.entity_map(entity)
        query = sql.SQL("SELECT {k} FROM {t}").format(
            k=sql.Identifier(mapping.key_column), t=sql.Identifier(mapping.table)
        )
        return {row[0] for row in self._pg().execute(query)}

    def _apply(
        self,
        entity: str,
        snap: Snapshot,
        known: dict[str, tuple[str, str]],
        records: dict[str, StoredRecord],
        not_records: set[str],
        removed: list[str],
        report: SyncReport,
        write: bool = True,
    ) -> None:
        """Inside the entity's write turn: write to PostgreSQL exactly the changed records it
        does not hold and the layer is not writing itself (with `write` False, in pg_only:
        only report them)."""
        present = {r.key for r in records.values()}
        present |= {k for t, (_, k) in snap.tracks.items() if k and t not in records}
        # A record gone from its track, or whose key changed, is deleted unless it is elsewhere.
        deleted: dict[str, str] = {}  # key -> track
        for track in [*removed, *records, *not_records]:
            old_key = known.get(track, ("", ""))[1]
            if old_key and old_key not in present:
                deleted[old_key] = track
        if not known:
            # No state to diff with (the first pass): rows of records the file no longer holds
            # were deleted while nobody watched.
            for key in self._all_keys(entity) - present:
                deleted[key] = ""
        candidates = list({r.key for r in records.values()} | set(deleted))
        rows = self._rows(entity, candidates) if candidates else {}
        pending = self._pending(entity) if write else set()
        held_back: set[str] = set()
        to_write: dict[str, tuple[str, StoredRecord]] = {}
        for track, record in records.items():
            try:
                image = pg_rows.from_record(record)
            except pg_columns.RecordMappingError as exc:
                report.refused.append({"entity": entity, "key": record.key, "reason": str(exc)})
                continue
            row = rows.get(record.key)
            if row is not None and (
                image.content_hash == row[0] or _same_data_elsewhere(record, row[1]) == row[0]
            ):
                report.unchanged += 1  # PostgreSQL holds it: the layer wrote it, or no change
            elif record.key in pending:
                held_back.add(track)  # the layer's own write, still on its way
                report.deferred.append((entity, record.key))
            else:
                to_write[record.key] = (track, record)
        to_delete: dict[str, str] = {}
        for key, track in deleted.items():
            if key not in rows:
                continue
            if key in pending:
                if track:
                    held_back.add(track)
                report.deferred.append((entity, key))
            else:
                to_delete[key] = track
        now = time.time()
        writes = [
            OutsideWrite(_file_of(snap, t), entity, k, "upsert", snap.mtime, now)
            for k, (t, _) in to_write.items()
        ] + [
            OutsideWrite(_file_of(snap, t), entity, k, "delete", snap.mtime, now)
            for k, t in to_delete.items()
        ]
        if writes:
            record_outside_writes(self.data_dir, writes)  # seen, whether or not applied
            report.outside_writes += writes
            for w in writes:
                log.info(json.dumps({"event": "outside_write", **w.as_json()}))
        if writes and write:
            conn = self._pg()
            with conn.transaction():
                if to_write:
                    pg_records.upsert_records(conn, [r for _, r in to_write.values()])
                for key in to_delete:
                    pg_records.delete_record(conn, entity, key)
            report.upserted += len(to_write)
            report.deleted += len(to_delete)
            report.lag_seconds = max(report.lag_seconds or 0.0, time.time() - snap.mtime)
        report.files_changed += [f for f in snap.stamps if f not in report.files_changed]
        self._commit_state(entity, snap, records, not_records, removed, held_back)


def _changed_records(
    snap: Snapshot, changed: list[str]
) -> tuple[dict[str, StoredRecord], set[str]]:
    """The changed tracks' records (by track), and the tracks that hold no record."""
    records: dict[str, StoredRecord] = {}
    not_records: set[str] = set()
    for track in changed:
        record = snap.loader(track) if snap.loader else snap.records.get(track)
        if record is None:
            not_records.add(track)
        else:
            records[track] = record
    return records, not_records


def _same_data_elsewhere(record: StoredRecord, placement: dict[str, Any]) -> str:
    """The content hash `record` would have with the row's placement: equal to the row's when
    only where it sits differs (its position moves when an earlier record is deleted)."""
    moved = StoredRecord(record.entity, record.key, record.data, placement)
    return pg_rows.from_record(moved).content_hash


def _file_of(snap: Snapshot, track: str) -> str:
    return snap.track_file.get(track) or next(iter(snap.stamps), "")


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _root_and_dsn(where: Path | str | Settings, pg_dsn: str | None) -> tuple[Path, str | None]:
    """The data folder (and DSN) from a path, or from Settings (the phases pass theirs)."""
    if isinstance(where, Path | str):
        return Path(where), pg_dsn
    if where.data_dir is None:
        raise ValueError("no AEIMS data folder configured: set PROVISION_DATA_DIR")
    return where.data_dir, pg_dsn or where.pg_dsn


def sync_once(
    where: Path | str | Settings,
    pg_dsn: str | None = None,
    *,
    use_database: bool | None = None,
    use_json: bool | None = None,
) -> SyncReport:
    """One pass over every data file (`provision migrate sync --once`). `where`: the AEIMS
    root, or Settings (its data folder, DSN and flags)."""
    root, dsn = _root_and_dsn(where, pg_dsn)
    if not isinstance(where, Path | str):
        use_database, use_json = where.use_database, where.use_json
    if not dsn:
        raise ValueError("the sync needs PostgreSQL: set PROVISION_PG_DSN")
    with Syncer(root, dsn, use_database=use_database, use_json=use_json) as syncer:
        return syncer.sync_once()


def watch(
    data_dir: Path,
    pg_dsn: str,
    *,
    stop: threading.Event,
    on_report: Callable[[SyncReport], None] | None = None,
    use_database: bool | None = None,
    use_json: bool | None = None,
    debounce_ms: int = 30,
    idle_seconds: float = IDLE_SECONDS,
) -> None:
    """Sync on every change of a data file until `stop` is set: a pass at start (catching up
    on what changed while nobody watched), then one per batch of file events, and one at least
    every `idle_seconds` (every RETRY_SECONDS while records wait for the layer, a pass failed
    or an entity was left for the next pass)."""
    import watchfiles

    with Syncer(data_dir, pg_dsn, use_database=use_database, use_json=use_json) as syncer:
        report = syncer.sync_once()
        if on_report is not None:
            on_report(report)
        folders = [str(f) for f in syncer.watched_dirs()]
        if not folders:
            raise ValueError(f"{data_dir} has no data folder to watch")

        def is_data_file(_change: watchfiles.Change, path: str) -> bool:
            return path.endswith(".json")

        last_pass = time.monotonic()
        for changes in watchfiles.watch(
            *folders,
            watch_filter=is_data_file,
            debounce=debounce_ms,
            step=10,
            stop_event=stop,
            rust_timeout=round(RETRY_SECONDS * 1000),
            yield_on_timeout=True,
            raise_interrupt=False,
            recursive=False,
        ):
            # Every pass looks at every entity (one stat per unchanged file), so that a pass
            # that ends with nothing left over is a clean one (see the module's docstring).
            if not (
                changes
                or report.deferred
                or report.errors
                or syncer.behind
                or time.monotonic() - last_pass > idle_seconds
            ):
                continue
            report = syncer.sync_once()
            last_pass = time.monotonic()
            if on_report is not None and (
                report.files_changed or report.errors or report.outside_writes
            ):
                on_report(report)
