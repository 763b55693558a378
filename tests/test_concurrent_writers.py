"""Several processes writing one data folder (and one database) through their own DataLayer.

4 spawned processes x 50 writes each, started together: credits updates of customers each
process owns, and new messages with ids the layer generates. At the end JSON holds every write,
PostgreSQL holds the same as JSON for every key written, and nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import traceback
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.storage import jsonvalues
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from provisioner.storage.pg import records as pg_records
from tests.datalayer_support import FIXTURE_AEIMS, copy_root, layer_in, migrate

WORKERS = 4
WRITES = 50  # per worker: half credits updates, half new messages
CUSTOMERS_EACH = 5


def customer_id(worker: int, n: int) -> str:
    return f"cust_w{worker}_{n}"


def write_as_worker(worker: int, root: str, dsn: str | None, start: Any, results: Any) -> None:
    """One process's share: alternately a credits update and a new message."""
    try:
        layer = DataLayer(Path(root), dsn)
        layer.phase()
        start.wait(timeout=60)
        message_ids = []
        for i in range(WRITES):
            if i % 2 == 0:
                key = customer_id(worker, (i // 2) % CUSTOMERS_EACH)
                layer.save_customer(
                    {"customer_id": key, "username": key, "billing": {"credits": i}}
                )
            else:
                message_ids.append(
                    layer.save_message(
                        {
                            "conversation_id": f"conv_w{worker}",
                            "sender_id": customer_id(worker, 0),
                            "content": f"worker {worker} write {i}",
                        }
                    )
                )
        layer.close()
        results.put((worker, message_ids, None))
    except BaseException:
        results.put((worker, [], traceback.format_exc()))


def final_credits(worker: int, n: int) -> int:
    """The `i` of the last credits update a worker made to its customer n."""
    return max(i for i in range(0, WRITES, 2) if (i // 2) % CUSTOMERS_EACH == n)


def run_workers(root: Path, dsn: str | None) -> dict[int, list[str]]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=write_as_worker, args=(w, str(root), dsn, start, results))
        for w in range(WORKERS)
    ]
    for p in processes:
        p.start()
    outcomes: dict[int, list[str]] = {}
    errors = []
    try:
        for _ in processes:
            worker, message_ids, error = results.get(timeout=120)
            outcomes[worker] = message_ids
            if error:
                errors.append(f"worker {worker}:\n{error}")
    except queue.Empty:
        errors.append("a worker never reported")
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    assert errors == [], "\n".join(errors)
    assert [p.exitcode for p in processes] == [0] * WORKERS
    return outcomes


def prepare(root: Path, dsn: str | None) -> None:
    """Each worker's customers exist before the race (through the layer, in both stores)."""
    layer = layer_in(root, dsn, Phase.DUAL_WRITE_READ_JSON if dsn else Phase.JSON_ONLY)
    for w in range(WORKERS):
        for n in range(CUSTOMERS_EACH):
            key = customer_id(w, n)
            layer.save_customer({"customer_id": key, "username": key, "billing": {"credits": -1}})
    layer.close()


def assert_json_holds_every_write(root: Path, outcomes: dict[int, list[str]]) -> None:
    customers_doc = json.loads((root / "data/customers.json").read_text())
    messages_doc = json.loads((root / "data/messages.json").read_text())
    customers, messages = customers_doc["customers"], messages_doc["messages"]
    assert "_CREDENTIALS_DOCUMENTATION" in customers_doc  # file-level keys survived
    assert {"cust_alice", "cust_bob"} <= customers.keys()
    for w in range(WORKERS):
        for n in range(CUSTOMERS_EACH):
            assert customers[customer_id(w, n)]["billing"]["credits"] == final_credits(w, n)
    written = [m for ids in outcomes.values() for m in ids]
    assert len(written) == WORKERS * WRITES // 2
    assert len(set(written)) == len(written)  # generated ids never collide
    assert set(messages) == {"msg_fixture1", *written}
    for w, ids in outcomes.items():
        contents = [messages[m]["content"] for m in ids]
        assert contents == [f"worker {w} write {i}" for i in range(1, WRITES, 2)]
        assert all(messages[m]["message_id"] == m for m in ids)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(FIXTURE_AEIMS, tmp_path / "aeims")


def test_processes_writing_both_stores_lose_and_duplicate_nothing(
    root: Path, fresh_pg_dsn: str
) -> None:
    migrate(fresh_pg_dsn)
    prepare(root, fresh_pg_dsn)

    outcomes = run_workers(root, fresh_pg_dsn)

    assert_json_holds_every_write(root, outcomes)
    with DataLayer(root, fresh_pg_dsn) as layer, psycopg.connect(fresh_pg_dsn) as conn:
        layer.reconcile()
        assert layer.outbox.depth() == 0
        for entity in ("customers", "messages"):
            in_json = {r.key: r.without_plaintext().data for r in layer.json.load(entity)}
            in_pg = {r.key: r.data for r in pg_records.list_records(conn, entity)}
            assert sorted(in_pg) == sorted(in_json), entity
            for key, data in in_json.items():
                assert jsonvalues.json_equal(in_pg[key], data), (entity, key)


def test_processes_writing_json_only_lose_and_duplicate_nothing(root: Path) -> None:
    prepare(root, None)

    outcomes = run_workers(root, None)

    assert_json_holds_every_write(root, outcomes)
    assert not (root / ".provision" / "outbox.jsonl").exists()
