"""What the site drills share: environments for real `provision` processes on the local stack,
the residue snapshot (`world`, from the create tests), nginx's own verdict on its config, and
a prober that asks sites over verified HTTPS in a loop while other work goes on."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.site_support import stack_env
from tests.test_site_create import https_get, world

REPO = Path(__file__).resolve().parents[1]
PROVISION = str(Path(sys.executable).parent / "provision")
FIXTURES = REPO / "tests" / "fixtures" / "aeims"
SITE_NAME = "New Flirts"

__all__ = ["https_get", "world"]


def site_env(
    state_dir: Path,
    data_dir: Path,
    modules: str = "tests.drill_pipelines",
    cert_dir: Path | None = None,
) -> dict[str, str]:
    """A `provision` environment on the stack: the given state folder (journal, locks, the
    host's nginx reload lock: runs that share a host share it), a private copy of the AEIMS
    files (made on first use) and, when given, a private certificate folder (see
    `durable_cert_dir`)."""
    if not data_dir.exists():
        shutil.copytree(FIXTURES, data_dir)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env = {
        **base,
        **stack_env(),
        "PROVISION_STATE_DIR": str(state_dir),
        "PROVISION_DATA_DIR": str(data_dir),
        "PROVISION_PIPELINE_MODULES": modules,
        "PROVISION_JOURNAL": "files",  # the stack's database is shared with the demo
        "PYTHONPATH": str(REPO),
    }
    if cert_dir is not None:
        env["PROVISION_CERT_DIR"] = str(cert_dir)
    return env


def durable_cert_dir(label: str) -> Path:
    """A certificate folder of its own (its ACME account, and its rate-limit ledger, which on
    the shared stack fills up over many test runs) that outlives pytest's temporary folders:
    the stack's nginx loads every vhost a test leaves behind, and one naming certificate files
    that pytest has since deleted makes `nginx -t` fail for every later run on the host."""
    folder = (
        Path(stack_env()["PROVISION_DEV_STATE"]) / "test-certs" / f"{label}-{uuid.uuid4().hex[:8]}"
    )
    folder.mkdir(parents=True)
    return folder


def still_named(cert_dir: Path) -> list[str]:
    """The stack's enabled vhosts that name files under `cert_dir` (it may go once none do)."""
    enabled = Path(stack_env()["PROVISION_NGINX_ENABLED_DIR"])
    return [
        p.name for p in enabled.glob("*.conf") if str(cert_dir) in p.read_text(errors="replace")
    ]


def provision(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROVISION, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def param_args(params: dict[str, Any]) -> list[str]:
    """`-p key=json` pairs for `provision run`."""
    return [arg for k, v in params.items() for arg in ("-p", f"{k}={json.dumps(v)}")]


def run_json(env: dict[str, str], *args: str, expect: int = 0) -> dict[str, Any]:
    """A `provision ... --json` command that must exit `expect`; its JSON answer."""
    done = provision(env, *args, "--json")
    assert done.returncode == expect, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def site_params(domain: str, name: str = SITE_NAME) -> dict[str, str]:
    return {"domain": domain, "name": name, "type": "customer", "template": "default"}


def nginx_verdict(env: dict[str, str]) -> str | None:
    """None when `nginx -t` accepts the stack's whole config; else what it said.

    Taken under the runs' nginx reload lock: nginx globs `sites-enabled/*.conf` and then opens
    each file, so a vhost another run removes in between fails a test that is not serialized
    with it (the runs serialize theirs under this lock)."""
    from provisioner.config import load_settings
    from provisioner.fsutil import file_lock
    from provisioner.site.nginx_control import Nginx

    argv = [*shlex.split(env["PROVISION_NGINX_CMD"]), "-t"]
    with file_lock(Nginx(load_settings(env=env)).reload_lock_path, timeout=60):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return None if done.returncode == 0 else done.stderr.strip()


def answers_with(env: dict[str, str], domain: str, name: str) -> str | None:
    """None when the site answers 200 over verified HTTPS with its name; else what it did."""
    try:
        answer = https_get(env, domain)
    except httpx.HTTPError as exc:
        return f"{domain}: {type(exc).__name__}: {exc}"
    if answer.status_code != 200 or name not in answer.text:
        return f"{domain}: {answer.status_code} {answer.text[:120]!r}"
    return None


@dataclass
class Prober:
    """Asks every site in `sites` (domain -> name) over verified HTTPS, round after round,
    until stopped; every answer that is not 200 with the site's name is kept."""

    env: dict[str, str]
    sites: dict[str, str]
    pause: float = 0.05  # between rounds: the prober must not starve the runs of CPU
    rounds: int = 0
    probes: int = 0
    bad: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self._stop.is_set():
            for domain, name in self.sites.items():
                said = answers_with(self.env, domain, name)
                self.probes += 1
                if said is not None:
                    self.bad.append(f"{time.strftime('%H:%M:%S')} {said}")
            self.rounds += 1
            self._stop.wait(self.pause)

    @contextmanager
    def running(self) -> Iterator[Prober]:
        thread = threading.Thread(target=self.loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(30)


def residue(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two `world` snapshots differ, as short `path: before -> after` lines."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            found += residue(before.get(key), after.get(key), f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d
            for i, (b, a) in enumerate(zip(before, after, strict=True))
            for d in residue(b, a, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path}: {str(before)[:150]} -> {str(after)[:150]}"]
