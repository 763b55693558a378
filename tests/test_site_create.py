"""`provision site create` end to end, in real processes, on the real local stack: nginx
serving, pebble validating real challenges, moto's Route53, the billing reference server,
the AEIMS files (and PostgreSQL where the phase says so).

Create, re-run (`changed: false`), `--plan` changes nothing, a failure injected after each
step rolls back every earlier one and leaves no residue, `--on-failure keep` keeps what was
made until `runs rollback`, and hostile input is refused before anything is made.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.site_support import route53, stack_env, unique_domain

REPO = Path(__file__).resolve().parents[1]
PROVISION = str(Path(sys.executable).parent / "provision")
FIXTURES = REPO / "tests" / "fixtures" / "aeims"
STEPS = ["record", "files", "nginx", "dns", "certificate", "operators", "billing", "health"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The command's environment: the stack's settings, a private state and AEIMS copy, and a
    certificate folder of its own (its rate-limit ledger: the stack's shared one fills up over
    many runs) kept under the stack's state, because the stack's nginx keeps loading any vhost
    a test leaves, and one naming deleted certificate files breaks `nginx -t` for everyone."""
    data = tmp_path / "aeims"
    shutil.copytree(FIXTURES, data)
    stack = stack_env()
    certs = Path(stack["PROVISION_DEV_STATE"]) / "test-certs" / f"create-{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    return {
        **base,
        **stack,
        "PROVISION_CERT_DIR": str(certs),
        "PROVISION_STATE_DIR": str(tmp_path / "state"),
        "PROVISION_DATA_DIR": str(data),
        "PROVISION_PIPELINE_MODULES": "tests.site_pipelines",
        "PROVISION_JOURNAL": "files",  # the stack's database is shared with the demo
        "PYTHONPATH": str(REPO),
    }


def provision(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROVISION, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )


def failing_run(domain: str, fail_after: str) -> list[str]:
    """`provision run` of the site pipeline that fails right after `fail_after` applied."""
    params = {
        "domain": domain,
        "name": "New Flirts",
        "type": "customer",
        "template": "default",
        "fail_after": fail_after,
    }
    args = [arg for k, v in params.items() for arg in ("-p", f"{k}={json.dumps(v)}")]
    return ["run", "site-create-failing", *args]


def create_args(domain: str, *extra: str) -> list[str]:
    return ["site", "create", "--domain", domain, "--name", "New Flirts", *extra]


def https_get(env: dict[str, str], domain: str) -> httpx.Response:
    """The site over verified HTTPS, as `curl --cacert ... --resolve` would fetch it."""
    tls = ssl.create_default_context(cafile=env["PROVISION_ACME_ISSUER_ROOT"])
    port = env["PROVISION_NGINX_HTTPS_PORT"]
    with httpx.Client(verify=tls, trust_env=False, timeout=10) as client:
        return client.get(
            f"https://127.0.0.1:{port}/",
            headers={"Host": domain},
            extensions={"sni_hostname": domain},
        )


def aeims_records(env: dict[str, str]) -> dict[str, Any]:
    """Every AEIMS record as the data layer reads it. A write rewrites a file in PHP's encoding
    and stamps its `last_updated`, as the PHP application does, and keeps the two operator
    files in step: the records, not the bytes, are what a rollback must put back."""
    from provisioner.config import load_settings
    from provisioner.storage import DataLayer
    from provisioner.storage.model import ENTITIES

    with DataLayer.from_settings(load_settings(env=env)) as layer:
        return {entity: layer.list(entity) for entity in ENTITIES}


def world(env: dict[str, str], domain: str) -> dict[str, Any]:
    """Everything a create touches, for a before/after comparison."""
    cert_dir = Path(env["PROVISION_CERT_DIR"])
    vhost_dir = Path(env["PROVISION_NGINX_VHOST_DIR"])
    enabled_dir = Path(env["PROVISION_NGINX_ENABLED_DIR"])
    client = route53(env)
    records = []
    for zone in client.list_hosted_zones()["HostedZones"]:
        for rrset in client.list_resource_record_sets(HostedZoneId=zone["Id"])[
            "ResourceRecordSets"
        ]:
            if rrset["Name"].rstrip(".").endswith(domain):
                records.append((rrset["Name"], rrset["Type"]))
    billing = httpx.get(
        f"{env['PROVISION_BILLING_URL'].rstrip('/')}/v1/sites/{domain.replace('.', '_')}",
        headers={"Authorization": f"Bearer {env['PROVISION_BILLING_TOKEN']}"},
        trust_env=False,
    ).status_code
    return {
        "aeims": aeims_records(env),
        "site folder": (Path(env["PROVISION_SITES_ROOT"]) / domain).exists(),
        "vhosts": sorted(
            p.name for p in [*vhost_dir.glob(f"{domain}*"), *enabled_dir.glob(f"{domain}*")]
        ),
        "certificates": sorted(p.name for p in cert_dir.glob(f"*/{domain}")),
        "dns": sorted(records),
        "billing": billing,
    }


def test_create_makes_a_site_that_answers_over_verified_https(env: dict[str, str]) -> None:
    domain = unique_domain()

    created = provision(env, *create_args(domain))

    assert created.returncode == 0, created.stdout + created.stderr
    out = created.stdout
    assert f"site_id {domain.replace('.', '_')} created" in out
    assert "✓ Files: created" in out and "with 15 templates" in out
    assert "✓ SSL: certificate issued by" in out
    assert "✓ DNS: added A record pointing to 127.0.0.1" in out
    assert "✓ Integration: connected to AEIMS operator pool (" in out
    assert "✓ Billing: connected to SexaComms billing system" in out
    assert f"✓ Health Check: site responding at https://{domain}:" in out
    assert "Next steps:" in out and "provision site enable --site" in out
    answer = https_get(env, domain)
    assert answer.status_code == 200 and "New Flirts" in answer.text
    assert answer.headers["strict-transport-security"]

    again = provision(env, *create_args(domain), "--json")
    assert again.returncode == 0, again.stderr
    payload = json.loads(again.stdout)
    assert payload["changed"] is False
    assert [s["status"] for s in payload["steps"]] == ["ok"] * len(STEPS)


def test_plan_shows_the_vhost_dns_and_record_and_changes_nothing(env: dict[str, str]) -> None:
    domain = unique_domain()
    before = world(env, domain)

    planned = provision(env, *create_args(domain), "--plan", "--json")

    assert planned.returncode == 0, planned.stderr
    steps = {s["name"]: s for s in json.loads(planned.stdout)["steps"]}
    assert list(steps) == STEPS
    assert f"server_name {domain} www.{domain};" in steps["nginx"]["diff"]["prepared"]
    assert "127.0.0.1" in json.dumps(steps["dns"]["diff"])
    assert domain in json.dumps(steps["record"]["diff"]["after"])
    assert world(env, domain) == before


@pytest.mark.parametrize("failing", STEPS)
def test_a_failure_after_any_step_leaves_no_residue(env: dict[str, str], failing: str) -> None:
    domain = unique_domain()
    before = world(env, domain)
    failed = provision(env, *failing_run(domain, failing), "--json")

    assert failed.returncode == 1, failed.stdout + failed.stderr
    payload = json.loads(failed.stdout)
    assert f"injected failure after {failing} applied" in payload["msg"]
    assert all(s["status"] == "rolled_back" for s in payload["rollback"]), payload["rollback"]
    assert world(env, domain) == before


def test_on_failure_keep_leaves_the_site_for_inspection_until_rolled_back(
    env: dict[str, str],
) -> None:
    domain = unique_domain()
    before = world(env, domain)

    kept = provision(env, *failing_run(domain, "billing"), "--on-failure", "keep", "--json")

    assert kept.returncode == 1, kept.stdout + kept.stderr
    payload = json.loads(kept.stdout)
    assert payload["status"] == "failed_kept" and payload["rollback"] == []
    assert https_get(env, domain).status_code == 200  # there to be looked at
    undone = provision(env, "runs", "rollback", payload["run_id"], "--json")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert world(env, domain) == before


@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--domain", "evil.com; rm -rf /", "domain"),
        ("--domain", "*.aeims.test", "wildcard"),
        ("--domain", "127.0.0.1", "IP address"),
        ("--domain", "a.aeims.test.", "trailing dot"),
        ("--name", "New\nFlirts", "name"),
        ("--template", "../../etc", "template"),
    ],
)
def test_hostile_input_is_refused_before_anything_is_made(
    env: dict[str, str], option: str, value: str, complaint: str
) -> None:
    args = {"--domain": unique_domain(), "--name": "New Flirts", "--template": "default"}
    args[option] = value
    domain = args["--domain"]
    before = world(env, domain) if option != "--domain" else None

    refused = provision(env, "site", "create", *[x for kv in args.items() for x in kv])

    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert complaint.lower() in refused.stderr.lower() and "Traceback" not in refused.stderr
    assert not Path(env["PROVISION_STATE_DIR"], "journal").exists()
    if before is not None:
        assert world(env, domain) == before
