"""What the dns and billing tests share: settings aimed at the real local stack, a Route53
client on its moto, unique site names, and a private billing reference server for fault drills
(faults armed on the stack's own server would hit other tests sharing it)."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from provisioner.config import Settings, load_settings
from provisioner.engine.step import RunContext
from provisioner.site.spec import SiteSpec, SiteType

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@functools.cache
def stack_env() -> dict[str, str]:
    """The local stack's environment (`provision dev up`, idempotent), once per process."""
    from provisioner.devstack.stack import DevStack

    return DevStack.default().up()


def use_stack_aws_credentials(env: Mapping[str, str]) -> None:
    """boto3 reads credentials from the process environment: moto's dummy ones, when unset."""
    for name in (*AWS_VARS, "AWS_EC2_METADATA_DISABLED"):
        os.environ.setdefault(name, env[name])


def stack_settings(env: Mapping[str, str], state_dir: Path) -> Settings:
    """Settings exactly as `eval "$(provision dev env)"` gives them, with a private state dir."""
    use_stack_aws_credentials(env)
    values = {**env, "PROVISION_STATE_DIR": str(state_dir)}
    return load_settings(env=values, config_file=state_dir / "no-provision.toml")


def route53(env: Mapping[str, str]) -> Any:
    return boto3.client(
        "route53",
        endpoint_url=env["PROVISION_AWS_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def zone_id(client: Any, name: str) -> str:
    for zone in client.list_hosted_zones()["HostedZones"]:
        if zone["Name"] == f"{name}.":
            return str(zone["Id"]).rsplit("/", 1)[-1]
    raise AssertionError(f"no hosted zone {name} in moto")


def upsert(client: Any, zone: str, name: str, rtype: str, ttl: int, *values: str) -> None:
    """Set a simple record set in moto directly, as another tool or a person would."""
    rrset = {
        "Name": f"{name}.",
        "Type": rtype,
        "TTL": ttl,
        "ResourceRecords": [{"Value": v} for v in values],
    }
    batch = {"Changes": [{"Action": "UPSERT", "ResourceRecordSet": rrset}]}
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)


def unique_domain(zone: str = "aeims.test") -> str:
    return f"t{uuid.uuid4().hex[:10]}.{zone}"


def site(domain: str, kind: SiteType = SiteType.CUSTOMER, name: str = "New Flirts") -> SiteSpec:
    return SiteSpec(domain=domain, name=name, type=kind, template="default")


@contextlib.contextmanager
def run_context(settings: Settings, run_id: str = "test-run") -> Iterator[RunContext]:
    ctx = RunContext(run_id=run_id, target="test", params={}, settings=settings)
    try:
        yield ctx
    finally:
        ctx.close_clients()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BillingServerProcess:
    """A private reference billing server (with test hooks), started and stopped by a test."""

    folder: Path
    port: int
    token: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.folder / "sites.json"

    def start(self) -> None:
        token_file = self.folder / "token"
        if not token_file.exists():
            token_file.write_text(self.token + "\n")
            token_file.chmod(0o600)
        argv = [
            sys.executable,
            "-m",
            "provisioner.devstack.billing_server",
            "--port",
            str(self.port),
            "--state",
            str(self.state_file),
            "--token-file",
            str(token_file),
            "--test-hooks",
        ]
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            assert self.process.poll() is None, (self.folder / "server.log").read_text()
            assert time.monotonic() < deadline, "the billing server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=5, **kwargs)

    def fail_next(self, status: int | str, count: int, retry_after: str | None = None) -> None:
        params: dict[str, Any] = {"status": status, "count": count}
        if retry_after is not None:
            params["retry_after"] = retry_after
        assert self.call("POST", "/_test/fail-next", params=params).status_code == 200


@contextlib.contextmanager
def billing_server(folder: Path) -> Iterator[BillingServerProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    server = BillingServerProcess(folder, free_port(), secrets.token_urlsafe(24))
    server.start()
    try:
        yield server
    finally:
        server.stop()
