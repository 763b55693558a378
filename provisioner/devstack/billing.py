"""The SexaComms billing reference server (billing_server.py) as a component of the stack."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from provisioner.devstack.base import Component, http_answers, minimal_env
from provisioner.devstack.process import spawn
from provisioner.fsutil import create_atomically, private_dir

MODULE = "provisioner.devstack.billing_server"


class BillingServer(Component):
    """`python -m provisioner.devstack.billing_server`, its sites kept in billing/sites.json."""

    name = "billing"
    listen_ports = ("billing",)
    config_ports = ("billing",)

    def __init__(self, ports: dict[str, int], state_dir: Path) -> None:
        super().__init__(ports)
        self.folder = state_dir / "billing"
        self.pidfile = self.folder / "billing.pid"
        self.state_file = self.folder / "sites.json"
        self.token_file = self.folder / "token"

    @property
    def log(self) -> Path:
        return self.folder / "billing.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['billing']}"

    def endpoint(self) -> str:
        return self.url

    def patterns(self) -> tuple[str, ...]:
        return (MODULE, f"--port {self.ports['billing']}")

    def token(self) -> str:
        """The stack's bearer token: made once (0600) and kept, so the env stays the same."""
        if not self.token_file.is_file():
            private_dir(self.folder)
            create_atomically(self.token_file, secrets.token_urlsafe(32) + "\n", 0o600)
        return self.token_file.read_text("utf-8").strip()

    def prepare(self) -> None:
        self.token()

    def launch(self) -> None:
        argv = [
            sys.executable,
            "-m",
            MODULE,
            "--port",
            str(self.ports["billing"]),
            "--state",
            str(self.state_file),
            "--token-file",
            str(self.token_file),
            "--test-hooks",
        ]
        spawn(argv, self.pidfile, self.log, env=minimal_env())

    def probe(self) -> bool:
        return http_answers(f"{self.url}/healthz")
