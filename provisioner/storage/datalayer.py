"""The AEIMS data layer: one API over the JSON files and PostgreSQL, phase by phase.

What it promises, whatever the phase:
- Reads fall back to JSON whenever PostgreSQL is unavailable while JSON is still written, and
  only then: a record PostgreSQL does not have is "not found", never a silent JSON lookup
  (the PHP layer's fallback on a missing row hid divergence).
- In the dual-write phases JSON is written first, then PostgreSQL in the same call; when the
  PostgreSQL half fails, the change is in the durable outbox before the call returns, and is
  replayed when the database is back. An acknowledged write is never lost nor applied twice.
- Connecting is lazy and guarded by a circuit breaker: during an outage at most one request
  per retry window waits for a connection; the others fall back at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from provisioner.config import Settings, redact_dsn
from provisioner.fsutil import file_lock
from provisioner.storage import pg_queries
from provisioner.storage import pg_records as pg
from provisioner.storage.aeims_json import AeimsJsonStore, normalize_login
from provisioner.storage.breaker import BreakerState, CircuitBreaker
from provisioner.storage.events import emit
from provisioner.storage.jsonfile import JsonFileError
from provisioner.storage.model import ENTITIES, StoredRecord
from provisioner.storage.outbox import Outbox, OutboxEntry
from provisioner.storage.passwords import verify_password
from provisioner.storage.phase import (
    EffectivePhase,
    Phase,
    effective_phase,
    phase_file,
    read_phase,
    write_phase,
)

T = TypeVar("T")

# Failed logins: this many within the window lock the login for the window.
MAX_FAILED_LOGINS = 5
LOCK_WINDOW_SECONDS = 15 * 60
# Verified against for unknown logins, so that they cost as much as known ones.
_DUMMY_HASH = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5Ftv6GKgmZzJUOnQOdK6qLeH8nHJuUO"
_INACTIVE_STATUSES = frozenset({"inactive", "suspended", "banned", "disabled", "deleted"})


class DataUnavailable(RuntimeError):
    """PostgreSQL is needed (pg_only) and unavailable; nothing was written."""


class _PgDown(Exception):
    """Internal: the breaker is open (`attempted` False) or the connection failed."""

    def __init__(self, reason: str, attempted: bool) -> None:
        super().__init__(reason)
        self.attempted = attempted


class _Ticket:
    """One caller's record waiting in a group commit."""

    __slots__ = ("done", "error", "record")

    def __init__(self, record: StoredRecord) -> None:
        self.record = record
        self.done = threading.Event()
        self.error: BaseException | None = None


@dataclass(frozen=True)
class AuthResult:
    """The outcome of a login: who it is, or why not. Never carries a password or hash."""

    ok: bool
    kind: str | None = None  # customer, operator or account
    key: str | None = None
    record: dict[str, Any] | None = None
    reason: str | None = None  # invalid, locked, inactive


_HASH_FIELDS = ("password_hash", "password", "pin_code")


def _public(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _HASH_FIELDS and "password" not in k}


def _now_php() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


_PROCESS_TOKEN = secrets.token_hex(4)
_ID_COUNTER = itertools.count()


def new_id(prefix: str) -> str:
    """An AEIMS-style string id (`msg_…`), unique without coordination: the time, a random
    token drawn once per process, and a counter (cheap on the write hot path)."""
    return f"{prefix}_{time.time_ns() // 1_000_000:x}{_PROCESS_TOKEN}{next(_ID_COUNTER):x}"


class DataLayer:
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
        self._locks_dir = self.data_dir / ".provision" / "locks"
        self.breaker = CircuitBreaker(retry_seconds)
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._phase_path = str(phase_file(self.data_dir))
        self._phase_cache: tuple[tuple[int, int] | None, EffectivePhase] | None = None
        self._batches: dict[str, list[_Ticket]] = {}
        self._batch_leaders: set[str] = set()
        self._batch_lock = threading.Lock()
        self._last_drain_try = 0.0
        self._local = threading.local()

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
            except _PgDown:
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
                        "options": f"-c statement_timeout={round(self.statement_timeout * 1000)}",
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
        """A pooled connection, or _PgDown at once while the breaker is open."""
        if not self.pg_dsn or not self.breaker.allow():
            raise _PgDown("circuit breaker open", attempted=False)
        try:
            with self._get_pool().connection(timeout=self.connect_timeout) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.breaker.failed(str(redact_dsn(error)))
            self._drop_pool()
            raise _PgDown(error, attempted=True) from None
        except BaseException:
            # A query error (constraint, data) says the server is up.
            self._recovered()
            raise
        self._recovered()

    def _recovered(self) -> None:
        if self.breaker.succeeded() and not self.outbox.is_empty():
            self._drain_quietly()

    def _pg_or_json(
        self, from_pg: Callable[[psycopg.Connection[Any]], T], from_json: Callable[[], T]
    ) -> T:
        """Read from PostgreSQL when the phase says so and it is up; else from JSON."""
        phase = self.phase().phase
        if not phase.reads_pg:
            return from_json()
        if phase != Phase.PG_ONLY and not self.outbox.is_empty():
            # PostgreSQL is behind JSON until the outbox drains: JSON is the truth meanwhile.
            self._maybe_drain()
            if not self.outbox.is_empty():
                return from_json()
        try:
            with self._pg() as conn:
                return from_pg(conn)
        except _PgDown as exc:
            if phase == Phase.PG_ONLY:
                raise DataUnavailable(
                    f"PostgreSQL is unavailable and the phase is pg_only ({exc}); "
                    "fix the database, or set USE_DATABASE=false to read the JSON archive"
                ) from None
            if exc.attempted:  # while the breaker stays open, it counts the fallbacks
                emit("read_fallback", logging.WARNING, reason=str(exc))
            return from_json()

    # ------------------------------------------------------------------------ writes
    def _write(
        self, entity: str, records: list[StoredRecord], deleted: list[str] | None = None
    ) -> None:
        """Write records (and deletions) to the stores the phase names; see the module doc."""
        phase = self.phase().phase
        deleted = deleted or []
        if phase == Phase.JSON_ONLY:
            self._write_json(entity, records, deleted)
            return
        if phase.writes_json:
            with self._ordered(entity):
                self._write_json(entity, records, deleted)
                self._write_pg_after_json(entity, records, deleted)
            self._after_outbox_add()
            return
        self._write_pg_only(entity, records, deleted)

    def _write_json(self, entity: str, records: list[StoredRecord], deleted: list[str]) -> None:
        if records:
            self.json.upsert(entity, records)
        for key in deleted:
            self.json.delete(entity, key)

    def _ordered(self, entity: str) -> AbstractContextManager[int]:
        """Writers of one entity, in every process, take turns for the JSON write and the
        PostgreSQL write together, so PostgreSQL receives writes in JSON's order (a slow
        writer can never put an older state over a newer one)."""
        return file_lock(self._locks_dir / f"{entity}.lock")

    def _write_pg_only(self, entity: str, records: list[StoredRecord], deleted: list[str]) -> None:
        try:
            with self._pg() as conn:
                self._pg_apply(conn, records, entity, deleted)
        except _PgDown as exc:
            raise DataUnavailable(
                f"PostgreSQL is unavailable and the phase is pg_only: nothing was written ({exc})"
            ) from None

    def _write_pg_after_json(
        self, entity: str, records: list[StoredRecord], deleted: list[str]
    ) -> None:
        """The PostgreSQL half of a dual write: direct, or into the outbox when that fails or
        when earlier writes are still waiting there."""
        if self.outbox.is_empty():
            try:
                with self._pg() as conn:
                    # JSON's upsert set each record's placement: PostgreSQL keeps it too.
                    self._pg_apply(conn, records, entity, deleted)
                return
            except _PgDown:
                pass
        items = [(entity, r.key, "upsert") for r in records] + [
            (entity, k, "delete") for k in deleted
        ]
        self.outbox.add(items)
        emit("outbox_added", logging.WARNING, entity=entity, count=len(items))
        self._local.added = True

    def _after_outbox_add(self) -> None:
        """Outside the entity lock (a drain takes the outbox lock first), try to drain."""
        if getattr(self._local, "added", False):
            self._local.added = False
            self._maybe_drain()

    def _write_grouped(self, record: StoredRecord) -> None:
        """Write one record, sharing the file rewrite and the round trip with concurrent writers.

        Group commit: the first writer of an entity becomes the leader and writes whatever has
        queued meanwhile in one batch; the others wait for their batch to be durable. Each
        call still returns only once its record is written (or in the outbox).
        """
        ticket = _Ticket(record)
        entity = record.entity
        with self._batch_lock:
            self._batches.setdefault(entity, []).append(ticket)
            leading = entity not in self._batch_leaders
            if leading:
                self._batch_leaders.add(entity)
        if leading:
            self._lead_batches(entity)
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error

    def _lead_batches(self, entity: str) -> None:
        while True:
            with self._batch_lock:
                batch = self._batches.pop(entity, [])
                if not batch:
                    self._batch_leaders.discard(entity)
                    return
            latest: dict[str, StoredRecord] = {}
            for ticket in batch:  # a key saved twice in one batch: the later state wins
                latest.pop(ticket.record.key, None)
                latest[ticket.record.key] = ticket.record
            try:
                self._write(entity, list(latest.values()))
            except BaseException:
                if len(batch) == 1:
                    batch[0].error = sys.exc_info()[1]
                else:  # find whose record failed: write them one by one
                    for ticket in batch:
                        try:
                            self._write(entity, [ticket.record])
                        except BaseException as exc:
                            ticket.error = exc
            for ticket in batch:
                ticket.done.set()

    @staticmethod
    def _pg_apply(
        conn: psycopg.Connection[Any], records: list[StoredRecord], entity: str, deleted: list[str]
    ) -> None:
        if not deleted:
            pg.upsert_records(conn, records)  # one atomic statement for one entity
            return
        with conn.transaction():
            if records:
                pg.upsert_records(conn, records)
            for key in deleted:
                pg.delete_record(conn, entity, key)

    # ------------------------------------------------------------------------ outbox
    def _replay(self, entries: list[OutboxEntry]) -> None:
        """Make PostgreSQL hold JSON's current state for each entry's record."""
        upserts: dict[tuple[str, str], StoredRecord] = {}
        deletes: list[tuple[str, str]] = []
        for entry in entries:
            current = self.json.get(entry.entity, entry.key)
            if current is None:
                deletes.append((entry.entity, entry.key))
                upserts.pop((entry.entity, entry.key), None)
            else:
                upserts[(entry.entity, entry.key)] = current
        with self._pg() as conn, conn.transaction():
            if upserts:
                pg.upsert_records(conn, list(upserts.values()))
            for entity, key in deletes:
                pg.delete_record(conn, entity, key)

    def reconcile(self) -> int:
        """Replay the outbox now; the number of entries applied (DataUnavailable when down)."""
        try:
            return self._drain()
        except _PgDown as exc:
            raise DataUnavailable(
                f"PostgreSQL is unavailable ({exc}); the outbox is kept"
            ) from None

    def _drain(self) -> int:
        if self.outbox.is_empty() or getattr(self._local, "draining", False):
            return 0
        self._local.draining = True  # the replay's own connection must not start another drain
        try:
            applied = self.outbox.drain(self._replay)
        finally:
            self._local.draining = False
        emit("outbox_drained", applied=applied, depth=self.outbox.depth())
        return applied

    def _drain_quietly(self) -> None:
        try:
            self._drain()
        except _PgDown as exc:
            emit("outbox_drain_failed", logging.WARNING, error=str(exc), depth=self.outbox.depth())

    def _maybe_drain(self) -> None:
        """Try to drain, at most a few times per retry window (writes and reads call this)."""
        now = time.monotonic()
        if now - self._last_drain_try < self.breaker.retry_seconds / 5:
            return
        self._last_drain_try = now
        self._drain_quietly()  # the breaker decides whether this may try the database

    # ------------------------------------------------------------------------ generic API
    def get(self, entity: str, key: str) -> dict[str, Any] | None:
        record = self._pg_or_json(
            lambda conn: pg.get_record(conn, entity, key), lambda: self.json.get(entity, key)
        )
        return None if record is None else record.data

    def list(self, entity: str) -> list[dict[str, Any]]:
        records = self._pg_or_json(
            lambda conn: pg.list_records(conn, entity), lambda: self.json.load(entity)
        )
        return [r.data for r in records]

    def find_by_login(self, entity: str, login: str | int) -> dict[str, Any] | None:
        """By THE login rule (aeims_json.normalize_login), the same on both sides."""
        record = self._find_record(entity, login)
        return None if record is None else record.data

    def _find_record(self, entity: str, login: str | int) -> StoredRecord | None:
        return self._pg_or_json(
            lambda conn: pg.find_by_login(conn, entity, login),
            lambda: self.json.find_by_login(entity, login),
        )

    def save(self, entity: str, data: dict[str, Any], key: str | None = None) -> str:
        """Insert or replace one record; returns its key (generated when the record has none)."""
        key = key or self._key_of(entity, data)
        record = StoredRecord(entity, key, dict(data))
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

    def _where(
        self,
        entity: str,
        column: str,
        value: Any,
        match: Callable[[dict[str, Any]], bool],
        op: str = "=",
    ) -> list[dict[str, Any]]:
        records = self._pg_or_json(
            lambda conn: pg_queries.records_where(conn, entity, column, value, op),
            lambda: [r for r in self.json.load(entity) if match(r.data)],
        )
        return [r.data for r in records]

    # ------------------------------------------------------------------------ customers
    def get_customer(self, login: str) -> dict[str, Any] | None:
        """By username or email (THE rule), or by customer id."""
        return self.find_by_login("customers", login) or self.get("customers", str(login))

    def save_customer(self, data: dict[str, Any]) -> str:
        return self.save("customers", data)

    def search_customers(self, text: str = "", site: str | None = None) -> list[dict[str, Any]]:
        """Customers whose username or email contains `text` (any case), optionally on `site`."""
        needle = text.strip().lower()

        def matches(data: dict[str, Any]) -> bool:
            hay = (str(data.get("username", "")).lower(), str(data.get("email", "")).lower())
            return not needle or any(needle in h for h in hay)

        records = self._pg_or_json(
            lambda conn: pg_queries.search_logins(conn, "customers", needle),
            lambda: [r for r in self.json.load("customers") if matches(r.data)],
        )
        found = [r.data for r in records]
        if site:
            found = [
                d for d in found if site in (d.get("sites") or []) or d.get("site_domain") == site
            ]
        return found

    def customer_sites(self, customer_id: str) -> list[str]:
        data = self.get("customers", customer_id)
        return list((data or {}).get("sites") or [])

    def add_customer_site(self, customer_id: str, domain: str) -> None:
        data = self._require("customers", customer_id)
        sites = list(data.get("sites") or [])
        if domain not in sites:
            data["sites"] = [*sites, domain]
            self.save("customers", data, customer_id)

    def remove_customer_site(self, customer_id: str, domain: str) -> None:
        data = self._require("customers", customer_id)
        sites = list(data.get("sites") or [])
        if domain in sites:
            data["sites"] = [s for s in sites if s != domain]
            self.save("customers", data, customer_id)

    def _require(self, entity: str, key: str) -> dict[str, Any]:
        data = self.get(entity, key)
        if data is None:
            raise KeyError(f"no {entity} record {key!r}")
        return data

    # ------------------------------------------------------------------------ operators
    def get_operator(self, login: str | int) -> dict[str, Any] | None:
        """By username, email or id (THE rule)."""
        return self.find_by_login("operators", login)

    def get_operator_by_id(self, operator_id: str) -> dict[str, Any] | None:
        return self.get("operators", operator_id)

    def save_operator(self, data: dict[str, Any]) -> str:
        return self.save("operators", data)

    def search_operators(self, text: str = "", site: str | None = None) -> list[dict[str, Any]]:
        needle = text.strip().lower()
        found = []
        for data in self.list("operators"):
            hay = (
                str(data.get("username", "")),
                str(data.get("email", "")),
                str(data.get("name", "")),
            )
            if needle and not any(needle in h.lower() for h in hay):
                continue
            if site and site not in (data.get("domains") or {}):
                continue
            found.append(data)
        return found

    def set_operator_site(
        self, operator_id: str, domain: str, role: str = "operator", active: bool = True
    ) -> None:
        """Let an operator serve a site (their `domains` map; operator_sites in PostgreSQL)."""
        data = self._require("operators", operator_id)
        domains = dict(data.get("domains") or {})
        entry = dict(domains.get(domain) or {})
        entry.update({"role": role, "active": active})
        entry.setdefault("joined", datetime.now(UTC).strftime("%Y-%m-%d"))
        if domains.get(domain) != entry:
            domains[domain] = entry
            data["domains"] = domains
            self.save("operators", data, operator_id)

    def remove_operator_site(self, operator_id: str, domain: str) -> None:
        data = self._require("operators", operator_id)
        domains = dict(data.get("domains") or {})
        if domain in domains:
            del domains[domain]
            data["domains"] = domains
            self.save("operators", data, operator_id)

    # ------------------------------------------------------------------------ sites
    def get_site(self, site_id_or_domain: str) -> dict[str, Any] | None:
        found = self.get("sites", site_id_or_domain)
        if found is None:
            found = self.get("sites", site_id_or_domain.replace(".", "_"))
        return found

    def list_sites(self) -> list[dict[str, Any]]:
        return self.list("sites")

    def save_site(self, data: dict[str, Any]) -> str:
        return self.save("sites", data)

    def delete_site(self, site_id: str) -> bool:
        return self.delete("sites", site_id)

    # ------------------------------------------------------------------------ messages
    def save_message(self, data: dict[str, Any]) -> str:
        data.setdefault("sent_at", _now_php())
        return self.save("messages", data)

    def get_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        return self._where(
            "messages",
            "conversation_id",
            conversation_id,
            lambda d: d.get("conversation_id") == conversation_id,
        )

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        return self.get("conversations", conversation_id)

    def save_conversation(self, data: dict[str, Any]) -> str:
        return self.save("conversations", data)

    def list_conversations(self, participant_id: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.list("conversations")
            if participant_id in (c.get("customer_id"), c.get("operator_id"))
        ]

    # ------------------------------------------------------------------------ chat rooms
    def get_chat_rooms(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        rooms = self.list("chat_rooms")
        return [r for r in rooms if operator_id is None or r.get("operator_id") == operator_id]

    def save_chat_room(self, data: dict[str, Any]) -> str:
        return self.save("chat_rooms", data)

    # ------------------------------------------------------------------------ favorites
    def get_favorites(self, customer_id: str) -> list[str]:
        data = self.get("favorites", customer_id)
        ids = (data or {}).get("operator_ids") or []
        return list(ids.values()) if isinstance(ids, dict) else list(ids)

    def add_favorite(self, customer_id: str, operator_id: str) -> None:
        current = self.get_favorites(customer_id)
        if operator_id not in current:
            record = {"customer_id": customer_id, "operator_ids": [*current, operator_id]}
            self.save("favorites", record, customer_id)

    def remove_favorite(self, customer_id: str, operator_id: str) -> None:
        current = self.get_favorites(customer_id)
        if operator_id in current:
            remaining = [o for o in current if o != operator_id]
            self.save(
                "favorites", {"customer_id": customer_id, "operator_ids": remaining}, customer_id
            )

    # ------------------------------------------------------------------------ content
    def get_content_items(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        items = self.list("content_items")
        return [i for i in items if operator_id is None or i.get("operator_id") == operator_id]

    def save_content_item(self, data: dict[str, Any]) -> str:
        return self.save("content_items", data)

    def purchase_content(self, customer_id: str, content_id: str) -> dict[str, Any]:
        """Record a purchase and its transaction; the customer's credits pay for it."""
        item = self._require("content_items", content_id)
        customer = self._require("customers", customer_id)
        price = item.get("price") or 0
        billing = dict(customer.get("billing") or {})
        credits = billing.get("credits") or 0
        if credits < price:
            raise ValueError(
                f"customer {customer_id} has {credits} credits; {content_id} costs {price}"
            )
        billing["credits"] = credits - price
        billing["total_spent"] = (billing.get("total_spent") or 0) + price
        customer["billing"] = billing
        purchase = {
            "purchase_id": new_id("purchase"),
            "customer_id": customer_id,
            "content_id": content_id,
            "price": price,
            "purchased_at": _now_php(),
        }
        self.save("content_purchases", purchase)
        self.record_transaction(
            {
                "customer_id": customer_id,
                "operator_id": item.get("operator_id"),
                "transaction_type": "content_purchase",
                "amount": -price,
                "description": f"purchase {purchase['purchase_id']}",
            }
        )
        self.save("customers", customer, customer_id)
        return purchase

    # ------------------------------------------------------------------------ notifications
    def get_notifications(self, user_id: str, unread_only: bool = False) -> list[dict[str, Any]]:
        found = self._where(
            "notifications", "user_id", user_id, lambda d: d.get("user_id") == user_id
        )
        return [n for n in found if not unread_only or not n.get("read")]

    def create_notification(self, data: dict[str, Any]) -> str:
        data.setdefault("read", False)
        data.setdefault("created_at", _now_php())
        return self.save("notifications", data)

    def mark_notification_read(self, notification_id: str) -> None:
        data = self._require("notifications", notification_id)
        if not data.get("read"):
            data["read"] = True
            self.save("notifications", data, notification_id)

    # ------------------------------------------------------------------------ transactions
    def get_transactions(self, user_id: str) -> list[dict[str, Any]]:
        """Transactions where the user is the paying customer or the earning operator."""
        found: dict[str, dict[str, Any]] = {}
        for column in ("customer_id", "operator_id"):
            for data in self._where(
                "transactions", column, user_id, lambda d, c=column: d.get(c) == user_id
            ):
                found[str(data.get("transaction_id"))] = data
        return list(found.values())

    def record_transaction(self, data: dict[str, Any]) -> str:
        data.setdefault("created_at", _now_php())
        return self.save("transactions", data)

    # ------------------------------------------------------------------------ operator requests
    def get_operator_requests(self, operator_id: str | None = None) -> list[dict[str, Any]]:
        items = self.list("operator_requests")
        return [r for r in items if operator_id is None or r.get("operator_id") == operator_id]

    def create_operator_request(self, data: dict[str, Any]) -> str:
        data.setdefault("status", "pending")
        data.setdefault("created_at", _now_php())
        return self.save("operator_requests", data)

    # ------------------------------------------------------------------------ logins
    def find_login(self, login: str) -> tuple[str, StoredRecord] | None:
        """The customer, operator or admin account a login names (in that order)."""
        for kind, entity in (
            ("customer", "customers"),
            ("operator", "operators"),
            ("account", "accounts"),
        ):
            record = self._find_record(entity, login)
            if record is not None:
                return kind, record
        return None

    def authenticate(self, login: str, password: str) -> AuthResult:
        """Check a login's password; failed attempts are counted in account_locks.

        Works in every phase and during a PostgreSQL outage (reads fall back to JSON, the
        attempt counter is written like any other record).
        """
        lock_key = normalize_login(login)
        if not lock_key:
            return AuthResult(False, reason="invalid")
        now = int(time.time())
        lock = self.get("account_locks", lock_key)
        if lock and lock.get("locked_at") and now - int(lock["locked_at"]) < LOCK_WINDOW_SECONDS:
            return AuthResult(False, reason="locked")
        found = self.find_login(login)
        if found is None:
            verify_password(password, _DUMMY_HASH)  # same cost as a real check
            self._count_failure(lock_key, lock, now)
            return AuthResult(False, reason="invalid")
        kind, record = found
        stored_hash = record.data.get("password_hash") or record.data.get("password")
        if not verify_password(password, stored_hash):
            self._count_failure(lock_key, lock, now)
            return AuthResult(False, reason="invalid")
        if (
            record.data.get("active") is False
            or str(record.data.get("status", "")).lower() in _INACTIVE_STATUSES
        ):
            return AuthResult(False, kind, record.key, reason="inactive")
        if lock:
            self._write("account_locks", [], deleted=[lock_key])
        return AuthResult(True, kind, record.key, _public(record.data))

    def _count_failure(self, lock_key: str, lock: dict[str, Any] | None, now: int) -> None:
        if not lock or now - int(lock.get("first_attempt") or now) >= LOCK_WINDOW_SECONDS:
            lock = {"attempts": 0, "first_attempt": now, "locked_at": None, "last_attempt": now}
        lock = dict(lock)
        lock["attempts"] = int(lock.get("attempts") or 0) + 1
        lock["last_attempt"] = now
        if lock["attempts"] >= MAX_FAILED_LOGINS:
            lock["locked_at"] = now
            emit("login_locked", logging.WARNING, login=lock_key, attempts=lock["attempts"])
        self._write("account_locks", [StoredRecord("account_locks", lock_key, lock)])

    # ------------------------------------------------------------------------ health
    def _json_file_errors(self) -> list[str]:
        """Every AEIMS file that cannot be read (malformed, unreadable), named with its position."""
        errors = []
        for entity in ENTITIES:
            try:
                self.json.load(entity)
            except (JsonFileError, OSError) as exc:
                errors.append(str(exc))
        return errors

    def health(self) -> dict[str, Any]:
        """Phase, reachability, breaker and outbox: what monitoring needs; `degraded` says alert."""
        effective = self.phase()
        reachable: bool | None = None
        error = None
        if self.pg_dsn:
            try:
                with psycopg.connect(self.pg_dsn, connect_timeout=self._connect_seconds) as conn:
                    conn.execute("SELECT 1")
                reachable = True
                self.breaker.succeeded()
            except psycopg.OperationalError as exc:
                reachable = False
                error = redact_dsn(
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
                )
        depth = self.outbox.depth()
        file_errors = self._json_file_errors() if effective.phase.writes_json else []
        uses_pg = effective.phase.writes_pg or effective.phase.reads_pg
        degraded = bool(
            (uses_pg and reachable is False)
            or depth > 0
            or self.breaker.state != BreakerState.CLOSED
            or file_errors
        )
        return {
            "phase": effective.phase.value,
            "persisted_phase": effective.persisted.value,
            "override": effective.override,
            "database": {
                "configured": bool(self.pg_dsn),
                "dsn": redact_dsn(self.pg_dsn) if self.pg_dsn else None,
                "reachable": reachable,
                "error": error,
            },
            "breaker": self.breaker.state.value,
            "outbox_depth": depth,
            "json_file_errors": file_errors,
            "degraded": degraded,
        }
