"""`site create` on the local stack beside the raw operations it is made of, in one run.

Raw: a certificate issued with the acme library alone (order, HTTP-01 through nginx's
webroot, finalize), a bare `nginx -t` + `nginx -s reload`, a bare Route53 UPSERT with its
INSYNC wait. Measured: a cold `site create` (in process, as the CLI runs it, minus
interpreter start-up) and a re-run that changes nothing. Targets: re-run under 0.5 s; the
engine's own overhead (create minus the raw operations it contains) under 10% of the create.
"""

from __future__ import annotations

import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from provisioner import app
from provisioner.config import Settings, load_settings
from provisioner.engine.backend import open_runner
from provisioner.engine.pipeline import build

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 3


def _timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def raw_nginx_reload(settings: Settings) -> float:
    argv = shlex.split(settings.nginx_cmd)

    def reload() -> None:
        subprocess.run([*argv, "-t", "-q"], check=True, capture_output=True, timeout=30)
        subprocess.run([*argv, "-s", "reload"], check=True, capture_output=True, timeout=30)

    return _timed(reload)


def raw_route53_upsert(settings: Settings, domain: str) -> float:
    import boto3

    client = boto3.client("route53", endpoint_url=settings.aws_endpoint)
    zone = next(
        z["Id"] for z in client.list_hosted_zones()["HostedZones"] if z["Name"] == "aeims.test."
    )

    def upsert() -> None:
        rrset = {
            "Name": f"raw-{domain}.",
            "Type": "A",
            "TTL": 300,
            "ResourceRecords": [{"Value": "127.0.0.1"}],
        }
        change = client.change_resource_record_sets(
            HostedZoneId=zone,
            ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": rrset}]},
        )
        client.get_waiter("resource_record_sets_changed").wait(
            Id=change["ChangeInfo"]["Id"], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )

    return _timed(upsert)


def raw_certificate(settings: Settings, domain: str) -> float:
    from provisioner.site import acme_client

    def issue() -> None:
        directory = acme_client.fetch_directory(settings)
        session = acme_client.open_session(settings, directory)
        acme_client.issue(
            session,
            (f"raw-{domain}",),
            acme_client.new_key_pem(),
            acme_client.Http01Webroot(settings.acme_webroot),
            None,
        )

    return _timed(issue)


def site_runs(settings: Settings, domain: str) -> tuple[float, float]:
    """Seconds of a cold create and of a re-run that changes nothing."""
    params = {"domain": domain, "name": "Bench Site", "type": "customer", "template": "default"}
    runner = open_runner(settings)
    try:
        cold = _timed(lambda: _ok(runner.run(build("site-create", params, settings))))
        rerun = _timed(lambda: _ok(runner.run(build("site-create", params, settings)), False))
    finally:
        runner.journal.close()
    return cold, rerun


def _ok(result: Any, changed: bool = True) -> None:
    assert result.exit_code == 0 and result.changed == changed, (result.status, result.failure)


def main(argv: list[str]) -> int:
    settings = load_settings()
    if settings.dns_provider != "route53" or not settings.billing_url:
        print('site bench: needs the local stack\'s settings (eval "$(provision dev env)")')
        return 1
    app.prepare(settings)
    work = Path(tempfile.mkdtemp(prefix="site-bench-"))
    try:
        shutil.copytree(REPO / "tests" / "fixtures" / "aeims", work / "aeims")
        settings = replace(
            settings, state_dir=work / "state", data_dir=work / "aeims", journal="files"
        )
        rows: dict[str, list[float]] = {
            k: [] for k in ("acme", "nginx", "route53", "create", "rerun")
        }
        for _ in range(ROUNDS):
            domain = f"b{uuid.uuid4().hex[:10]}.aeims.test"
            rows["acme"].append(raw_certificate(settings, domain))
            rows["nginx"].append(raw_nginx_reload(settings))
            rows["route53"].append(raw_route53_upsert(settings, domain))
            cold, rerun = site_runs(settings, domain)
            rows["create"].append(cold)
            rows["rerun"].append(rerun)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    # A create issues one certificate, reloads nginx twice (HTTP vhost, then TLS) and
    # upserts one record set; the rest is the steps' own reads, writes and checks.
    raw = med["acme"] + 2 * med["nginx"] + med["route53"]
    overhead = med["create"] - raw
    print(f"\n{'site create (median of ' + str(ROUNDS) + ')':<44}{'s':>10}{'/ raw':>8}")
    print(f"{'raw: certificate (acme library)':<44}{med['acme']:10.3f}")
    print(f"{'raw: nginx -t + reload':<44}{med['nginx']:10.3f}")
    print(f"{'raw: Route53 UPSERT + INSYNC':<44}{med['route53']:10.3f}")
    print(f"{'raw operations of one create':<44}{raw:10.3f}{1.0:8.2f}")
    print(f"{'site create, cold':<44}{med['create']:10.3f}{med['create'] / raw:8.2f}")
    print(f"{'site create, re-run (no change)':<44}{med['rerun']:10.3f}{med['rerun'] / raw:8.2f}")
    share = overhead / med["create"]
    print(f"{'overhead (create - raw), share of create':<44}{overhead:10.3f}{share:8.2f}")
    failures = []
    if med["rerun"] > 0.5:
        failures.append(f"re-run took {med['rerun']:.2f} s (target 0.5 s)")
    if overhead > 0.10 * med["create"]:
        failures.append(f"overhead {overhead / med['create']:.0%} of a create (target 10%)")
    for failure in failures:
        print(f"TARGET MISSED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
