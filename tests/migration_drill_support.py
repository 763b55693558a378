"""The moving parts of the zero-downtime migration drill (tests/test_migration_drill.py).

- `LayerWorker`: a process of the data layer logging in and writing (a message, a credits top-up
  of one of its own customers) until told to stop; every acknowledged write is appended to its
  log as one JSON line once the call returned, so the drill can check it at any moment.
- `PhpWriter`: real php-cli writing the JSON files the way the AEIMS application does (the
  SecurityManager protocol of tests/php/security_manager.php: a read under LOCK_SH, a separate
  write in place under LOCK_EX), continuously, pausable: in pg_only nobody may write the files.
- `Migration`: the `provision migrate` commands as the operator runs them, as subprocesses, and
  the sync service (`provision migrate sync`) as a long-running one.
- What each side holds at the end, and which acknowledged writes it lacks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from provisioner.migration.sync import sync_status
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.passwords import hash_password
from provisioner.storage.pg import records as pg_records

TESTS = Path(__file__).resolve().parent
PROVISION = str(Path(sys.executable).parent / "provision")
WORKER_RETRY_SECONDS = 0.5
WORKER_CONNECT_TIMEOUT = 1.0
OWN_CUSTOMERS = 2  # per layer worker, and for the PHP writer
SPAWN = multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------ customers
def drill_customer(owner: str, number: int, credits: int = 100) -> tuple[dict[str, Any], str]:
    """A customer owned by one writer (cheap cost-4 hash), and its password."""
    password = f"drill-{owner}-{number}"
    username = f"drill_{owner}_{number}"
    return (
        {
            "customer_id": f"cust_{owner}_{number}",
            "username": username,
            "email": f"{username}@example.test",
            "password_hash": hash_password(password, 4),
            "site_domain": "alpha.example.test",
            "active": True,
            "verified": True,
            "created_at": "2025-02-01 10:00:00",
            "billing": {"credits": credits, "total_spent": 0},
        },
        password,
    )


def add_owned_customers(root: Path, owners: list[str]) -> list[tuple[str, str]]:
    """Each owner's customers, written in json_only before the drill; their logins."""
    logins = []
    with DataLayer(root) as layer:
        for owner in owners:
            for number in range(OWN_CUSTOMERS):
                customer, password = drill_customer(owner, number)
                layer.save_customer(customer)
                logins.append((customer["username"], password))
    return logins


# ------------------------------------------------------------------------------ layer workers
@dataclass(frozen=True)
class WorkerPlan:
    root: str
    dsn: str
    name: str
    logins: list[tuple[str, str]]
    log_path: str
    stop_path: str
    pause_seconds: float = 0.03


def _ack(log: Any, **entry: Any) -> None:
    log.write(json.dumps({**entry, "t": time.time()}) + "\n")
    log.flush()


def run_layer_worker(plan: WorkerPlan) -> None:
    """Log in, send a message, top up an own customer, until the stop file exists.

    A write is acknowledged (logged) only once the call returned without an exception; an
    exception or a refused valid login is logged as a failure. Each iteration also logs the
    phase it ran in, so the drill can tell that work went on in every phase.
    """
    rng = random.Random(plan.name)
    owned = [f"cust_{plan.name}_{n}" for n in range(OWN_CUSTOMERS)]
    stop = Path(plan.stop_path)
    with (
        open(plan.log_path, "a", encoding="utf-8") as log,
        DataLayer(
            Path(plan.root),
            plan.dsn,
            retry_seconds=WORKER_RETRY_SECONDS,
            connect_timeout=WORKER_CONNECT_TIMEOUT,
        ) as layer,
    ):
        _ack(log, kind="started", pid=os.getpid())
        iteration = 0
        while not stop.exists():
            iteration += 1
            try:
                phase = layer.phase().phase.value
            except Exception as exc:
                _ack(log, kind="failure", what=f"phase unreadable: {type(exc).__name__}: {exc}")
                phase = "unknown"
            login, password = rng.choice(plan.logins)
            try:
                result = layer.authenticate(login, password)
                if result.ok:
                    _ack(log, kind="login", phase=phase)
                else:
                    _ack(log, kind="failure", phase=phase, what=f"login {login!r}: {result.reason}")
            except Exception as exc:
                _ack(log, kind="failure", phase=phase,
                     what=f"login {login!r} raised {type(exc).__name__}: {exc}")  # fmt: skip

            content = f"{plan.name} {iteration} {uuid.uuid4().hex[:8]}"
            try:
                message_id = layer.save_message(
                    {
                        "conversation_id": f"conv_{plan.name}",
                        "sender_type": "customer",
                        "sender_id": owned[0],
                        "content": content,
                        "content_type": "text",
                    }
                )
                _ack(log, kind="message", id=message_id, content=content, phase=phase)
            except Exception as exc:
                _ack(log, kind="failure", phase=phase,
                     what=f"message raised {type(exc).__name__}: {exc}")  # fmt: skip

            key = owned[iteration % len(owned)]
            try:
                record = layer.get("customers", key)
                if record is None:
                    _ack(log, kind="failure", phase=phase, what=f"{key} not found")
                else:
                    # Credits only grow, so "at least the last acknowledged" is checkable
                    # while the workers still run.
                    credits = int(record["billing"]["credits"]) + 1
                    record["billing"] = {**record["billing"], "credits": credits}
                    layer.save_customer(record)
                    _ack(log, kind="credits", id=key, credits=credits, phase=phase)
            except Exception as exc:
                _ack(log, kind="failure", phase=phase,
                     what=f"credits of {key} raised {type(exc).__name__}: {exc}")  # fmt: skip
            time.sleep(plan.pause_seconds)
        _ack(log, kind="stopped", iterations=iteration)


class LayerWorkers:
    """Several processes of the data layer (spawned: nothing inherited from the test)."""

    def __init__(self, root: Path, dsn: str, names: list[str], logins: list[tuple[str, str]],
                 workdir: Path) -> None:  # fmt: skip
        self.stop_path = workdir / "workers.stop"
        stop = str(self.stop_path)
        self.plans = [
            WorkerPlan(str(root), dsn, name, logins, str(workdir / f"{name}.jsonl"), stop)
            for name in names
        ]
        self.procs: list[Any] = []

    def start(self) -> None:
        self.stop_path.unlink(missing_ok=True)
        for plan in self.plans:
            proc = SPAWN.Process(target=run_layer_worker, args=(plan,), name=plan.name)
            proc.start()
            self.procs.append(proc)
        deadline = time.monotonic() + 60
        while not all(any(e["kind"] == "started" for e in self.entries(p)) for p in self.plans):
            assert time.monotonic() < deadline, "a layer worker never started"
            assert all(p.is_alive() for p in self.procs), "a layer worker died at start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.stop_path.touch()
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    @staticmethod
    def entries(plan: WorkerPlan) -> list[dict[str, Any]]:
        return read_json_lines(Path(plan.log_path))

    def all_entries(self) -> list[dict[str, Any]]:
        return [e for plan in self.plans for e in self.entries(plan)]


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Complete lines only (a line being written is left for the next read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


# ------------------------------------------------------------------------------ the PHP writer
# tests/php/drill_writer.php: one write per turn (the three writes of tests/php/writes.php, as
# the PHP application makes them under SecurityManager's locks) until told to stop, pausing on
# request between two writes.
DRILL_WRITER = TESTS / "php" / "drill_writer.php"


class PhpWriter:
    """The PHP application writing the JSON files beside the layer, as a real php-cli process."""

    def __init__(self, root: Path, name: str, workdir: Path, interval: float = 0.1) -> None:
        php = shutil.which("php")
        assert php is not None, "php-cli is not installed (scripts/bootstrap.sh installs it)"
        self.control = workdir / f"{name}-control"
        self.control.mkdir()
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        interval_us = str(round(interval * 1_000_000))
        self.argv = [php, str(DRILL_WRITER), str(root), name, interval_us, str(self.control)]
        self.proc: subprocess.Popen[bytes] | None = None
        self._generation = 0

    def start(self) -> None:
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=err)

    def pause(self, timeout: float = 30.0) -> float:
        """Stop writing; returns once no write is in flight (wall clock of that moment)."""
        self._generation += 1
        (self.control / "pause").write_text(str(self._generation))
        deadline = time.monotonic() + timeout
        while True:
            try:
                if (self.control / "paused").read_text() == str(self._generation):
                    return time.time()
            except FileNotFoundError:
                pass
            assert self.running(), f"the PHP writer died: {self.err_path.read_text()}"
            assert time.monotonic() < deadline, "the PHP writer never paused"
            time.sleep(0.02)

    def resume(self) -> None:
        (self.control / "pause").unlink(missing_ok=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        (self.control / "stop").touch()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc is None or self.proc.returncode == 0, self.err_path.read_text()

    def acks(self) -> list[dict[str, Any]]:
        return read_json_lines(self.out_path)


# ------------------------------------------------------------------------------ the operator
@dataclass
class Step:
    """One command the drill ran, and what came of it."""

    argv: list[str]
    rc: int
    output: Any
    stderr: str
    seconds: float


@dataclass
class Migration:
    """`provision migrate ...` as an operator runs it, against one installation."""

    root: Path
    dsn: str
    state_dir: Path
    history: list[Step] = field(default_factory=list)
    sync_proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
        env |= {
            "PROVISION_DATA_DIR": str(self.root),
            "PROVISION_PG_DSN": self.dsn,
            "PROVISION_STATE_DIR": str(self.state_dir),
        }
        return env

    def run(self, *args: str, timeout: float = 180) -> Step:
        argv = [PROVISION, "migrate", *args, "--json"]
        began = time.monotonic()
        done = subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        try:
            output: Any = json.loads(done.stdout)
        except ValueError:
            output = done.stdout
        step = Step(argv[1:], done.returncode, output, done.stderr, time.monotonic() - began)
        self.history.append(step)
        return step

    def stage(self) -> str:
        status = self.run("status")
        assert status.rc == 0, describe(status)
        return status.output["stage"]

    # -- the sync service
    def start_sync(self) -> None:
        log = self.state_dir.parent / "sync.log"
        with open(log, "ab") as out:
            self.sync_proc = subprocess.Popen(
                [PROVISION, "migrate", "sync", "--json"],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not (sync_status(self.root).get("running") and
                   sync_status(self.root).get("pid") == self.sync_proc.pid):  # fmt: skip
            assert self.sync_proc.poll() is None, f"the sync exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the sync never started"
            time.sleep(0.05)

    def stop_sync(self) -> None:
        if self.sync_proc is None:
            return
        self.sync_proc.send_signal(signal.SIGTERM)
        try:
            self.sync_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.sync_proc.kill()
            self.sync_proc.wait()
        code, self.sync_proc = self.sync_proc.returncode, None
        assert code == 0, f"the sync exited {code}"

    def sync_caught_up(self, since: float, timeout: float = 30.0) -> None:
        """Wait for a clean sync pass (every entity, nothing deferred, failed or left over)
        that began after `since` (wall clock): every write made to the files before `since`
        is in PostgreSQL."""
        assert self.sync_proc is not None and self.sync_proc.poll() is None, "the sync died"
        deadline = time.monotonic() + timeout
        while True:
            status = sync_status(self.root)
            clean = status.get("last_clean_pass") or {}
            if float(clean.get("began_at") or 0) > since:
                return
            assert self.sync_proc.poll() is None, "the sync died"
            assert time.monotonic() < deadline, f"the sync did not catch up: {status}"
            time.sleep(0.05)


def describe(step: Step) -> str:
    """A failed command as the drill reports it: the command, its message, its stderr tail."""
    out = step.output
    msg = out.get("msg") if isinstance(out, dict) else str(out)[-1500:]
    failed = []
    if isinstance(out, dict):
        failed = [
            f"{s.get('name')}: {s.get('msg')}" for s in out.get("steps", []) if s.get("failed")
        ]
    command = f"`provision {' '.join(step.argv)}`"
    return f"{command} exited {step.rc}: {msg} {failed} {step.stderr[-1500:]}"


# ------------------------------------------------------------------------------ what each side has
def json_side(root: Path) -> dict[str, dict[str, Any]]:
    store = AeimsJsonStore(root)
    return {
        entity: {r.key: r.data for r in store.load(entity)} for entity in ("customers", "messages")
    }


def pg_side(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        return {
            entity: {r.key: r.data for r in pg_records.list_records(conn, entity)}
            for entity in ("customers", "messages")
        }


def missing_writes(side: dict[str, dict[str, Any]], acks: list[dict[str, Any]]) -> list[str]:
    """Acknowledged writes `side` lacks: a message or new customer absent or changed, or a
    customer whose credits are below the last acknowledged top-up (credits only grow)."""
    lost = []
    highest: dict[str, int] = {}
    for ack in acks:
        kind, key = ack.get("kind"), ack.get("id")
        if kind == "message":
            found = side["messages"].get(key)
            if found is None or found.get("content") != ack["content"]:
                have = None if found is None else found.get("content")
                lost.append(f"message {key} ({ack['content']!r}): {have!r}")
        elif kind == "customer":
            if key not in side["customers"]:
                lost.append(f"new customer {key}")
        elif kind == "credits":
            highest[key] = max(highest.get(key, 0), int(ack["credits"]))
    for key, credits in sorted(highest.items()):
        found = side["customers"].get(key)
        have = None if found is None else (found.get("billing") or {}).get("credits")
        if have is None or have < credits:
            lost.append(f"credits of {key}: {have}, last acknowledged {credits}")
    return lost
