"""moto's server standing in for Route53 (and any other AWS API) on loopback."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from provisioner.devstack.base import Component, http_answers, minimal_env
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.process import spawn

# Hosted zones every stack's Route53 holds: the tests use <random>.aeims.test, the demo a name
# under newflirts.com.
HOSTED_ZONES = ("aeims.test", "newflirts.com")


def moto_server_binary() -> Path:
    """moto_server from the same venv as this Python (the project's dev extras install it)."""
    path = Path(sys.executable).parent / "moto_server"
    if not path.exists():
        raise DevStackError(
            f"{path} is missing; install the dev extras: "
            f"{sys.executable} -m pip install -e '.[dev]' (scripts/bootstrap.sh does it)"
        )
    return path


class Moto(Component):
    """Started with `moto_server -H 127.0.0.1 -p PORT`; ready when /moto-api/ answers."""

    name = "moto"
    listen_ports = ("moto",)
    config_ports = ("moto",)
    # A Python server importing moto and Flask: the slowest of the stack to come up.
    start_timeout = 30.0

    def __init__(self, ports: dict[str, int], state_dir: Path) -> None:
        super().__init__(ports)
        self.folder = state_dir / "moto"
        self.pidfile = self.folder / "moto.pid"

    @property
    def log(self) -> Path:
        return self.folder / "moto.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['moto']}"

    def endpoint(self) -> str:
        return self.url

    def patterns(self) -> tuple[str, ...]:
        return ("moto_server", f"-p {self.ports['moto']}")

    def launch(self) -> None:
        argv = [str(moto_server_binary()), "-H", "127.0.0.1", "-p", str(self.ports["moto"])]
        spawn(argv, self.pidfile, self.log, env=minimal_env())

    def probe(self) -> bool:
        return http_answers(f"{self.url}/moto-api/")

    def ensure_hosted_zones(self) -> None:
        """Create the stack's hosted zones that are missing (after a start, or a moto reset)."""
        import boto3

        route53 = boto3.client(
            "route53",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
        )
        try:
            pages = route53.get_paginator("list_hosted_zones").paginate()
            have = {zone["Name"].rstrip(".") for page in pages for zone in page["HostedZones"]}
            for name in HOSTED_ZONES:
                if name not in have:
                    reference = f"provision-dev-{name}-{uuid.uuid4().hex}"
                    route53.create_hosted_zone(Name=name, CallerReference=reference)
        except Exception as exc:  # botocore raises many kinds; all mean the same here
            raise DevStackError(
                f"cannot create moto's hosted zones: {exc}; see {self.log}"
            ) from None
