"""The outage drill: PostgreSQL really stops (pg_ctl) in the middle of a run of logins and writes.

The promise under test: with the database stopped mid-run, every login of a valid user succeeds,
no acknowledged write is lost, and once the database is back the outbox drains and JSON and
PostgreSQL hold the same data; meanwhile the circuit breaker keeps the outage from costing every
request a connection attempt. The drill stops and starts the server of a private stack, so the
session's shared stack, which other tests use, is never touched.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from provisioner.devstack.stack import DevStack
from provisioner.storage import jsonvalues
from provisioner.storage.layer.breaker import BreakerState
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from provisioner.storage.model import StoredRecord
from provisioner.storage.passwords import hash_password
from provisioner.storage.pg import records as pg_records
from tests.datalayer_support import FIXTURE_AEIMS, backfill, copy_root, migrate

pytestmark = pytest.mark.slow

THREADS = 4
RUN_SECONDS = 4.5  # up for the first third, down for the second, back for the last
MAX_ITERATIONS = 2_000  # per thread: the run is bounded by count as well as by time
RETRY_SECONDS = 0.5
CONNECT_TIMEOUT = 1.0
EXTRA_CUSTOMERS = 20  # split between the threads: each updates only its own
DRAIN_WAIT_SECONDS = 10.0

# Valid logins of every kind in the fixture root (customer, operator, admin account).
FIXTURE_LOGINS = [
    ("alice", "fixture-password-1"),
    ("jade", "fixture-operator-password"),
    ("admin", "fixture-admin-password"),
]
# Each of these is one connection attempt that failed (a read that fell back also logs one
# of them, so read_fallback is counted apart).
ATTEMPT_EVENTS = ("breaker_open", "breaker_reopened")


@dataclass
class WorkerLog:
    """What one worker did; written only by its thread, read once every thread has stopped."""

    ops: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, kind)
    failures: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)  # acknowledged: id -> content
    credits: dict[str, int] = field(default_factory=dict)  # last acknowledged per customer


@dataclass
class Drill:
    """One run's record: the workers' logs and when PostgreSQL was down (wall clock)."""

    logs: list[WorkerLog]
    down_from: float
    down_until: float

    def ops_while_down(self, kind: str | None = None) -> int:
        return sum(
            1
            for log in self.logs
            for start, end, op in log.ops
            if start >= self.down_from and end <= self.down_until and kind in (None, op)
        )

    @property
    def window_seconds(self) -> float:
        return self.down_until - self.down_from


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A private stack whose PostgreSQL the drill may stop: never the session's shared one."""
    stack = DevStack(tmp_path_factory.mktemp("drill") / "stack", environ={})
    try:
        stack.up()
        yield stack
    finally:
        stack.purge()


@pytest.fixture
def drill_dsn(drill_stack: DevStack) -> Iterator[str]:
    """A new migrated database on the private server, dropped afterwards."""
    server_dsn = drill_stack.env()["PROVISION_PG_DSN"]
    name = f"drill_{uuid.uuid4().hex[:12]}"
    admin = psycopg.conninfo.make_conninfo(server_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname=name)
    migrate(dsn)
    try:
        yield dsn
    finally:
        drill_stack.start_postgres()  # a failed drill may have left it stopped
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def drill_customer(number: int) -> tuple[dict[str, Any], str]:
    """A customer with a cheap (cost 4) hash, and its password."""
    password = f"drill-password-{number}"
    return (
        {
            "customer_id": f"cust_drill_{number:02d}",
            "username": f"drill{number:02d}",
            "email": f"drill{number:02d}@example.test",
            "password_hash": hash_password(password, 4),
            "site_domain": "alpha.example.test",
            "sites": ["alpha.example.test"],
            "active": True,
            "verified": True,
            "created_at": "2025-02-01 10:00:00",
            "profile": {"display_name": f"Drill {number}", "bio": "", "preferences": []},
            "billing": {"credits": 100, "total_spent": 0, "payment_methods": []},
        },
        password,
    )


def prepared_layer(root: Path, dsn: str, phase: Phase) -> tuple[DataLayer, list[tuple[str, str]]]:
    """The fixture root plus the drill's customers, backfilled, in `phase`; and valid logins."""
    layer = DataLayer(root, dsn, retry_seconds=RETRY_SECONDS, connect_timeout=CONNECT_TIMEOUT)
    logins = list(FIXTURE_LOGINS)
    for number in range(EXTRA_CUSTOMERS):
        customer, password = drill_customer(number)
        layer.save_customer(customer)  # json_only still: the backfill copies it
        logins.append((customer["username"], password))
    backfill(layer)
    layer.set_phase(phase, "outage drill")
    assert layer.phase().phase == phase
    return layer, logins


# ---------------------------------------------------------------------------------- the run
def work(
    layer: DataLayer,
    index: int,
    logins: list[tuple[str, str]],
    owned: list[dict[str, Any]],
    stop: threading.Event,
    log: WorkerLog,
) -> None:
    """Log in, send a message, and top up one of this thread's own customers, until told to stop.

    A write counts as acknowledged only once the call returned without an exception; anything
    raised is a failure, since in the dual-write phases a write never fails for an outage.
    """
    rng = random.Random(index)
    log.credits = {c["customer_id"]: c["billing"]["credits"] for c in owned}
    for iteration in range(MAX_ITERATIONS):
        if stop.is_set():
            return
        login, password = rng.choice(logins)
        started = time.time()
        try:
            result = layer.authenticate(login, password)
            if not result.ok:
                log.failures.append(f"login {login!r} refused: {result.reason}")
        except Exception as exc:  # recorded: none may happen
            log.failures.append(f"login {login!r} raised {type(exc).__name__}: {exc}")
        log.ops.append((started, time.time(), "login"))

        content = f"drill {index}/{iteration} {uuid.uuid4().hex}"
        started = time.time()
        try:
            message_id = layer.save_message(
                {
                    "conversation_id": f"conv_drill_{index}",
                    "sender_type": "customer",
                    "sender_id": owned[0]["customer_id"],
                    "content": content,
                    "content_type": "text",
                }
            )
            log.messages[message_id] = content
        except Exception as exc:
            log.failures.append(f"message {content!r} raised {type(exc).__name__}: {exc}")
        log.ops.append((started, time.time(), "message"))

        customer = owned[iteration % len(owned)]
        customer_id = customer["customer_id"]
        started = time.time()
        try:
            seen = layer.get("customers", customer_id)
            expected = log.credits[customer_id]
            if seen is None or seen["billing"]["credits"] != expected:
                found = None if seen is None else seen["billing"]["credits"]
                log.stale_reads.append(f"{customer_id}: read {found}, last written {expected}")
            credits = expected + 1 + index
            customer["billing"]["credits"] = credits
            layer.save_customer(customer)
            log.credits[customer_id] = credits
        except Exception as exc:
            log.failures.append(f"credits of {customer_id} raised {type(exc).__name__}: {exc}")
        log.ops.append((started, time.time(), "credits"))


def run_drill(layer: DataLayer, stack: DevStack, logins: list[tuple[str, str]]) -> Drill:
    """Run the workers; stop PostgreSQL at a third of the run and start it at two thirds."""
    owned = [
        [layer.get("customers", f"cust_drill_{n:02d}") for n in range(i, EXTRA_CUSTOMERS, THREADS)]
        for i in range(THREADS)
    ]
    assert all(c is not None for group in owned for c in group)
    logs = [WorkerLog() for _ in range(THREADS)]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=work, args=(layer, i, logins, owned[i], stop, logs[i]), name=f"drill-{i}"
        )
        for i in range(THREADS)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    stopped = False
    try:
        stop.wait(max(0.0, began + RUN_SECONDS / 3 - time.monotonic()))
        stopped = stack.stop_postgres()
        assert stopped, "the drill's PostgreSQL was not running"
        down_from = time.time()
        stop.wait(max(0.0, began + 2 * RUN_SECONDS / 3 - time.monotonic()))
        down_until = time.time()
        stack.start_postgres()
        stopped = False
        stop.wait(max(0.0, began + RUN_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        if stopped:
            stack.start_postgres()
    assert not any(t.is_alive() for t in threads), "a worker is stuck"
    return Drill(logs, down_from, down_until)


# ---------------------------------------------------------------------------------- checks
def events_between(
    caplog: pytest.LogCaptureFixture, names: tuple[str, ...], start: float, end: float
) -> list[str]:
    found = []
    for record in caplog.records:
        if record.name != "provisioner.storage" or not start <= record.created <= end:
            continue
        try:
            event = json.loads(record.getMessage()).get("event")
        except (ValueError, AttributeError):
            continue
        if event in names:
            found.append(event)
    return found


def by_key(records: list[StoredRecord]) -> dict[str, dict[str, Any]]:
    return {r.key: r.without_plaintext().data for r in records}


def differences(json_side: dict[str, Any], pg_side: dict[str, Any]) -> list[str]:
    problems = [f"{k}: only in JSON" for k in sorted(json_side.keys() - pg_side.keys())]
    problems += [f"{k}: only in PostgreSQL" for k in sorted(pg_side.keys() - json_side.keys())]
    problems += [
        f"{k}: JSON {json_side[k]!r} != PostgreSQL {pg_side[k]!r}"
        for k in sorted(json_side.keys() & pg_side.keys())
        if not jsonvalues.json_equal(json_side[k], pg_side[k])
    ]
    return problems


@pytest.mark.parametrize(
    "phase", [Phase.DUAL_WRITE_READ_PG, Phase.DUAL_WRITE_READ_JSON], ids=lambda p: p.value
)
def test_postgresql_stopped_mid_run_loses_no_login_and_no_acknowledged_write(
    phase: Phase,
    drill_stack: DevStack,
    drill_dsn: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims")
    layer, logins = prepared_layer(root, drill_dsn, phase)
    caplog.set_level(logging.INFO, logger="provisioner.storage")

    with layer:
        drill = run_drill(layer, drill_stack, logins)

        # The outage was real and was worked through: logins and writes while it was down.
        assert drill.ops_while_down("login") > 0
        assert drill.ops_while_down("message") > 0 and drill.ops_while_down("credits") > 0
        window = (drill.down_from, drill.down_until)
        assert events_between(caplog, ("outbox_added",), *window)

        # Once the database is back, the outbox drains through the layer's own traffic.
        deadline = time.monotonic() + DRAIN_WAIT_SECONDS
        while layer.outbox.depth() and time.monotonic() < deadline:
            layer.save_message({"conversation_id": "conv_drill_after", "content": "after"})
            time.sleep(RETRY_SECONDS / 5)
        assert layer.outbox.depth() == 0

        failures = [f for log in drill.logs for f in log.failures]
        assert failures == []
        stale_reads = [s for log in drill.logs for s in log.stale_reads]
        assert stale_reads == []

        # Every acknowledged write is on both sides, with its acknowledged value.
        json_messages = by_key(layer.json.load("messages"))
        json_customers = by_key(layer.json.load("customers"))
        with psycopg.connect(drill_dsn) as conn:
            pg_messages = by_key(pg_records.list_records(conn, "messages"))
            pg_customers = by_key(pg_records.list_records(conn, "customers"))
        acknowledged = {k: v for log in drill.logs for k, v in log.messages.items()}
        assert len(acknowledged) == sum(len(log.messages) for log in drill.logs)
        for side in (json_messages, pg_messages):
            lost = [
                k
                for k, content in acknowledged.items()
                if side.get(k, {}).get("content") != content
            ]
            assert lost == []
        last_credits = {k: v for log in drill.logs for k, v in log.credits.items()}
        assert len(last_credits) == EXTRA_CUSTOMERS
        for side in (json_customers, pg_customers):
            assert {k: side[k]["billing"]["credits"] for k in last_credits} == last_credits

        # Both sides hold the same records.
        assert differences(json_customers, pg_customers) == []
        assert differences(json_messages, pg_messages) == []

        # The breaker kept the outage cheap: at most about one attempt per retry window.
        attempts = events_between(caplog, ATTEMPT_EVENTS, *window)
        fallbacks = events_between(caplog, ("read_fallback",), *window)
        allowed = math.ceil(drill.window_seconds / RETRY_SECONDS) + 1 + THREADS
        assert len(attempts) <= allowed
        assert len(fallbacks) <= allowed
        assert len(attempts) * 10 <= drill.ops_while_down()

        health = layer.health()
        assert health["degraded"] is False
        assert health["breaker"] == BreakerState.CLOSED.value and health["outbox_depth"] == 0
