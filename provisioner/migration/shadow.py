"""Shadow reads (GitHub's Scientist pattern): in `dual_write_read_json`, a fraction of the data
layer's reads also read PostgreSQL, off the caller's path, and compare.

The caller gets JSON's answer as always. The layer hands each read it served from JSON to its
`read_observer` (`ShadowReads.observe`): a sampled read (`PROVISION_SHADOW_READ_FRACTION`,
default 0.01) keeps a private copy of JSON's answer and queues the PostgreSQL half; an unsampled
one costs one random draw. A single daemon thread runs the queue on its own connection (never
the layer's pool or breaker), with a short connect and statement timeout; when the queue is
full the read is dropped, and after a connection failure reads are dropped for a while. So the
caller never waits, never sees an exception, and PostgreSQL being down costs nothing.

A difference is confirmed before it is recorded: the same read is repeated a little later (past
the sync's lag and the layer's own write between its JSON and PostgreSQL halves), and it counts
only when JSON still gives what it gave and PostgreSQL still disagrees. Recorded in
`<data_dir>/.provision/shadow/differences.jsonl` (0600): the entity, the key, the fields that
differ (`missing_in_pg` / `missing_in_json` for a whole record), the time; never a value.

Names for other modules:
- `ShadowReads(data_dir, pg_dsn, fraction)`, `enable_shadow_reads(layer, fraction)`: attach to a
  DataLayer (`layer.read_observer`); `ShadowReads.close()`, `.stats()`.
- `shadow_differences(data_dir_or_settings) -> dict`: counts for `migrate status` (total, per
  entity, the latest few); `shadow_status` is the same with the configured fraction.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.fsutil import append_durably, private_dir
from provisioner.migration.sync_state import data_root

if TYPE_CHECKING:
    from provisioner.config import Settings

__all__ = ["ShadowReads", "enable_shadow_reads", "shadow_differences", "shadow_status"]

log = logging.getLogger("provisioner.migration.shadow")

DEFAULT_FRACTION = 0.01
# A sampled read whose answer holds more records than this is not compared (copying it would
# cost the caller time).
MAX_RECORDS = 1000
_MISSING = object()
_LOG = "differences.jsonl"
_LOG_MAX_BYTES = 1 << 20


def _log_path(data_dir: Path) -> Path:
    return Path(data_dir) / ".provision" / "shadow" / _LOG


def _as_records(result: Any, key: str | None) -> dict[str, dict[str, Any]] | None:
    """A read's answer as {key: data}, plaintext removed (PostgreSQL never holds it); None when
    it is not records (login candidates) or too many to compare."""
    from provisioner.storage.model import StoredRecord

    if result is None:
        return {} if key is not None else None
    if isinstance(result, StoredRecord):
        return {result.key: result.without_plaintext().data}
    if (
        isinstance(result, list)
        and len(result) <= MAX_RECORDS
        and all(isinstance(r, StoredRecord) for r in result)
    ):
        return {r.key: r.without_plaintext().data for r in result}
    return None


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The top-level fields whose values differ (types compared too), sorted."""
    from provisioner.storage.jsonvalues import json_equal

    names = set(a) | set(b)
    return sorted(n for n in names if not json_equal(a.get(n, _MISSING), b.get(n, _MISSING)))


def compare(
    json_side: dict[str, dict[str, Any]], pg_side: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One item per record that differs: key, and fields (or what is missing where)."""
    out = []
    for key in sorted(set(json_side) | set(pg_side)):
        if key not in pg_side:
            out.append({"key": key, "fields": [], "kind": "missing_in_pg"})
        elif key not in json_side:
            out.append({"key": key, "fields": [], "kind": "missing_in_json"})
        else:
            fields = differing_fields(json_side[key], pg_side[key])
            if fields:
                out.append({"key": key, "fields": fields, "kind": "fields"})
    return out


@dataclass
class _Job:
    entity: str
    key: str | None
    from_pg: Callable[[Any], Any]
    from_json: Callable[[], Any]
    json_side: dict[str, dict[str, Any]]
    attempt: int = 0


class ShadowReads:
    """The observer a DataLayer calls after each read it served from JSON."""

    def __init__(
        self,
        data_dir: Path,
        pg_dsn: str,
        fraction: float = DEFAULT_FRACTION,
        *,
        queue_size: int = 256,
        timeout: float = 1.0,
        confirm_after: float = 2.0,
        backoff: float = 5.0,
        seed: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.pg_dsn = pg_dsn
        self.fraction = fraction
        self.timeout = timeout
        self.confirm_after = confirm_after
        self.backoff = backoff
        self._random = random.Random(seed).random
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._later: list[tuple[float, int, _Job]] = []  # confirmations, by due time
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._conn: Any = None
        self._down_until = 0.0
        self._counts = {"sampled": 0, "dropped": 0, "compared": 0, "errors": 0, "differences": 0}

    # ------------------------------------------------------------------ the caller's path
    def observe(
        self,
        entities: tuple[str, ...],
        key: str | None,
        from_pg: Callable[[Any], Any],
        from_json: Callable[[], Any],
        json_result: Any,
    ) -> None:
        """Called by the layer after a JSON read; returns at once and never raises."""
        try:
            if self._random() >= self.fraction or time.monotonic() < self._down_until:
                return
            json_side = _as_records(json_result, key)
            if json_side is None:
                return
            json_side = json.loads(json.dumps(json_side))  # the caller may change its copy
            self._counts["sampled"] += 1
            job = _Job(entities[0], key, from_pg, from_json, json_side)
            self._queue.put_nowait(job)
            self._ensure_thread()
        except queue.Full:
            self._counts["dropped"] += 1
        except Exception:  # never the caller's problem
            self._counts["errors"] += 1

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="shadow-reads", daemon=True
                    )
                    self._thread.start()

    # ------------------------------------------------------------------ the background thread
    def _run(self) -> None:
        while True:
            wait = None
            if self._later:
                wait = max(0.0, self._later[0][0] - time.monotonic())
            try:
                job = self._queue.get(timeout=wait)
            except queue.Empty:
                job = None
            else:
                try:
                    if job is None:
                        return
                    self._check(job)
                finally:
                    self._queue.task_done()
            while self._later and self._later[0][0] <= time.monotonic():
                self._check(heapq.heappop(self._later)[2])

    def _pg(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.pg_dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.timeout)),
                options=f"-c statement_timeout={round(self.timeout * 1000)}",
            )
        return self._conn

    def _check(self, job: _Job) -> None:
        try:
            pg_side = _as_records(job.from_pg(self._pg()), job.key)
            if job.attempt:
                again = _as_records(job.from_json(), job.key)
                if again is None or compare(job.json_side, again):
                    return  # JSON moved meanwhile: inconclusive
            self._counts["compared"] += 1
            if pg_side is None:
                return
            found = compare(job.json_side, pg_side)
            if not found:
                return
            if job.attempt == 0:
                job.attempt = 1
                self._seq += 1
                due = time.monotonic() + self.confirm_after
                heapq.heappush(self._later, (due, self._seq, job))
                return
            self._record(job.entity, found)
        except Exception as exc:
            self._counts["errors"] += 1
            self._down_until = time.monotonic() + self.backoff
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
            log.debug("shadow read failed: %s", type(exc).__name__)

    def _record(self, entity: str, found: list[dict[str, Any]]) -> None:
        now = time.time()
        lines = b"".join(
            (json.dumps({"at": now, "entity": entity, **item}) + "\n").encode() for item in found
        )
        path = _log_path(self.data_dir)
        private_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > _LOG_MAX_BYTES:
                kept = path.read_bytes().splitlines(keepends=True)
                path.write_bytes(b"".join(kept[len(kept) // 2 :]))
        append_durably(path, lines, mode=0o600, own_line=True)
        self._counts["differences"] += len(found)
        for item in found:
            log.warning(json.dumps({"event": "shadow_read_difference", "entity": entity, **item}))

    # ------------------------------------------------------------------ lifecycle
    def stats(self) -> dict[str, int]:
        return dict(self._counts, queued=self._queue.qsize(), waiting=len(self._later))

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until the queue and the confirmations are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while (self._queue.unfinished_tasks or self._later) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1.0)
            self._thread.join(timeout=2.0)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()


def enable_shadow_reads(layer: Any, fraction: float = DEFAULT_FRACTION, **kwargs: Any) -> Any:
    """Attach shadow reads to a DataLayer (its `read_observer`); None without a DSN or with a
    fraction of 0."""
    if not layer.pg_dsn or fraction <= 0:
        return None
    observer = ShadowReads(layer.data_dir, layer.pg_dsn, fraction, **kwargs)
    layer.read_observer = observer
    return observer


def shadow_differences(where: Path | str | Settings, recent: int = 5) -> dict[str, Any]:
    """Recorded differences: total, per entity, and the latest few (entity, key, fields)."""
    try:
        raw = _log_path(data_root(where)).read_bytes()
    except FileNotFoundError:
        raw = b""
    items = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            items.append(json.loads(line))
    per_entity: dict[str, int] = {}
    for item in items:
        per_entity[str(item.get("entity"))] = per_entity.get(str(item.get("entity")), 0) + 1
    latest = items[-recent:]
    return {
        "differences": len(items),
        "per_entity": per_entity,
        "latest": latest,
        "last_at": latest[-1].get("at") if latest else None,
    }


def shadow_status(where: Path | str | Settings) -> dict[str, Any]:
    """shadow_differences, with the configured fraction when given Settings."""
    found = shadow_differences(where)
    fraction = getattr(where, "shadow_read_fraction", None)
    return found | ({"fraction": fraction} if fraction is not None else {})
