"""The zero-downtime drill: the migration climbs every phase and comes back down while the
application keeps working.

Processes of the data layer log in and write (messages, credits top-ups) without a pause, and
real php-cli writes the JSON files the way the AEIMS application does (in place, under flock);
meanwhile `provision migrate advance` climbs one phase at a time up to the archive, with the
sync service (`provision migrate sync`) carrying PHP's writes into PostgreSQL during the
dual-write phases, and `provision migrate rollback` comes back down to json_only.

The promises: every login of a valid user succeeds, in every phase; every acknowledged write
(the layer's and PHP's) is in PostgreSQL at the top (pg_only: it is the only truth there) and in
the JSON files at the end; every validation at a gate finds 0 mismatches. Then again with
PostgreSQL cut off (a TCP proxy in front of the shared server, cut and restored) for a few
seconds in the middle of the dual-write phases.

PHP writes through the validation gate and the read switch (the sync carries its writes, and
the gate takes them once the sync has applied them); it stops writing the files before pg_only
and starts again once the rollback is back in the dual-write phases: in pg_only nobody may
write them (`advance --to pg_only` checks a quiet period and that the sync caught up), as the
migration plan's USE_JSON=false says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.devdata.aeims_generator import Dataset, generate
from provisioner.storage.layer.datalayer import DataLayer
from tests.migration_drill_support import (
    LayerWorkers,
    Migration,
    PhpWriter,
    Step,
    add_owned_customers,
    describe,
    json_side,
    missing_writes,
    pg_side,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

CUSTOMERS = 120  # a small generated dataset: every file, every quirk, quick to load
LAYER_WORKERS = 3
PHP_NAME = "php0"
PHP_INTERVAL = 0.1  # seconds between two PHP writes
QUIET_PERIOD = 1.0  # seconds with no PHP write that pg_only needs
DWELL = 0.5  # seconds the drill stays on each rung with the traffic flowing
OUTAGE_SECONDS = 3.0

UP = ["schema", "backfill", "dual_write_read_json", "validated", "dual_write_read_pg",
      "pg_only", "archived"]  # fmt: skip
DOWN = ["pg_only", "dual_write_read_pg", "validated", "dual_write_read_json", "backfill",
        "schema", "json_only"]  # fmt: skip
# The rungs where both stores are written: a validation there must find them equal.
BOTH_WRITTEN = {"dual_write_read_json", "validated", "dual_write_read_pg"}
PHASES = {"json_only", "dual_write_read_json", "dual_write_read_pg", "pg_only"}


@dataclass
class Gate:
    """One validation the drill ran: where, and what it found."""

    where: str
    rc: int
    mismatches: int | None
    shown: list[Any] = field(default_factory=list)


@dataclass
class Outage:
    down_from: float = 0.0
    down_until: float = 0.0


@dataclass
class Drill:
    root: Path
    direct_dsn: str  # for the drill's own checks, never through the proxy
    migration: Migration
    workers: LayerWorkers
    php: PhpWriter
    gates: list[Gate] = field(default_factory=list)
    outage: Outage | None = None
    lost_at_top: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        step = self.migration.run("validate", "--limit", "5")
        out = step.output if isinstance(step.output, dict) else {}
        self.gates.append(
            Gate(where, step.rc, out.get("mismatch_count"), out.get("mismatches") or [step.stderr])
        )

    def advance(self, stage: str) -> None:
        if stage == "dual_write_read_json":
            self.migration.start_sync()
        if stage == "pg_only":  # PHP writes on through the gate and the read switch
            paused_at = self.php.pause()
            self.migration.sync_caught_up(paused_at)
            time.sleep(max(0.0, paused_at + QUIET_PERIOD + 0.2 - time.time()))
        step = self.migration.run("advance", "--quiet-period", str(QUIET_PERIOD))
        assert step.rc == 0, describe(step)
        assert reached(step) == stage
        if stage in BOTH_WRITTEN:
            self.validate(f"up at {stage}")

    def roll_back(self, stage: str) -> None:
        args = ["rollback", "--force"] if stage == "json_only" else ["rollback"]
        step = self.migration.run(*args)
        assert step.rc == 0, describe(step)
        assert reached(step) == stage
        if stage == "dual_write_read_pg":
            self.php.resume()
        if stage in BOTH_WRITTEN:
            self.validate(f"down at {stage}")
        if stage == "backfill":
            self.migration.stop_sync()  # json_only from here: nothing left to carry

    def acks(self) -> list[dict[str, Any]]:
        return self.workers.all_entries() + self.php.acks()


def reached(step: Step) -> str | None:
    """The rung a run says it left the installation on ("Now at <stage>: ...")."""
    for line in step.output.get("next_steps", []) if isinstance(step.output, dict) else []:
        if line.startswith("Now at "):
            return line.removeprefix("Now at ").split(":", 1)[0]
    return None


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return generate(tmp_path / "aeims", CUSTOMERS, seed=11, bcrypt_rounds=4)


def valid_logins(dataset: Dataset) -> list[tuple[str, str]]:
    """The drill's own customers, and generated customers and operators, with passwords."""
    names = [f"layer{i}" for i in range(LAYER_WORKERS)]
    logins = add_owned_customers(dataset.root, [*names, PHP_NAME])
    return logins + dataset.customer_logins(6) + dataset.operator_logins(2)


def through_proxy(dsn: str, proxy: TcpProxy) -> str:
    return psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=proxy.port)


@pytest.fixture
def proxy(fresh_pg_dsn: str) -> Iterator[TcpProxy]:
    info = psycopg.conninfo.conninfo_to_dict(fresh_pg_dsn)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    try:
        yield proxy
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------- the run
def run_drill(
    dataset: Dataset, direct_dsn: str, dsn: str, workdir: Path,
    during_dual_writes: Callable[[Drill], None] | None = None,
) -> Drill:  # fmt: skip
    """Climb every rung and come back down with the traffic flowing; the drill's record.
    `during_dual_writes` runs once on dual_write_read_pg going up (the outage variant)."""
    root = dataset.root
    logins = valid_logins(dataset)
    workdir.mkdir()
    names = [f"layer{i}" for i in range(LAYER_WORKERS)]
    drill = Drill(
        root,
        direct_dsn,
        Migration(root, dsn, workdir / "state"),
        LayerWorkers(root, dsn, names, logins, workdir),
        PhpWriter(root, PHP_NAME, workdir, PHP_INTERVAL),
    )
    drill.workers.start()
    drill.php.start()
    try:
        for stage in UP:
            drill.advance(stage)
            if stage == "dual_write_read_pg" and during_dual_writes is not None:
                during_dual_writes(drill)
            time.sleep(DWELL)
            assert drill.workers.alive() and drill.php.running()
        # At the top PostgreSQL is the only truth: it holds every write acknowledged so far.
        acknowledged = drill.acks()  # before the snapshot: each of them is in it
        drill.lost_at_top = missing_writes(pg_side(direct_dsn), acknowledged)
        for stage in DOWN:
            drill.roll_back(stage)
            time.sleep(DWELL)
            assert drill.workers.alive() and drill.php.running()
    finally:
        drill.php.stop()
        drill.workers.stop()
        drill.migration.stop_sync()
    # A write PHP's stale read-modify-write reverted is put back by the layer's next write to
    # the file; the workers' last writes may have been reverted after their last look.
    with DataLayer(root) as layer:
        layer.save_message({"conversation_id": "conv_after", "content": "after the drill"})
        owned = layer.get("customers", "cust_layer0_0")
        assert owned is not None
        layer.save_customer(owned)
    return drill


def check(drill: Drill) -> None:
    entries = drill.workers.all_entries()
    failures = [e["what"] for e in entries if e["kind"] == "failure"]
    assert failures == []
    phases_with_logins = {e["phase"] for e in entries if e["kind"] == "login"}
    assert phases_with_logins == PHASES  # the traffic went on in every phase
    assert drill.php.acks(), "the PHP writer acknowledged nothing"

    # Every gate found 0 mismatches (the gate step's own validation passed, or advance failed).
    assert [(g.where, g.rc, g.mismatches) for g in drill.gates if g.rc or g.mismatches] == [], [
        g.shown for g in drill.gates
    ]
    assert {g.where for g in drill.gates} >= {f"up at {s}" for s in BOTH_WRITTEN}

    # Every acknowledged write is where the truth is: PostgreSQL at the top, JSON at the end.
    assert drill.lost_at_top == []
    assert missing_writes(json_side(drill.root), drill.acks()) == []


def test_the_migration_climbs_and_rolls_back_every_phase_with_no_lost_login_or_write(
    dataset: Dataset, fresh_pg_dsn: str, tmp_path: Path
) -> None:
    drill = run_drill(dataset, fresh_pg_dsn, fresh_pg_dsn, tmp_path / "drill")
    check(drill)


def test_postgresql_cut_off_in_the_dual_write_phases_loses_no_login_nor_write(
    dataset: Dataset, fresh_pg_dsn: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    def outage(drill: Drill) -> None:
        drill.outage = Outage(down_from=time.time())
        proxy.cut()
        time.sleep(OUTAGE_SECONDS)
        drill.outage.down_until = time.time()
        proxy.restore()
        wait_for_pending_writes(drill.migration)
        drill.validate("after the outage, at dual_write_read_pg")

    drill = run_drill(
        dataset, fresh_pg_dsn, through_proxy(fresh_pg_dsn, proxy), tmp_path / "drill", outage
    )
    check(drill)
    assert drill.outage is not None
    during = [
        e
        for e in drill.workers.all_entries()
        if e["kind"] in ("login", "message") and
        drill.outage.down_from <= e["t"] <= drill.outage.down_until
    ]  # fmt: skip
    assert {e["kind"] for e in during} == {"login", "message"}  # worked through the outage
    assert "after the outage, at dual_write_read_pg" in {g.where for g in drill.gates}


def wait_for_pending_writes(migration: Migration, timeout: float = 30.0) -> None:
    """Until the outbox and unfinished writes are replayed (the layer's traffic replays them)."""
    deadline = time.monotonic() + timeout
    while True:
        status = migration.run("status")
        pending = status.output["pending"] if isinstance(status.output, dict) else None
        if pending and not pending["outbox"] and not pending["entities_with_intents"]:
            return
        assert time.monotonic() < deadline, f"writes still pending: {pending}"
        time.sleep(0.2)
