"""What every component of the stack offers, and the readiness probes they share."""

from __future__ import annotations

import functools
import os
import pwd
import signal
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import httpx

from provisioner.devstack.process import live_pid, stop_pid, wait_until

# Readiness probes must answer fast on loopback; a slow answer is a sick component.
PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `provision dev status`."""

    name: str
    running: bool
    pid: int | None
    endpoint: str
    detail: str


@functools.cache
def _plain_context() -> ssl.SSLContext:
    """Built once: httpx wants a context even for http:// URLs, and building one is not free."""
    return ssl.create_default_context()


def http_answers(url: str, cafile: Path | None = None) -> bool:
    """True when `url` gives any HTTP answer (TLS verified against `cafile` for https)."""
    verify = ssl.create_default_context(cafile=str(cafile)) if cafile else _plain_context()
    try:
        with httpx.Client(verify=verify, timeout=PROBE_TIMEOUT, trust_env=False) as client:
            client.get(url)
    except (httpx.HTTPError, OSError):
        return False
    return True


def minimal_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A small, predictable environment for the servers (none of the caller's secrets)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }
    env.update(extra or {})
    return env


def can_traverse(path: Path, user: str) -> bool:
    """True when OS `user` may enter every folder from / down to `path` (by mode bits)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    uid = entry.pw_uid
    gids = set(os.getgrouplist(user, entry.pw_gid))
    if uid == 0:
        return True
    for folder in [path, *path.parents]:
        try:
            st = folder.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid in gids:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True


class Component(ABC):
    """A server of the stack: started detached, probed for readiness, stopped by PID."""

    name: str = ""
    # Port names it binds (checked free before it starts) ...
    listen_ports: tuple[str, ...] = ()
    # ... and port names written into its configuration (a change means a restart).
    config_ports: tuple[str, ...] = ()
    start_timeout: float = 15.0
    stop_signal: signal.Signals = signal.SIGTERM
    # The file holding the server's PID (written by us, or by the server itself).
    pidfile: Path

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports

    @property
    @abstractmethod
    def log(self) -> Path:
        """Where the server's output goes, named in errors."""

    @abstractmethod
    def patterns(self) -> tuple[str, ...]:
        """What the server's /proc/PID/cmdline holds: tells our process from a recycled PID."""

    def pid(self) -> int | None:
        """The PID of our running server, or None."""
        return live_pid(self.pidfile, self.patterns())

    @abstractmethod
    def launch(self) -> None:
        """Start the server without waiting for it to answer."""

    @abstractmethod
    def probe(self) -> bool:
        """True when the server answers right now."""

    def stop(self) -> bool:
        """Stop the server if it runs (signal, bounded wait, KILL); True when it was running."""
        return stop_pid(self.pidfile, self.patterns(), self.stop_signal) is not None

    @abstractmethod
    def endpoint(self) -> str:
        """Where clients reach it."""

    def after_start(self) -> None:
        """Work needed after each fresh start (pebble fetches its new root here)."""
        return None

    def prepare(self) -> None:
        """Files the server needs before it starts (configs, certificates)."""
        return None

    def wait_ready(self) -> None:
        """Wait, bounded, until the server answers; fail naming its log."""
        wait_until(
            self.probe,
            self.start_timeout,
            self.name,
            log=self.log,
            still_alive=lambda: self.pid() is not None,
        )

    def status(self) -> ComponentStatus:
        pid = self.pid()
        if pid is None:
            return ComponentStatus(self.name, False, None, self.endpoint(), "not running")
        if not self.probe():
            detail = f"pid {pid} runs but does not answer; see {self.log}"
            return ComponentStatus(self.name, False, pid, self.endpoint(), detail)
        return ComponentStatus(self.name, True, pid, self.endpoint(), f"log {self.log}")
