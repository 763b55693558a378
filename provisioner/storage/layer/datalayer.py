"""The AEIMS data layer: one API over the JSON files and PostgreSQL, phase by phase.

DataLayer does phase routing, dual write and fallback: reads fall back to JSON only while
PostgreSQL is unavailable or behind (outbox, intents, quarantine); JSON is written first, then
PostgreSQL, with the outbox catching any failure (writes.py, replay.py); connecting is lazy and
guarded by a circuit breaker. The PHP-named methods, logins and health are in php_api.py on
top of it. docs/data-layer.md, "Notes by module", has the promises in full.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from provisioner.config import Settings, redact_dsn
from provisioner.fsutil import file_lock
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.events import emit
from provisioner.storage.jsonvalues import new_id
from provisioner.storage.layer.auth import AuthResult
from provisioner.storage.layer.breaker import CircuitBreaker
from provisioner.storage.layer.errors import DataUnavailable, PgDown
from provisioner.storage.layer.intents import IntentLog
from provisioner.storage.layer.outbox import Outbox
from provisioner.storage.layer.phase import (
    EffectivePhase,
    Phase,
    effective_phase,
    phase_file,
    read_phase,
    write_phase,
)
from provisioner.storage.layer.php_api import PhpApi
from provisioner.storage.layer.quarantine import Quarantine
from provisioner.storage.layer.replay import Replays
from provisioner.storage.layer.writes import WritePath
from provisioner.storage.model import StoredRecord
from provisioner.storage.pg import records as pg_records
from provisioner.storage.phpjson.group_commit import GroupCommit
from provisioner.storage.values import check_record

T = TypeVar("T")
__all__ = ["AuthResult", "DataLayer", "DataUnavailable"]


def write_turn(
    data_dir: Path, entity: str, timeout: float | None = None
) -> AbstractContextManager[int]:
    """The write turn of one entity: writers in every process take turns for the JSON write
    and the PostgreSQL write together, so PostgreSQL receives writes in JSON's order (a slow
    writer can never put an older state over a newer one). Whoever holds it sees both sides
    agree on every record the layer wrote (the sync and the validation take it too)."""
    return file_lock(data_dir / ".provision" / "locks" / f"{entity}.lock", timeout=timeout)


class DataLayer(PhpApi, WritePath, Replays):
    """The one entry point for AEIMS data. Thread-safe; one per process and data folder."""

    def __init__(
        self,
        data_dir: Path,
        pg_dsn: str | None = None,
        *,
        connect_timeout: float = 1.0,
        statement_timeout: float = 5.0,
        retry_seconds: float = 5.0,
        use_database: bool | None = None,
        use_json: bool | None = None,
        pool_size: int = 8,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.pg_dsn = pg_dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.use_database = use_database
        self.use_json = use_json
        self.pool_size = pool_size
        self.json = AeimsJsonStore(self.data_dir)
        self.outbox = Outbox(self.data_dir / ".provision")
        self.intents = IntentLog(self.data_dir / ".provision")
        self.quarantine = Quarantine(self.data_dir / ".provision")
        self._locks_dir = self.data_dir / ".provision" / "locks"
        self.breaker = CircuitBreaker(retry_seconds)
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._phase_path = str(phase_file(self.data_dir))
        self._phase_cache: tuple[tuple[int, int] | None, EffectivePhase] | None = None
        self._group_commits: dict[str, GroupCommit[StoredRecord]] = {}  # entity -> its writes
        self._group_commits_lock = threading.Lock()
        self._last_drain_try = 0.0
        self._local = threading.local()
        self._leftovers_checked = False
        # Shadow reads (migration/shadow.py): told of each read served from JSON in
        # dual_write_read_json; its observe() returns at once and never raises.
        self.read_observer: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DataLayer:
        if settings.data_dir is None:
            raise ValueError(
                "no AEIMS data folder configured: set PROVISION_DATA_DIR to the application root "
                "holding data/*.json"
            )
        return cls(
            settings.data_dir,
            settings.pg_dsn,
            connect_timeout=settings.pg_connect_timeout,
            statement_timeout=settings.pg_statement_timeout,
            retry_seconds=settings.breaker_retry_seconds,
            use_database=settings.use_database,
            use_json=settings.use_json,
        )

    def close(self) -> None:
        self.intents.close()
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> DataLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ phase
    def phase(self) -> EffectivePhase:
        """The phase in force: persisted, then the emergency flags; JSON only without a DSN.

        The phase file is re-read whenever it changed (one stat per call), so a phase switch
        reaches every process at its next request.
        """
        try:
            st = os.stat(self._phase_path)
            stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        cached = self._phase_cache
        if cached is None or cached[0] != stamp:
            persisted = read_phase(self.data_dir)
            if not self.pg_dsn:
                effective = EffectivePhase(Phase.JSON_ONLY, persisted, "no PROVISION_PG_DSN")
            else:
                effective = effective_phase(persisted, self.use_database, self.use_json)
            cached = (stamp, effective)
            self._phase_cache = cached
        return cached[1]

    def set_phase(self, phase: Phase, changed_by: str = "") -> None:
        """Persist the phase locally, and in PostgreSQL's phase_state when reachable."""
        write_phase(self.data_dir, phase, changed_by)
        if self.pg_dsn:
            try:
                with self._pg() as conn:
                    conn.execute(
                        "INSERT INTO phase_state (phase, changed_by) VALUES (%s, %s) "
                        "ON CONFLICT (singleton) DO UPDATE SET phase = EXCLUDED.phase, "
                        "changed_at = now(), changed_by = EXCLUDED.changed_by",
                        (phase.value, changed_by or "provision"),
                    )
            except PgDown:
                emit("phase_not_mirrored", logging.WARNING, phase=phase.value)

    # ------------------------------------------------------------------------ PostgreSQL
    def _get_pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                assert self.pg_dsn
                # One direct connection first: a refused or failing server answers at once,
                # where the pool would retry in the background until its timeout.
                psycopg.connect(self.pg_dsn, connect_timeout=self._connect_seconds).close()
                pool = ConnectionPool(
                    self.pg_dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": self._connect_seconds,
                        # synchronous_commit=on whatever the server's default: an acknowledged
                        # write must survive a crash of the server.
                        "options": (
                            f"-c statement_timeout={round(self.statement_timeout * 1000)} "
                            "-c synchronous_commit=on"
                        ),
                    },
                    timeout=self.connect_timeout,
                    reconnect_timeout=60,
                    open=False,
                    name="aeims-data",
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @property
    def _connect_seconds(self) -> int:
        """libpq takes whole seconds."""
        return max(1, round(self.connect_timeout))

    def _drop_pool(self) -> None:
        """Forget every pooled connection (they died with the server); a new pool comes later."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            threading.Thread(target=pool.close, kwargs={"timeout": 1.0}, daemon=True).start()

    @contextmanager
    def _pg(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, or PgDown at once while the breaker is open."""
        if not self.pg_dsn or not self.breaker.allow():
            raise PgDown("circuit breaker open", attempted=False)
        try:
            with self._get_pool().connection(timeout=self.connect_timeout) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.breaker.failed(str(redact_dsn(error)))
            self._drop_pool()
            raise PgDown(error, attempted=True) from None
        except BaseException:
            # A query error (constraint, data) says the server is up.
            self._recovered()
            raise
        self._recovered()

    def _recovered(self) -> None:
        if self.breaker.succeeded() and not self.outbox.is_empty():
            self._drain_quietly()

    @contextmanager
    def _pg_required(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection where nothing else will do (pg_only); DataUnavailable during an outage."""
        try:
            with self._pg() as conn:
                yield conn
        except PgDown as exc:
            raise DataUnavailable(
                f"PostgreSQL is unavailable and the phase is pg_only ({exc}); "
                "fix the database, or set USE_DATABASE=false to read the JSON archive"
            ) from None

    def _pg_or_json(
        self,
        entities: tuple[str, ...],
        key: str | None,
        from_pg: Callable[[psycopg.Connection[Any]], T],
        from_json: Callable[[], T],
    ) -> T:
        """Read from PostgreSQL when the phase says so and it is up and not behind JSON for
        `key` of `entities` (None: any of their records); else from JSON."""
        phase = self.phase().phase
        if not phase.reads_pg:
            result = from_json()
            if self.read_observer is not None and phase == Phase.DUAL_WRITE_READ_JSON:
                self.read_observer.observe(entities, key, from_pg, from_json, result)
            return result
        if phase != Phase.PG_ONLY:
            self._recover_once()
            if not self.outbox.is_empty() or self._behind(entities, key):
                # PostgreSQL is behind JSON until the outbox drains (and intents left by a
                # writer that died are in it): JSON is the truth meanwhile.
                self._maybe_drain()
                if not self.outbox.is_empty() or self._behind(entities, key):
                    return from_json()
        try:
            with self._pg_required() if phase == Phase.PG_ONLY else self._pg() as conn:
                return from_pg(conn)
        except PgDown as exc:
            if exc.attempted:  # while the breaker stays open, it counts the fallbacks
                emit("read_fallback", logging.WARNING, reason=str(exc))
            return from_json()

    def _behind(self, entities: tuple[str, ...], key: str | None) -> bool:
        """Whether PostgreSQL may lack JSON's state of `key` (None: of any record): an intent
        not settled yet, or a record it refused (quarantined)."""
        for entity in entities:
            pending = self.intents.pending_keys(entity)
            if pending and (key is None or key in pending):
                return True
        try:
            refused = self.quarantine.keys_of(entities)
        except OSError:  # cannot tell which records PostgreSQL refused: JSON, the truth
            return True
        return any(key is None or key in keys for keys in refused.values())

    def _ordered(self, entity: str, timeout: float | None = None) -> AbstractContextManager[int]:
        return write_turn(self.data_dir, entity, timeout)

    def _record_turn(self, entity: str, key: str) -> AbstractContextManager[int]:
        """Read-modify-writes of one record, in every process and thread, take turns, so two
        callers changing different parts of it (two sites linking one operator) both land.
        A lock of its own: `save` takes the entity's lock inside it."""
        digest = hashlib.sha256(f"{entity}\0{key}".encode()).hexdigest()[:16]
        return file_lock(self._locks_dir / "records" / f"{digest}.lock")

    # ------------------------------------------------------------------------ generic API
    def get(self, entity: str, key: str) -> dict[str, Any] | None:
        record = self._pg_or_json(
            (entity,),
            key,
            lambda conn: pg_records.get_record(conn, entity, key),
            lambda: self.json.get(entity, key),
        )
        return None if record is None else record.data

    def list(self, entity: str) -> list[dict[str, Any]]:
        records = self._pg_or_json(
            (entity,),
            None,
            lambda conn: pg_records.list_records(conn, entity),
            lambda: self.json.load(entity),
        )
        return [r.data for r in records]

    def find_by_login(self, entity: str, login: str | int) -> dict[str, Any] | None:
        """A lookup by username, email or login ignoring ASCII case (logins.normalize_login,
        the same on both sides). Logins do not use it: find_login applies the login rule."""
        record = self._find_record(entity, login)
        return None if record is None else record.data

    def _find_record(self, entity: str, login: str | int) -> StoredRecord | None:
        return self._pg_or_json(
            (entity,),
            None,
            lambda conn: pg_records.find_by_login(conn, entity, login),
            lambda: self.json.find_by_login(entity, login),
        )

    def save(self, entity: str, data: dict[str, Any], key: str | None = None) -> str:
        """Insert or replace one record; returns its key (generated when the record has none)."""
        key = key or self._key_of(entity, data)
        record = StoredRecord(entity, key, dict(data))
        check_record(record)  # before it joins a batch: a refused value fails only its caller
        self._write_grouped(record)
        return key

    def save_many(self, entity: str, items: list[dict[str, Any]]) -> list[str]:
        records = [StoredRecord(entity, self._key_of(entity, d), dict(d)) for d in items]
        self._write(entity, records)
        return [r.key for r in records]

    def delete(self, entity: str, key: str) -> bool:
        existed = self.get(entity, key) is not None
        if existed:
            self._write(entity, [], deleted=[key])
        return existed

    @staticmethod
    def _key_of(entity: str, data: dict[str, Any]) -> str:
        field = AeimsJsonStore.spec(entity).file.id_field  # one catalog for both sides
        if field is None:
            raise ValueError(f"{entity} records are keyed by login or name: pass key=")
        value = data.get(field)
        if value in (None, ""):
            value = new_id(entity.rstrip("s")[:4] or "rec")
            data[field] = value
        return str(value)
