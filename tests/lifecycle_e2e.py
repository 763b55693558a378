"""What the status and destroy tests share: a private environment on the local stack with a
created site, and direct edits of the world (Route53, billing, operators) as a person makes them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from provisioner.site import route53 as r53
from tests.site_e2e_support import provision, site_env
from tests.site_support import unique_domain

NAME = "Status Flirts"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private state, AEIMS copy and certificate folder (the stack's rate-limit ledger
    fills up on a stack shared by many runs) on the local stack."""
    made = site_env(tmp_path / "state", tmp_path / "aeims", modules="tests.site_pipelines")
    return {**made, "PROVISION_CERT_DIR": str(tmp_path / "certs")}


@pytest.fixture
def created(env: dict[str, str]) -> Iterator[str]:
    """A site made by `provision site create` (its domain), destroyed afterwards."""
    with site_made(env) as domain:
        yield domain


@contextmanager
def site_made(env: dict[str, str]) -> Iterator[str]:
    """A created site, destroyed at the end: its vhost names certificate files in this test's
    folder, and nginx, shared by every test, would refuse its whole config once pytest
    removes that folder."""
    domain = unique_domain()
    try:
        done = provision(env, "site", "create", "--domain", domain, "--name", NAME)
        assert done.returncode == 0, done.stdout + done.stderr
        yield domain
    finally:
        gone = provision(env, "site", "destroy", "--site", domain, "--keep-certificate", "--json")
        assert gone.returncode in {0, 2}, gone.stdout + gone.stderr  # 2: destroyed already
        for archived in (Path(env["PROVISION_SITES_ROOT"]) / "_archived").glob(f"{domain}_*"):
            shutil.rmtree(archived)  # the shared stack's sites folder is not this test's


def json_of(env: dict[str, str], *args: str, expect: int) -> dict[str, Any]:
    done = provision(env, *args, "--json")
    assert done.returncode == expect, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def route53_of(env: dict[str, str]) -> tuple[Any, str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", env["AWS_SECRET_ACCESS_KEY"])
    client = boto3.client(
        "route53", endpoint_url=env["PROVISION_AWS_ENDPOINT"], region_name="us-east-1"
    )
    zone, _ = r53.find_zone(client, "aeims.test")
    assert zone is not None
    return client, r53.zone_id(zone)


def a_records(env: dict[str, str], domain: str) -> list[Any]:
    client, zone = route53_of(env)
    return [
        rrset
        for host in (domain, f"www.{domain}")
        for rrset in r53.records_at(client, zone, host)
        if rrset["Type"] in {"A", "AAAA"}
    ]


def delete_record(env: dict[str, str], name: str) -> None:
    client, zone = route53_of(env)
    found = [r for r in r53.records_at(client, zone, name) if r["Type"] == "A"]
    assert found, f"no A record at {name}"
    batch = {"Changes": [{"Action": "DELETE", "ResourceRecordSet": r} for r in found]}
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)


def billing(env: dict[str, str], method: str, domain: str) -> httpx.Response:
    url = f"{env['PROVISION_BILLING_URL'].rstrip('/')}/v1/sites/{domain.replace('.', '_')}"
    headers = {"Authorization": f"Bearer {env['PROVISION_BILLING_TOKEN']}"}
    return httpx.request(method, url, headers=headers, trust_env=False, timeout=10)


def layer_of(env: dict[str, str]) -> Any:
    from provisioner.config import load_settings
    from provisioner.storage import DataLayer

    return DataLayer.from_settings(load_settings(env=env))
