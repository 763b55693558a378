"""A fleet's worth of sites on the local stack: 20 created one after the other beside 20
created four at a time, `site status` of 20, and `certs renew --force` of 20 certificates,
each beside the raw operations measured in the same run.

Creation runs in worker processes (one for the serial batch, four for the parallel one), each
with the tool imported once, so both batches pay the same start-up. Per-step times come from
the runs' journal (the time from one event to the next), to show where parallel runs wait:
the nginx reload lock is host-wide by design, so every vhost write, `nginx -t`, reload and
confirmation on the host happens one at a time. Targets: status of 20 sites under 2 s;
parallel creation at least 1.8x faster than serial.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.site_bench import REPO, raw_certificate, raw_nginx_reload
from provisioner import app
from provisioner.config import Settings, load_settings

SITES = 20
PARALLEL = 4
RAW_ROUNDS = 3
PROVISION = str(Path(sys.executable).parent / "provision")

_settings: Settings | None = None


# --------------------------------------------------------------------------------- workers


def _worker_init(overrides: dict[str, Any]) -> None:
    """A worker process: settings and the tool's pipelines loaded once, as a CLI run would."""
    global _settings
    _settings = replace(load_settings(), **overrides)
    app.prepare(_settings)
    from provisioner.site import pipelines  # noqa: F401 - import the steps before timing


def _run(pipeline: str, params: dict[str, Any]) -> tuple[str | None, float, int]:
    from provisioner.engine.backend import open_runner
    from provisioner.engine.pipeline import build

    assert _settings is not None
    runner = open_runner(_settings)
    try:
        start = time.perf_counter()
        result = runner.run(build(pipeline, params, _settings))
        seconds = time.perf_counter() - start
    finally:
        runner.journal.close()
    return result.run_id, seconds, result.exit_code


def _create(domain: str) -> tuple[str | None, float, int]:
    params = {"domain": domain, "name": "Bench Site", "type": "customer", "template": "default"}
    return _run("site-create", params)


def _rollback(run_id: str) -> int:
    from provisioner.engine.backend import open_runner

    assert _settings is not None
    runner = open_runner(_settings)
    try:
        return runner.rollback(run_id).exit_code
    finally:
        runner.journal.close()


def _pool(workers: int, overrides: dict[str, Any]) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(overrides,),
    )


def create_batch(
    overrides: dict[str, Any], domains: list[str], workers: int, made: list[str]
) -> float:
    """Wall seconds to create every domain with `workers` processes; each run's id is added
    to `made` (for the rollback at the end, whatever happens)."""
    with _pool(workers, overrides) as pool:
        list(pool.map(_warm, range(workers)))  # every worker started and imported
        start = time.perf_counter()
        futures = [pool.submit(_create, domain) for domain in domains]
        failed = []
        for domain, future in zip(domains, futures, strict=True):
            try:
                run_id, _, code = future.result()
            except Exception as exc:  # a preflight refusal: no run to undo
                failed.append(f"{domain}: {exc}")
                continue
            made.append(str(run_id))
            if code != 0:
                failed.append(f"{domain}: exit {code}")
        wall = time.perf_counter() - start
    assert not failed, "creates failed: " + "; ".join(failed)
    return wall


def _warm(_: int) -> int:
    time.sleep(0.2)  # long enough that every worker gets one
    return os.getpid()


def roll_back(overrides: dict[str, Any], run_ids: list[str]) -> float:
    with _pool(PARALLEL, overrides) as pool:
        start = time.perf_counter()
        codes = list(pool.map(_rollback, run_ids))
        wall = time.perf_counter() - start
    assert codes == [0] * len(run_ids), codes
    return wall


# --------------------------------------------------------------------------------- figures


def step_seconds(journal_dir: Path, run_ids: list[str]) -> dict[str, list[float]]:
    """Seconds per step of each run, from its journal: check (to `step_planned` or
    `step_unchanged`) plus apply (to `step_applied`)."""
    from datetime import datetime

    spent: dict[str, list[float]] = defaultdict(list)
    for run_id in run_ids:
        events = [json.loads(line) for line in (journal_dir / f"{run_id}.jsonl").open()]
        per_step: dict[str, float] = defaultdict(float)
        for before, event in itertools.pairwise(events):
            if "step" in event:
                gap = datetime.fromisoformat(event["at"]) - datetime.fromisoformat(before["at"])
                per_step[event["step"]] += gap.total_seconds()
        for step, seconds in per_step.items():
            spent[step].append(seconds)
    return spent


def status_of_all(settings: Settings, domains: list[str]) -> float:
    """`site status` of these sites in process (one set of clients, as the command does), or
    where that command is not there, the plan of each one's create pipeline."""
    from provisioner.engine.backend import open_runner
    from provisioner.storage import DataLayer

    try:  # imported before the clock starts, as the command has them by then
        from provisioner.site.registry import all_sites
        from provisioner.site.status import statuses
    except ImportError:
        statuses = None  # type: ignore[assignment]
    runner = open_runner(settings)
    try:
        start = time.perf_counter()
        if statuses is not None:
            with DataLayer.from_settings(settings) as layer:
                records = [r for r in all_sites(layer) if r.domain in set(domains)]
            found = statuses(runner, records)
            assert len(found) == len(domains) and all(s.converged for s in found), found
        else:
            from provisioner.engine.pipeline import build

            for domain in domains:
                params = {"domain": domain, "name": "Bench Site", "type": "customer"}
                result = runner.plan(
                    build("site-create", {**params, "template": "default"}, settings)
                )
                assert not result.failure, result.failure
        return time.perf_counter() - start
    finally:
        runner.journal.close()


def raw_https_gets(settings: Settings, domains: list[str]) -> float:
    """One verified HTTPS GET of each site through nginx: the floor of a status report."""
    import ssl

    import httpx

    tls = ssl.create_default_context(cafile=str(settings.acme_issuer_root))
    start = time.perf_counter()
    with httpx.Client(verify=tls, trust_env=False, timeout=10) as client:
        for domain in domains:
            answer = client.get(
                f"https://127.0.0.1:{settings.nginx_https_port}/",
                headers={"Host": domain},
                extensions={"sni_hostname": domain},
            )
            assert answer.status_code == 200, (domain, answer.status_code)
    return time.perf_counter() - start


def renew_all(env: dict[str, str], settings: Settings, domains: list[str]) -> tuple[float, str]:
    """`provision certs renew --force` of every certificate (wall seconds, what was used); where
    that command is not there, the certificate step re-issuing each one in process."""
    start = time.perf_counter()
    done = subprocess.run(
        [PROVISION, "certs", "renew", "--force", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=REPO,
    )
    wall = time.perf_counter() - start
    if done.returncode == 2 and "No such command" in done.stderr:
        return reissue_in_process(settings, domains), "certificate step, re-issued"
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    payload = json.loads(done.stdout)
    renewed = [s for s in payload.get("sites", []) if s.get("outcome") == "renewed"]
    assert len(renewed) == len(domains), done.stdout[-2000:]
    return wall, "provision certs renew --force"


def reissue_in_process(settings: Settings, domains: list[str]) -> float:
    import shutil as sh

    from provisioner.engine.step import RunContext
    from provisioner.site.certificate import CertificateStep
    from provisioner.site.validate import site_spec

    start = time.perf_counter()
    for domain in domains:
        spec = site_spec({"domain": domain, "name": "Bench Site", "type": "customer"})
        step = CertificateStep(spec, settings)
        sh.rmtree(step.store.live)  # makes it due; the archive keeps the old generation
        step.apply(RunContext(run_id="bench", target=domain, params={}, settings=settings))
    return time.perf_counter() - start


def _vhosts_naming(settings: Settings, folder: Path) -> list[str]:
    return [
        p.name
        for p in settings.nginx_enabled_dir.glob("*.conf")
        if str(folder) in p.read_text(errors="replace")
    ]


# --------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    settings = load_settings()
    if settings.dns_provider != "route53" or not settings.billing_url:
        print(
            'site lifecycle bench: needs the local stack\'s settings (eval "$(provision dev env)")'
        )
        return 1
    app.prepare(settings)
    work = Path(tempfile.mkdtemp(prefix="site-lifecycle-bench-"))
    # Its own certificate folder (the shared stack's rate-limit ledger would refuse 40 more
    # certificates for aeims.test in a week), outside /tmp: a vhost left behind by a failed
    # run must never name files that are gone, or nginx -t fails for everyone on the host.
    stack = Path(os.environ.get("PROVISION_DEV_STATE", settings.state_dir))
    certs = stack / "bench-certs" / uuid.uuid4().hex[:8]
    shutil.copytree(REPO / "tests" / "fixtures" / "aeims", work / "aeims")
    overrides = {
        "state_dir": work / "state",
        "data_dir": work / "aeims",
        "journal": "files",
        "cert_dir": certs,
    }
    settings = replace(settings, **overrides)
    env = {
        **os.environ,
        "PROVISION_STATE_DIR": str(work / "state"),
        "PROVISION_DATA_DIR": str(work / "aeims"),
        "PROVISION_JOURNAL": "files",
        "PROVISION_CERT_DIR": str(certs),
    }
    tag = uuid.uuid4().hex[:6]
    serial_domains = [f"s{tag}{i:02d}.aeims.test" for i in range(SITES)]
    parallel_domains = [f"p{tag}{i:02d}.aeims.test" for i in range(SITES)]
    serial_runs: list[str] = []
    parallel_runs: list[str] = []
    try:
        raw = {
            "acme": statistics.median(
                raw_certificate(settings, f"r{tag}{i}.aeims.test") for i in range(RAW_ROUNDS)
            ),
            "nginx": statistics.median(raw_nginx_reload(settings) for _ in range(RAW_ROUNDS)),
        }
        serial = create_batch(overrides, serial_domains, 1, serial_runs)
        parallel = create_batch(overrides, parallel_domains, PARALLEL, parallel_runs)
        steps_serial = step_seconds(settings.journal_dir, serial_runs)
        steps_parallel = step_seconds(settings.journal_dir, parallel_runs)
        roll_back(overrides, serial_runs)  # 20 sites left, for status and renewal
        serial_runs.clear()
        status = status_of_all(settings, parallel_domains)
        raw["https"] = raw_https_gets(settings, parallel_domains)
        renew, renewed_by = renew_all(env, settings, parallel_domains)
    finally:
        # Every site made is undone (the certificate step's rollback takes the renewed
        # generations too), so the stack's nginx does not grow by 40 vhosts per run.
        roll_back(overrides, serial_runs + parallel_runs)
        shutil.rmtree(work, ignore_errors=True)
        if not _vhosts_naming(settings, certs):
            shutil.rmtree(certs, ignore_errors=True)
    return report(raw, serial, parallel, steps_serial, steps_parallel, status, renew, renewed_by)


def report(
    raw: dict[str, float],
    serial: float,
    parallel: float,
    steps_serial: dict[str, list[float]],
    steps_parallel: dict[str, list[float]],
    status: float,
    renew: float,
    renewed_by: str,
) -> int:
    n = SITES
    raw_create = raw["acme"] + 2 * raw["nginx"]  # one issuance, two reloads per create
    print(f"\n{'site lifecycle, ' + str(n) + ' sites':<52}{'s':>10}{'/ raw':>8}")
    print(f"{'raw: certificate (acme library), median':<52}{raw['acme']:10.3f}")
    print(f"{'raw: nginx -t + reload, median':<52}{raw['nginx']:10.3f}")
    print(
        f"{'raw: ' + str(n) + ' x (certificate + 2 reloads)':<52}{n * raw_create:10.3f}{1.0:8.2f}"
    )
    print(f"{'create ' + str(n) + ', serial':<52}{serial:10.3f}{serial / (n * raw_create):8.2f}")
    speedup = serial / parallel
    print(
        f"{'create ' + str(n) + f', {PARALLEL} at a time':<52}{parallel:10.3f}"
        f"{parallel / (n * raw_create):8.2f}   speed-up {speedup:.2f}x"
    )
    print(f"{'  of which nginx reloads, serialized on the host':<52}{2 * n * raw['nginx']:10.3f}")
    print(f"{'raw: ' + str(n) + ' verified HTTPS GETs':<52}{raw['https']:10.3f}{1.0:8.2f}")
    print(f"{'site status of ' + str(n):<52}{status:10.3f}{status / raw['https']:8.2f}")
    raw_renew = n * (raw["acme"] + raw["nginx"])
    print(f"{'raw: ' + str(n) + ' x (certificate + reload)':<52}{raw_renew:10.3f}{1.0:8.2f}")
    print(f"{'renew ' + str(n) + ' (' + renewed_by + ')':<52}{renew:10.3f}{renew / raw_renew:8.2f}")
    print(f"\n{'median s per step of a create':<24}{'serial':>10}{'parallel':>10}{'x':>8}")
    for step, seconds in steps_serial.items():
        one, four = statistics.median(seconds), statistics.median(steps_parallel[step])
        print(f"{step:<24}{one:10.3f}{four:10.3f}{four / one if one else 0:8.2f}")
    failures = []
    if status > 2.0:
        failures.append(f"status of {n} sites took {status:.2f} s (target 2 s)")
    if speedup < 1.8:
        failures.append(f"parallel creation {speedup:.2f}x faster than serial (target 1.8x)")
    for failure in failures:
        print(f"TARGET MISSED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
