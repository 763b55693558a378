"""moto's server standing in for Route53 (and any other AWS API) on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

from provisioner.devstack.base import Component, http_answers, minimal_env
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.process import spawn


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
