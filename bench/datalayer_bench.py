"""Data layer benchmark: read latency per phase and during an outage, message writes per second.

Baselines, measured in the same run on the same database:
- a raw psycopg primary-key SELECT of a customer row (prepared, autocommit);
- raw psycopg single-row INSERTs of messages from the same number of writer threads.
Targets (from the issues): the layer's read overhead within 1.5x of the raw query; p99 under
5 ms during an outage once the breaker has opened; at least 1,000 message writes/s in the
dual-write phases and 5,000/s in pg_only, with 8 concurrent writers; get_customer on a
customers.json of 1,000,000 records under 1 ms (p99) once warm, in json_only (big_file_bench).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from bench import big_file_bench
from bench.aeims_data import generate
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from provisioner.storage.model import ENTITIES
from provisioner.storage.pg import records as pg_records
from provisioner.storage.pg.schema_versions import apply_migrations
from tests.tcp_proxy import TcpProxy

PASSWORD = "bench-password"
PHASES = (Phase.JSON_ONLY, Phase.DUAL_WRITE_READ_JSON, Phase.DUAL_WRITE_READ_PG, Phase.PG_ONLY)


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = statistics.median(ordered) / 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6
    return p50, p99


def paired(
    calls: int, baseline: Callable[[int], object], subject: Callable[[int], object]
) -> tuple[list[int], list[int]]:
    """Time the baseline and the subject call by call, alternating, so that whatever else the
    machine does weighs on both alike."""
    for i in range(min(200, calls)):
        baseline(i)
        subject(i)
    base, subj = [], []
    for i in range(calls):
        start = time.perf_counter_ns()
        baseline(i)
        mid = time.perf_counter_ns()
        subject(i)
        subj.append(time.perf_counter_ns() - mid)
        base.append(mid - start)
    return base, subj


def backfill(layer: DataLayer, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for entity in ENTITIES:
            records = layer.json.load(entity)
            if records:
                pg_records.copy_records(conn, records)


def write_rate(writers: int, per_writer: int, write: Callable[[int, int], None]) -> float:
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        barrier.wait()
        try:
            for i in range(per_writer):
                write(w, i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return writers * per_writer / elapsed


def raw_message_inserts(dsn: str, writers: int, per_writer: int) -> float:
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(writers)]
    query = "INSERT INTO messages (message_id, content, content_hash) VALUES (%s, %s, 'x')"
    try:
        return write_rate(
            writers, per_writer, lambda w, i: conns[w].execute(query, (uuid.uuid4().hex, "hello"))
        )
    finally:
        for conn in conns:
            conn.execute("DELETE FROM messages")
            conn.close()


def reset_messages(root: Path, dsn: str) -> None:
    """Empty messages on both sides between phases. Through the layer's own file writer: a
    file rewritten behind its back within seconds of its writes reads as PHP reverting them,
    and the next write would put thousands of them back (`write_reapplied`)."""
    AeimsJsonStore(root).replace_all("messages", [])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM messages")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--messages-per-writer", type=int, default=500)
    parser.add_argument(
        "--big-customers",
        type=int,
        default=1_000_000,
        help="customers in the big-file figure (0: skip it)",
    )
    args = parser.parse_args(argv)
    base_dsn = os.environ.get("PROVISION_PG_DSN")
    if not base_dsn:
        print("PROVISION_PG_DSN is not set: run `make bench` (it starts the local stack)")
        return 2

    db = f"bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.conninfo.make_conninfo(base_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    dsn = psycopg.conninfo.make_conninfo(base_dsn, dbname=db)
    failures: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_migrations(conn)
        with tempfile.TemporaryDirectory(prefix="provision-bench-") as tmp:
            root = generate(Path(tmp) / "aeims", args.customers, 200, PASSWORD)
            failures = run(root, dsn, args)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )
    if failures:
        print("\nTargets missed:\n  " + "\n  ".join(failures))
        return 1
    print("\nAll targets met.")
    return 0


def run(root: Path, dsn: str, args: argparse.Namespace) -> list[str]:
    rng = random.Random(1)
    ids = [f"cust_{rng.randrange(args.customers):07d}" for _ in range(args.calls)]
    logins = [f"user{int(k[5:])}" for k in ids]
    failures: list[str] = []
    layer = DataLayer(root, dsn, retry_seconds=5.0)
    backfill(layer, dsn)

    raw = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
    query = "SELECT * FROM customers WHERE customer_id = %s"

    def raw_select(i: int) -> object:
        return raw.execute(query, (ids[i % len(ids)],)).fetchone()

    print(f"customers: {args.customers}; {args.calls} calls per figure; latencies in ms")
    print("baseline: a raw psycopg primary-key SELECT of a customer, timed alternately with each\n")
    print(f"{'read':<46}{'p50':>8}{'p99':>8}{'base p50':>10}{'ratio':>7}")
    for phase in PHASES:
        layer.set_phase(phase, "bench")
        for label, fn in (
            ("get_customer", lambda i: layer.get_customer(logins[i % len(logins)])),
            ("authenticate lookup (no hash)", lambda i: layer.find_login(logins[i % len(logins)])),
        ):
            base, subject = paired(args.calls, raw_select, fn)
            b50, _ = percentiles(base)
            p50, p99 = percentiles(subject)
            ratio = p50 / b50
            print(
                f"{label + ' [' + phase.value + ']':<46}{p50:8.3f}{p99:8.3f}{b50:10.3f}{ratio:7.2f}"
            )
            if phase.reads_pg and ratio > 1.5:
                failures.append(
                    f"{label} in {phase.value}: {ratio:.2f}x the raw query (target 1.5x)"
                )
    layer.close()

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    proxy = TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    outage_dsn = psycopg.conninfo.make_conninfo(dsn, port=proxy.port)
    outage = DataLayer(root, outage_dsn, retry_seconds=5.0)
    outage.set_phase(Phase.DUAL_WRITE_READ_PG, "bench")
    outage.get_customer(logins[0])
    proxy.cut()
    outage.get_customer(logins[0])  # this one meets the outage and opens the breaker
    base, subject = paired(
        args.calls, raw_select, lambda i: outage.get_customer(logins[i % len(logins)])
    )
    b50, _ = percentiles(base)
    p50, p99 = percentiles(subject)
    label = "get_customer [outage, breaker open]"
    print(f"{label:<46}{p50:8.3f}{p99:8.3f}{b50:10.3f}{p50 / b50:7.2f}")
    if p99 >= 5.0:
        failures.append(f"outage p99 {p99:.2f} ms (target under 5 ms)")
    outage.close()
    raw.close()
    if args.big_customers:
        lines, missed = big_file_bench.figure(args.big_customers, args.calls, dsn)
        print(lines)
        failures += missed

    writers, per = args.writers, args.messages_per_writer
    raw_rate = raw_message_inserts(dsn, writers, per)
    print(f"\n{'writes (' + str(writers) + ' writers)':<44}{'msg/s':>10}{'/ raw':>8}")
    print(f"{'baseline: raw psycopg INSERT':<44}{raw_rate:10.0f}{1.0:8.2f}")
    targets = {
        Phase.DUAL_WRITE_READ_JSON: 1000,
        Phase.DUAL_WRITE_READ_PG: 1000,
        Phase.PG_ONLY: 5000,
    }
    for phase in PHASES:
        reset_messages(root, dsn)
        writer = DataLayer(root, dsn)
        writer.set_phase(phase, "bench")

        def save(w: int, i: int, writer: DataLayer = writer) -> None:
            writer.save_message(
                {
                    "conversation_id": f"conv_{w}",
                    "sender_id": f"cust_{w}",
                    "content": f"message {i}",
                }
            )

        rate = write_rate(writers, per, save)
        writer.close()
        print(f"{'save_message [' + phase.value + ']':<44}{rate:10.0f}{rate / raw_rate:8.2f}")
        target = targets.get(phase)
        if target and rate < target:
            failures.append(f"save_message in {phase.value}: {rate:.0f}/s (target {target}/s)")
    return failures
