"""The migration's figures on generated AEIMS data, each beside a baseline from the same run on
the same rows (`python -m bench migration [--sizes 10k,100k]`; `make bench` runs the sizes in
BENCH_MIGRATION_SIZES, 10k and 100k by default, 1m when asked).

For each size (customers, with operators, sites, memberships, messages... in proportion:
provisioner.devdata.aeims_generator), in a database of its own:
- json.loads of every file (records/s), in a child process: the floor of any JSON reader;
- raw COPY of the prepared rows into the entity tables (rows/s; preparation not timed);
- backfill (provisioner.migration.backfill) rows/s including JSON parsing, in a child process;
  target at least 40% of raw COPY;
- a raw streamed SELECT of every row (server-side cursor), and the validation
  (provisioner.migration.validation) records/s, in a child process; target 100,000/s;
- a row-by-row INSERT loop like database/migrate-json-to-postgres.php (check, then insert,
  autocommit), on a sample of customers;
- peak memory (VmHWM) of each child process, and of the largest worker the backfill forks.
At 100k customers: the sync's lag (provisioner.migration.sync.watch in a child process) for
one customer changed in place under flock, as PHP writes (target under 1 s); and the session
load (bench/migration_load.py) in every phase and during a backfill, p99 against the plan's
50 ms, beside the same load on raw psycopg.
The chart of rows/s and peak memory against size goes to var/bench/migration.png.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import migration_load
from provisioner.devdata.aeims_generator import Dataset, generate

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "var" / "bench" / "migration.png"
DEFAULT_SIZES = "10k,100k"
PHP_SAMPLE = 2000
BACKFILL_SHARE_TARGET = 0.40
VALIDATION_TARGET = 100_000
SYNC_LAG_TARGET_S = 1.0
P99_TARGET_MS = 50.0
LOAD_SIZE = 100_000


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if factor > 1 else text
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 10k, 100k, 1m)")
    return int(number) * factor


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def line(label: str, value: float, unit: str, base: float | None, base_label: str = "") -> None:
    ratio = f"{value / base:7.2f}" if base else "      -"
    based = f"{base:12,.0f}" if base else f"{'':12}"
    print(f"  {label:<40}{value:12,.0f} {unit:<9}{based}{ratio}  {base_label}")


# ------------------------------------------------------------------------------------ children
def child(kind: str, root: Path, dsn: str) -> dict[str, Any]:
    """One measured job in this (child) process; its peak RSS is this process's. Imports come
    before the clock starts: the figure is the work's, not the interpreter's start-up."""
    if kind == "backfill":
        from provisioner.migration.backfill import backfill
    elif kind == "validate":
        from provisioner.migration.validation import validate
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if kind == "loads":
        records = 0
        for path in sorted(root.rglob("*.json")):
            if ".provision" not in path.parts:
                doc = json.loads(path.read_bytes())
                records += _count_records(doc)
        out["records"] = records
    elif kind == "backfill":
        report = backfill(dsn, root)
        out["records"] = report.totals["records"]
        out["totals"] = report.totals
        out["errors"] = report.errors
    elif kind == "validate":
        report = validate(dsn, root)
        out["records"] = report.records_checked
        out["mismatches"] = report.mismatch_count
    elif kind == "sync":
        return _sync_child(root, dsn)
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = peak_rss_mb()
    # The largest worker process it forked, if any (the backfill's row builders).
    out["workers_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def peak_rss_mb() -> float:
    """This process's own peak resident size. Not ru_maxrss: Linux keeps it across fork and
    exec, so a child started by this benchmark (which holds the generated data) would report
    at least the benchmark's own size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count_records(doc: Any) -> int:
    """Roughly the records of a parsed file: the largest container's members."""
    if isinstance(doc, list):
        return len(doc)
    if isinstance(doc, dict):
        inner = [len(v) for v in doc.values() if isinstance(v, dict | list)]
        return max([len(doc), *inner])
    return 0


def _sync_child(root: Path, dsn: str) -> dict[str, Any]:
    import threading

    from provisioner.migration.sync import watch

    stop = threading.Event()

    def report(rep: Any) -> None:
        print(json.dumps({"lag": rep.lag_seconds, "upserted": rep.upserted}), flush=True)

    watch(root, dsn, stop=stop, on_report=report)
    return {}


def run_child(kind: str, root: Path, dsn: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.migration_bench", "child", kind, str(root), dsn],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ baselines
@contextmanager
def scratch_database(base_dsn: str) -> Iterator[str]:
    name = f"bench_mig_{uuid.uuid4().hex[:8]}"
    admin = psycopg.conninfo.make_conninfo(base_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(base_dsn, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def raw_copy(root: Path, dsn: str) -> tuple[int, float]:
    """COPY of rows prepared beforehand (through the layer's mapping, not timed) into the
    entity tables: (rows, seconds of COPY alone). The tables are emptied after."""
    from provisioner.storage.aeims.store import AeimsJsonStore
    from provisioner.storage.model import ENTITIES
    from provisioner.storage.pg.maps import ENTITY_MAPS
    from provisioner.storage.pg.rows import from_record

    store = AeimsJsonStore(root)
    rows = 0
    seconds = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for entity in ENTITIES:
            mapping = ENTITY_MAPS[entity]
            prepared = [from_record(r).params() for r in store.load(entity)]
            types = ["text", *(c.type.copy_type for c in mapping.columns), "jsonb", "jsonb", "text"]
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(mapping.table),
                sql.SQL(", ").join(map(sql.Identifier, mapping.written_columns)),
            )
            start = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur, cur.copy(statement) as copy:
                copy.set_types(types)
                for row in prepared:
                    copy.write_row(row)
            seconds += time.perf_counter() - start
            rows += len(prepared)
            del prepared
        tables = [ENTITY_MAPS[e].table for e in ENTITIES]
        conn.execute(
            sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, tables)))
        )
    return rows, seconds


def raw_select(dsn: str) -> tuple[int, float]:
    """Every row of every entity table through a server-side cursor."""
    from provisioner.storage.model import ENTITIES
    from provisioner.storage.pg.maps import ENTITY_MAPS

    rows = 0
    start = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for entity in ENTITIES:
            table = ENTITY_MAPS[entity].table
            with conn.cursor(name=f"all_{table}") as cur:
                cur.itersize = 5000
                cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
                for _ in cur:
                    rows += 1
        conn.rollback()
    return rows, time.perf_counter() - start


def php_insert_loop(dataset: Dataset, dsn: str) -> tuple[int, float]:
    """database/migrate-json-to-postgres.php's loop: per customer, SELECT whether it exists,
    then INSERT, each statement its own transaction."""
    doc = json.loads((dataset.root / "data" / "customers.json").read_bytes())
    sample = list(doc["customers"].values())[:PHP_SAMPLE]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE php_customers (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " username text, email text, password_hash text, credits numeric,"
            " created_at timestamp, metadata jsonb)"
        )
        start = time.perf_counter()
        for record in sample:
            found = conn.execute(
                "SELECT id FROM php_customers WHERE username = %s", (str(record["username"]),)
            ).fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO php_customers (username, email, password_hash, credits,"
                    " created_at, metadata) VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        str(record["username"]),
                        record["email"],
                        record["password_hash"],
                        record["billing"]["credits"],
                        record["created_at"][:19].replace("T", " "),
                        json.dumps(record.get("profile", {})),
                    ),
                )
        seconds = time.perf_counter() - start
        conn.execute("DROP TABLE php_customers")
    return len(sample), seconds


# ------------------------------------------------------------------------------------ sync lag
def sync_lag(dataset: Dataset, dsn: str, rounds: int = 5) -> list[float] | str:
    """Seconds from PHP's in-place write of one customer to the row holding it, with the sync
    watching; or why it could not be measured."""
    if not (_available("provisioner.migration.sync") and _available("watchfiles")):
        return "not available (provisioner.migration.sync or watchfiles missing)"
    from provisioner.storage.layer.datalayer import DataLayer
    from provisioner.storage.layer.phase import Phase

    with DataLayer(dataset.root, dsn) as layer:
        layer.set_phase(Phase.DUAL_WRITE_READ_JSON, "bench")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bench.migration_bench", "child", "sync", str(dataset.root), dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert watcher.stdout is not None
        if not watcher.stdout.readline():  # its first pass over every file is done
            return f"not available: the sync exited ({watcher.stderr.read().strip()[-200:]})"
        path = dataset.root / "data" / "customers.json"
        lags = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(rounds):
                number = 1000 + i * 7919 % max(1, dataset.scale.customers - 1000)
                cid = dataset.names.customer_id(number)
                new_ip = f"172.16.9.{i}"
                _php_rewrite(path, cid, new_ip)
                written = time.perf_counter()
                while time.perf_counter() - written < 30:
                    row = conn.execute(
                        "SELECT registration_ip FROM customers WHERE customer_id = %s", (cid,)
                    ).fetchone()
                    if row and row[0] == new_ip:
                        break
                    time.sleep(0.002)
                lags.append(time.perf_counter() - written)
                time.sleep(0.3)
        return lags
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)


def _php_rewrite(path: Path, customer_id: str, new_ip: str) -> None:
    """Change one customer's registration_ip the way PHP writes: read, then truncate and write
    in place, under LOCK_EX on the file."""
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        start = text.index(f'"customer_id": "{customer_id}"'.encode())
        field = text.index(b'"registration_ip": "', start) + len(b'"registration_ip": "')
        end = text.index(b'"', field)
        f.seek(0)
        f.truncate()
        f.write(text[:field] + new_ip.encode() + text[end:])
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------ load
def load_figures(dataset: Dataset, dsn: str, seconds: float) -> list[str]:
    """The sessions' load in every phase and during a backfill, beside raw psycopg."""
    from provisioner.storage.layer.datalayer import DataLayer
    from provisioner.storage.layer.phase import Phase

    failures: list[str] = []
    logins, reads = migration_load.operations(dataset)
    rate = migration_load.LOOKUPS_PER_S + migration_load.READS_PER_S
    print(
        f"\nload: {migration_load.LOOKUPS_PER_S} login lookups/s + {migration_load.READS_PER_S}"
        f" reads/s ({rate}/s, the rate of 10,000 users) for {seconds:.0f} s each, "
        f"{migration_load.WORKERS} threads; bcrypt left out"
    )
    print(f"  {'':<40}{'p50 ms':>10}{'p99 ms':>10}{'raw p99':>10}{'ratio':>7}{'errors':>8}")
    pool = migration_load.raw_pool(dsn)
    try:
        raw = migration_load.run_load(*migration_load.raw_ops(pool), logins, reads, seconds)
    finally:
        pool.close()
    print(
        f"  {'baseline: raw psycopg (pool of 8)':<40}{raw.p50_ms:10.2f}{raw.p99_ms:10.2f}"
        f"{raw.p99_ms:10.2f}{1.0:7.2f}{raw.errors:8d}"
    )
    layer = DataLayer(dataset.root, dsn)
    lookup, read = migration_load.layer_ops(layer)
    scenarios: list[tuple[str, Phase, bool]] = [(phase.value, phase, False) for phase in Phase] + [
        ("during backfill (dual_write_read_json)", Phase.DUAL_WRITE_READ_JSON, True)
    ]
    try:
        for label, phase, during_step in scenarios:
            layer.set_phase(phase, "bench")
            for login in logins[:50]:
                lookup(login)
            for kind, key in reads[:200]:
                read(kind, key)
            step = None
            if during_step:
                if not _available("provisioner.migration.backfill"):
                    print(f"  {label:<40}not available (provisioner.migration.backfill missing)")
                    continue
                step = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.migration_bench",
                        "child",
                        "backfill",
                        str(dataset.root),
                        dsn,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=REPO,
                )
                time.sleep(1.0)  # past its start-up, into the load
            got = migration_load.run_load(lookup, read, logins, reads, seconds)
            still = step is not None and step.poll() is None
            if step is not None:
                step.wait()
            note = " (step ran throughout)" if still else ""
            print(
                f"  {label:<40}{got.p50_ms:10.2f}{got.p99_ms:10.2f}{raw.p99_ms:10.2f}"
                f"{got.p99_ms / raw.p99_ms:7.2f}{got.errors:8d}{note}"
            )
            if got.p99_ms >= P99_TARGET_MS or got.errors:
                failures.append(
                    f"load {label}: p99 {got.p99_ms:.1f} ms, {got.errors} errors "
                    f"(target p99 under {P99_TARGET_MS:.0f} ms, no errors)"
                )
    finally:
        layer.set_phase(Phase.JSON_ONLY, "bench")
        layer.close()
    return failures


# ------------------------------------------------------------------------------------ sizes
def measure_size(
    customers: int, base_dsn: str, load_seconds: float, load_here: bool
) -> tuple[dict, list[str]]:
    """Every figure for one size; (figures for the chart, missed targets)."""
    failures: list[str] = []
    fig: dict[str, Any] = {"customers": customers}
    with (
        tempfile.TemporaryDirectory(prefix="provision-bench-mig-") as tmp,
        scratch_database(base_dsn) as dsn,
    ):
        from provisioner.storage.pg.schema_versions import apply_migrations

        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_migrations(conn)
        dataset = generate(Path(tmp) / "aeims", customers, seed=1)
        records = dataset.scale.total
        print(
            f"\n{customers:,} customers: {records:,} records, {dataset.bytes / 1e6:,.0f} MB of "
            f"JSON, generated in {dataset.seconds:.1f} s "
            f"({records / dataset.seconds:,.0f} records/s)"
        )
        print(f"  {'':<40}{'value':>12} {'unit':<9}{'baseline':>12}{'ratio':>7}")
        loads = run_child("loads", dataset.root, dsn)
        if "error" in loads:
            failures.append(f"json.loads child failed: {loads['error']}")
            return fig, failures
        loads_rate = records / loads["seconds"]
        fig["loads_rate"], fig["loads_mb"] = loads_rate, loads["peak_mb"]
        line("json.loads of every file", loads_rate, "rec/s", None)
        copied, copy_s = raw_copy(dataset.root, dsn)
        copy_rate = copied / copy_s
        fig["copy_rate"] = copy_rate
        line("raw COPY of prepared rows", copy_rate, "rows/s", None)
        if _available("provisioner.migration.backfill"):
            done = run_child("backfill", dataset.root, dsn)
            if "error" in done:
                failures.append(f"backfill failed: {done['error']}")
            else:
                rate = done["records"] / done["seconds"]
                fig["backfill_rate"], fig["backfill_mb"] = rate, done["peak_mb"]
                fig["backfill_workers_mb"] = done.get("workers_peak_mb", 0.0)
                line(
                    "backfill (parse + map + COPY + upsert)",
                    rate,
                    "rows/s",
                    copy_rate,
                    "x raw COPY",
                )
                if rate < BACKFILL_SHARE_TARGET * copy_rate:
                    failures.append(
                        f"backfill at {customers:,}: {rate / copy_rate:.0%} of raw COPY "
                        f"(target {BACKFILL_SHARE_TARGET:.0%})"
                    )
        else:
            print("  backfill: not available (provisioner.migration.backfill missing)")
            _fallback_load(dataset.root, dsn)
        selected, select_s = raw_select(dsn)
        select_rate = selected / select_s
        fig["select_rate"] = select_rate
        line("raw streamed SELECT of every row", select_rate, "rows/s", None)
        if _available("provisioner.migration.validation"):
            done = run_child("validate", dataset.root, dsn)
            if "error" in done:
                failures.append(f"validation failed: {done['error']}")
            else:
                rate = done["records"] / done["seconds"]
                fig["validate_rate"], fig["validate_mb"] = rate, done["peak_mb"]
                line(
                    "validation (both sides, every field)",
                    rate,
                    "rec/s",
                    select_rate,
                    "x raw SELECT",
                )
                line("  same, against json.loads", rate, "rec/s", loads_rate, "x json.loads")
                if rate < VALIDATION_TARGET:
                    failures.append(
                        f"validation at {customers:,}: {rate:,.0f} records/s "
                        f"(target {VALIDATION_TARGET:,})"
                    )
                if done.get("mismatches"):
                    failures.append(f"validation at {customers:,}: {done['mismatches']} mismatches")
        else:
            print("  validation: not available (provisioner.migration.validation missing)")
        sample, php_s = php_insert_loop(dataset, dsn)
        line(
            f"PHP script's INSERT loop ({sample:,} rows)",
            sample / php_s,
            "rows/s",
            copy_rate,
            "x raw COPY",
        )
        peaks = ", ".join(
            f"{name} {fig[key]:,.0f} MB"
            for name, key in (
                ("json.loads", "loads_mb"),
                ("backfill", "backfill_mb"),
                ("validation", "validate_mb"),
            )
            if key in fig
        )
        if fig.get("backfill_workers_mb"):
            workers_mb = fig["backfill_workers_mb"]
            peaks += f" (+ each row-building worker of the backfill up to {workers_mb:,.0f} MB)"
        print(f"  peak memory (VmHWM of each child process): {peaks}")
        if load_here:
            lags = sync_lag(dataset, dsn)
            if isinstance(lags, str):
                print(f"  sync lag: {lags}")
            else:
                fig["sync_lag"] = max(lags)
                print(
                    f"  sync lag, one customer changed in place (x{len(lags)}): "
                    f"median {sorted(lags)[len(lags) // 2]:.3f} s, max {max(lags):.3f} s "
                    f"(target under {SYNC_LAG_TARGET_S:.0f} s)"
                )
                if max(lags) >= SYNC_LAG_TARGET_S:
                    failures.append(f"sync lag {max(lags):.2f} s (target under 1 s)")
            if load_seconds > 0:
                failures += load_figures(dataset, dsn, load_seconds)
    return fig, failures


def _fallback_load(root: Path, dsn: str) -> None:
    """Without the backfill module, load the rows with the layer's copy_records, so that the
    SELECT baseline and the load still have data."""
    from provisioner.storage.aeims.store import AeimsJsonStore
    from provisioner.storage.model import ENTITIES
    from provisioner.storage.pg import records as pg_records

    store = AeimsJsonStore(root)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for entity in ENTITIES:
            records = store.load(entity)
            if records:
                pg_records.copy_records(conn, records)


def chart(figures: list[dict[str, Any]], path: Path = CHART) -> Path | None:
    """rows/s and peak memory against size, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart: not written (matplotlib is not installed: pip install -e '.[dev]')")
        return None
    sizes = [f["customers"] for f in figures]
    fig, (rates, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (
        ("copy_rate", "raw COPY"),
        ("backfill_rate", "backfill"),
        ("select_rate", "raw streamed SELECT"),
        ("validate_rate", "validation"),
        ("loads_rate", "json.loads"),
    ):
        points = [(f["customers"], f[key]) for f in figures if key in f]
        if points:
            rates.plot(*zip(*points, strict=True), marker="o", label=label)
    rates.axhline(VALIDATION_TARGET, color="grey", linestyle=":", label="validation target")
    rates.set(xscale="log", yscale="log", xlabel="customers", ylabel="rows (records) / s")
    rates.set_title("throughput against size")
    rates.legend(fontsize=8)
    for key, label in (
        ("loads_mb", "json.loads"),
        ("backfill_mb", "backfill"),
        ("validate_mb", "validation"),
    ):
        points = [(f["customers"], f[key]) for f in figures if key in f]
        if points:
            memory.plot(*zip(*points, strict=True), marker="o", label=label)
    memory.set(xscale="log", xlabel="customers", ylabel="peak RSS (MB)")
    memory.set_title("peak memory against size")
    memory.legend(fontsize=8)
    for axis in (rates, memory):
        axis.set_xticks(sizes, [f"{s:,}" for s in sizes])
        axis.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        print(json.dumps(child(argv[1], Path(argv[2]), argv[3])), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench migration")
    parser.add_argument(
        "--sizes",
        default=os.environ.get("BENCH_MIGRATION_SIZES", DEFAULT_SIZES),
        help="customers per run, comma-separated (10k,100k,1m); env BENCH_MIGRATION_SIZES",
    )
    parser.add_argument(
        "--load-seconds", type=float, default=10.0, help="per load scenario (0: no load)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        print(f"--sizes: {exc}")
        return 2
    base_dsn = os.environ.get("PROVISION_PG_DSN")
    if not base_dsn:
        print("PROVISION_PG_DSN is not set: run `make bench` (it starts the local stack)")
        return 2
    print(f"migration benchmark: {', '.join(f'{s:,}' for s in sizes)} customers")
    figures, failures = [], []
    # The sync lag and the load run at 100k customers (the largest size up to it when absent).
    load_at = max([s for s in sizes if s <= LOAD_SIZE] or [min(sizes)])
    for size in sizes:
        fig, missed = measure_size(size, base_dsn, args.load_seconds, size == load_at)
        figures.append(fig)
        failures += missed
    written = chart(figures)
    if written:
        print(f"\nchart: {written}")
    if failures:
        print("\nTargets missed:\n  " + "\n  ".join(failures))
        return 1
    print("\nAll migration targets met.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
