"""The AEIMS data layer: one API over the JSON files and PostgreSQL, phase by phase.

What it promises, whatever the phase:
- Reads fall back to JSON whenever PostgreSQL is unavailable while JSON is still written, and
  only then: a record PostgreSQL does not have is "not found", never a silent JSON lookup
  (the PHP layer's fallback on a missing row hid divergence). A record PostgreSQL is behind on
  (a write waiting in the outbox, an unfinished write's intent, a quarantined record) is read
  from JSON.
- A value either store cannot hold is refused before anything is written (values.py).
- In the dual-write phases JSON is written first, then PostgreSQL in the same call; the write's
  intents are durable before the JSON write, and when the PostgreSQL half fails for any reason
  they are in the durable outbox before the call returns, replayed when the database takes
  them, or quarantined when it refuses them for good (writes.py, replay.py). An acknowledged
  write is never lost nor applied twice.
- Connecting is lazy and guarded by a circuit breaker: during an outage at most one request
  per retry window waits for a connection; the others fall back at once.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from provisioner.config import Settings, redact_dsn
from provisioner.fsutil import file_lock
from provisioner.storage import auth, pg_queries
from provisioner.storage import pg_records as pg
from provisioner.storage.aeims_json import AeimsJsonStore
from provisioner.storage.auth import AuthResult
from provisioner.storage.breaker import CircuitBreaker
from provisioner.storage.errors import DataUnavailable, PgDown
from provisioner.storage.events import emit
from provisioner.storage.health import health
from provisioner.storage.intents import IntentLog
from provisioner.storage.model import StoredRecord
from provisioner.storage.outbox import Outbox
from provisioner.storage.phase import (
    EffectivePhase,
    Phase,
    effective_phase,
    phase_file,
    read_phase,
    write_phase,
)
from provisioner.storage.quarantine import Quarantine
from provisioner.storage.replay import Replays
from provisioner.storage.values import check_record
from provisioner.storage.writes import WritePath

T = TypeVar("T")
__all__ = ["AuthResult", "DataLayer", "DataUnavailable"]


def _now_php() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


_PROCESS_TOKEN = secrets.token_hex(4)
_ID_COUNTER = itertools.count()


def new_id(prefix: str) -> str:
    """An AEIMS-style string id (`msg_…`), unique without coordination: the time, a random
    token drawn once per process, and a counter (cheap on the write hot path)."""
    return f"{prefix}_{time.time_ns() // 1_000_000:x}{_PROCESS_TOKEN}{next(_ID_COUNTER):x}"


class DataLayer(WritePath, Replays):
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
        self._batches: dict[str, list[Any]] = {}  # entity -> writes.WritePath tickets
        self._batch_leaders: set[str] = set()
        self._batch_lock = threading.Lock()
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
        """Writers of one entity, in every process, take turns for the JSON write and the
        PostgreSQL write together, so PostgreSQL receives writes in JSON's order (a slow
        writer can never put an older state over a newer one)."""
        return file_lock(self._locks_dir / f"{entity}.lock", timeout=timeout)

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
            lambda conn: pg.get_record(conn, entity, key),
            lambda: self.json.get(entity, key),
        )
        return None if record is None else record.data

    def list(self, entity: str) -> list[dict[str, Any]]:
        records = self._pg_or_json(
            (entity,),
            None,
            lambda conn: pg.list_records(conn, entity),
            lambda: self.json.load(entity),
        )
        return [r.data for r in records]

    def find_by_login(self, entity: str, login: str | int) -> dict[str, Any] | None:
        """A lookup by username, email or login ignoring ASCII case (aeims_json.normalize_login,
        the same on both sides). Logins do not use it: find_login applies the login rule."""
        record = self._find_record(entity, login)
        return None if record is None else record.data

    def _find_record(self, entity: str, login: str | int) -> StoredRecord | None:
        return self._pg_or_json(
            (entity,),
            None,
            lambda conn: pg.find_by_login(conn, entity, login),
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

    def _where(
        self,
        entity: str,
        column: str,
        value: Any,
        match: Callable[[dict[str, Any]], bool],
        op: str = "=",
    ) -> list[dict[str, Any]]:
        records = self._pg_or_json(
            (entity,),
            None,
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
            ("customers",),
            None,
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
        with self._record_turn("operators", operator_id):
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
        with self._record_turn("operators", operator_id):
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
    def find_login(self, login: str | int) -> tuple[str, StoredRecord] | None:
        """The customer, operator or admin account `login` names, by the PHP application's
        rule (auth.py); auth.AmbiguousLogin when it could name several."""
        return auth.find_login(self, login)

    def _login_candidates(self, login: str | int) -> auth.LoginCandidates:
        """What `login` could name in the three login files, in one round trip on PostgreSQL."""
        return self._pg_or_json(
            auth.LOGIN_ENTITIES,
            None,
            lambda conn: auth.pg_candidates(conn, login),
            lambda: auth.json_candidates(self, login),
        )

    def authenticate(self, login: str | int, password: str) -> AuthResult:
        """Check a login's password; failed attempts are counted in account_locks (auth.py).

        Works in every phase and during a PostgreSQL outage (reads fall back to JSON, the
        attempt counter is written like any other record), and with one login file unreadable
        (the other kinds of account still log in).
        """
        return auth.authenticate(self, login, password)

    # ------------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """Phase, reachability, breaker, outbox, intents, quarantine, files (health.py)."""
        return health(self)
