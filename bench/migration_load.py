"""The plan's "10,000+ concurrent users" as a load: sessions at the rate 10,000 users make.

Each user logs in about once a minute and reads 5 times a minute: about 170 login lookups/s and
830 reads/s. The load is open (arrivals on a fixed schedule, whatever the answers take), and a
latency runs from the request's scheduled time to its answer, so queueing counts (no
coordinated omission). The bcrypt check of a login is left out: it costs the same CPU in every
phase and on every store (about 70 ms at cost 10), so the figure is the lookup `authenticate`
does before it.

Reads are key lookups a session makes: a customer by id, an operator by id, a site, the
customer's favorites, a conversation.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from provisioner.devdata.aeims_generator import Dataset

LOOKUPS_PER_S = 170
READS_PER_S = 830
WORKERS = 8


@dataclass
class LoadResult:
    ops: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


def operations(dataset: Dataset, seed: int = 5) -> tuple[list[str], list[tuple[str, str]]]:
    """Logins to look up, and (kind, key) reads, drawn once for every run alike."""
    rng = random.Random(seed)
    names, scale = dataset.names, dataset.scale
    logins = [login for login, _ in dataset.customer_logins(2000, start=rng.randrange(1000))]
    logins += [names.operator_login(j) for j in range(0, scale.operators, 7)][:300]
    reads: list[tuple[str, str]] = []
    for _ in range(5000):
        r = rng.random()
        if r < 0.5:
            reads.append(("customer", names.customer_id(rng.randrange(scale.customers))))
        elif r < 0.7:
            reads.append(("operator", names.operator_id(rng.randrange(scale.operators))))
        elif r < 0.8:
            reads.append(("site", names.site_id(rng.randrange(scale.sites))))
        elif r < 0.9:
            reads.append(("favorites", names.customer_id(rng.randrange(scale.favorites) * 10)))
        else:
            reads.append(
                ("conversation", names.conversation_id(rng.randrange(scale.conversations)))
            )
    return logins, reads


def run_load(
    lookup: Callable[[str], object],
    read: Callable[[str, str], object],
    logins: list[str],
    reads: list[tuple[str, str]],
    seconds: float,
) -> LoadResult:
    """Drive `lookup` and `read` at the sessions' rate for `seconds`, from WORKERS threads."""
    rate = LOOKUPS_PER_S + READS_PER_S
    total = int(rate * seconds)
    rng = random.Random(9)
    plan = [rng.random() < LOOKUPS_PER_S / rate for _ in range(total)]
    jobs: queue.Queue[tuple[int, float] | None] = queue.Queue()
    latencies: list[float] = [0.0] * total
    errors = [0]

    def worker() -> None:
        while (job := jobs.get()) is not None:
            i, due = job
            try:
                if plan[i]:
                    lookup(logins[i % len(logins)])
                else:
                    kind, key = reads[i % len(reads)]
                    read(kind, key)
            except Exception:
                errors[0] += 1
            latencies[i] = time.perf_counter() - due

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put((i, due))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return LoadResult(
        ops=total,
        seconds=elapsed,
        p50_ms=ordered[total // 2] * 1000,
        p99_ms=ordered[min(total - 1, int(total * 0.99))] * 1000,
        errors=errors[0],
    )


def layer_ops(layer: object) -> tuple[Callable[[str], object], Callable[[str, str], object]]:
    """The data layer's calls for a lookup and for each kind of read."""
    from provisioner.storage.layer.auth import AmbiguousLogin
    from provisioner.storage.layer.datalayer import DataLayer

    assert isinstance(layer, DataLayer)

    def lookup(login: str) -> object:
        try:
            return layer.find_login(login)
        except AmbiguousLogin:
            return None

    readers: dict[str, Callable[[str], object]] = {
        "customer": lambda key: layer.get("customers", key),
        "operator": layer.get_operator_by_id,
        "site": layer.get_site,
        "favorites": layer.get_favorites,
        "conversation": layer.get_conversation,
    }
    return lookup, lambda kind, key: readers[kind](key)


_RAW_LOOKUP = """
SELECT customer_id FROM customers
 WHERE lower(btrim(username, E' \\t\\n\\r\\x0b\\x0c') COLLATE "C") = %(l)s
    OR lower(btrim(email, E' \\t\\n\\r\\x0b\\x0c') COLLATE "C") = %(l)s
UNION ALL
SELECT operator_id FROM operators
 WHERE operator_id = %(l)s
    OR lower(btrim(username, E' \\t\\n\\r\\x0b\\x0c') COLLATE "C") = %(l)s
    OR lower(btrim(email, E' \\t\\n\\r\\x0b\\x0c') COLLATE "C") = %(l)s
"""
_RAW_READS = {
    "customer": "SELECT * FROM customers WHERE customer_id = %s",
    "operator": "SELECT * FROM operators WHERE operator_id = %s",
    "site": "SELECT * FROM sites WHERE site_id = %s",
    "favorites": "SELECT * FROM favorites WHERE customer_id = %s",
    "conversation": "SELECT * FROM conversations WHERE conversation_id = %s",
}


def raw_ops(pool: ConnectionPool) -> tuple[Callable[[str], object], Callable[[str, str], object]]:
    """The same work as plain psycopg queries on a pool: the baseline."""

    def lookup(login: str) -> object:
        with pool.connection() as conn:
            return conn.execute(_RAW_LOOKUP, {"l": login.strip().lower()}).fetchall()

    def read(kind: str, key: str) -> object:
        with pool.connection() as conn:
            return conn.execute(_RAW_READS[kind], (key,)).fetchone()

    return lookup, read


def raw_pool(dsn: str) -> ConnectionPool:
    pool = ConnectionPool(
        dsn,
        min_size=WORKERS,
        max_size=WORKERS,
        kwargs={"autocommit": True, "prepare_threshold": 0},
        open=False,
    )
    pool.open(wait=True)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    return pool
