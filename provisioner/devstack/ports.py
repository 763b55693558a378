"""Loopback ports of one stack: chosen free once, recorded, reused, overridable.

Two clones on one machine each get their own free ports, so their stacks never collide; a
developer who needs a fixed port sets `PROVISION_DEV_<NAME>_PORT`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from provisioner.devstack.errors import DevStackError
from provisioner.fsutil import file_lock

LOOPBACK = "127.0.0.1"

# Port name -> the environment variable that overrides it.
PORT_ENV_VARS: dict[str, str] = {
    "pg": "PROVISION_DEV_PG_PORT",
    "http": "PROVISION_DEV_HTTP_PORT",
    "https": "PROVISION_DEV_HTTPS_PORT",
    "acme": "PROVISION_DEV_ACME_PORT",
    "acme_mgmt": "PROVISION_DEV_ACME_MGMT_PORT",
    "dns": "PROVISION_DEV_DNS_PORT",
    "chall_mgmt": "PROVISION_DEV_CHALLTESTSRV_PORT",
    "moto": "PROVISION_DEV_MOTO_PORT",
    "billing": "PROVISION_DEV_BILLING_PORT",
}
PORT_NAMES: tuple[str, ...] = tuple(PORT_ENV_VARS)
# Ports served over UDP as well as TCP (challtestsrv's DNS).
UDP_PORTS = frozenset({"dns"})
# New ports are drawn from PICK_FLOOR up to the start of the ephemeral range.
PICK_FLOOR = 20000
# How long a chosen port stays reserved for the stack that chose it (until it is bound).
CLAIM_SECONDS = 300.0


def _valid_port(value: object, source: str) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        raise DevStackError(f"{source}={value!r} is not a port number; use 1024-65535") from None
    if not 1024 <= port <= 65535:
        raise DevStackError(f"{source}={port} is out of range; use a port in 1024-65535")
    return port


def read_recorded(ports_file: Path) -> dict[str, int]:
    """The ports recorded by an earlier `up`, or {} before the first one."""
    try:
        raw = json.loads(ports_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DevStackError(
            f"{ports_file} is unreadable ({exc}); delete it and run `provision dev up` again"
        ) from None
    if not isinstance(raw, dict):
        raise DevStackError(f"{ports_file} is not a JSON object; delete it and run up again")
    return {
        name: _valid_port(raw[name], f"{ports_file}:{name}") for name in PORT_NAMES if name in raw
    }


def is_free(port: int, udp: bool = False) -> bool:
    """True when a server could bind 127.0.0.1:`port` (TCP, and UDP when asked)."""
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # Servers set SO_REUSEADDR, so a port in TIME_WAIT is free to them too.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def candidate_range() -> range:
    """Ports to choose from: below the kernel's ephemeral range.

    A port taken from the ephemeral range and released could be grabbed by any outgoing
    connection (our own readiness probes included) before the server binds it.
    """
    low, _high = _ephemeral_range()
    if low - 1 - PICK_FLOOR >= 2000:
        return range(PICK_FLOOR, low)
    return range(PICK_FLOOR, 65536)


@contextlib.contextmanager
def _claims() -> Iterator[dict[int, float]]:
    """Ports recently handed to some stack of this user, kept while they are not yet bound.

    Two fresh stacks starting at the same moment (two clones' test runs) would otherwise be able
    to pick the same free port before either binds it. The registry lives in a private folder.
    """
    folder = Path(tempfile.gettempdir()) / f"provision-dev-ports-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise DevStackError(f"{folder} is not a folder of ours; remove it and try again")
    with (
        file_lock(folder / "claims.json") as fd,
        os.fdopen(fd, "r+", encoding="utf-8", closefd=False) as fh,
    ):
        try:
            raw = json.loads(fh.read() or "{}")
        except ValueError:
            raw = {}
        now = time.time()
        claims = {int(k): float(v) for k, v in raw.items() if float(v) > now}
        yield claims
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({str(k): v for k, v in claims.items()}))


def pick_free_ports(names: list[str], avoid: set[int]) -> dict[str, int]:
    """A distinct free loopback port per name, claimed so a concurrent stack picks others."""
    if not names:
        return {}
    chosen: dict[str, int] = {}
    candidates = candidate_range()
    with _claims() as claims:
        for name in names:
            for _attempt in range(200):
                port = random.choice(candidates)
                taken = avoid | set(claims) | set(chosen.values())
                if port not in taken and is_free(port, udp=name in UDP_PORTS):
                    chosen[name] = port
                    break
            else:
                raise DevStackError(
                    f"found no free loopback port for {name}; set {PORT_ENV_VARS[name]}"
                )
        expiry = time.time() + CLAIM_SECONDS
        claims.update({port: expiry for port in chosen.values()})
    return chosen


def resolve_ports(
    recorded: Mapping[str, int],
    explicit: Mapping[str, int] | None,
    environ: Mapping[str, str],
    allocate: bool,
) -> dict[str, int]:
    """Ports for every name: explicit argument, then environment, then recorded, then new free ones.

    With `allocate` false, names with no port yet are left out (for read-only status).
    """
    explicit = dict(explicit or {})
    unknown = sorted(set(explicit) - set(PORT_NAMES))
    if unknown:
        raise DevStackError(f"unknown port name(s) {unknown}; known: {', '.join(PORT_NAMES)}")
    ports: dict[str, int] = {}
    for name in PORT_NAMES:
        var = PORT_ENV_VARS[name]
        if name in explicit:
            ports[name] = _valid_port(explicit[name], f"ports[{name!r}]")
        elif environ.get(var, "").strip():
            ports[name] = _valid_port(environ[var], var)
        elif name in recorded:
            ports[name] = recorded[name]
    if allocate:
        missing = [name for name in PORT_NAMES if name not in ports]
        ports.update(pick_free_ports(missing, set(ports.values())))
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            raise DevStackError(
                f"port {port} is given to both {seen[port]} and {name}; set "
                f"{PORT_ENV_VARS[name]} to another port"
            )
        seen[port] = name
    return {name: ports[name] for name in PORT_NAMES if name in ports}


def busy_port_message(name: str, port: int, component: str, ports_file: Path) -> str:
    """How to say that a port we need is held by a process that is not ours, and the fixes."""
    var = PORT_ENV_VARS[name]
    return (
        f"port {port} on 127.0.0.1 ({component}, {var}) is in use by a process that is not "
        f"part of this dev stack; stop that process, or choose another port with "
        f"`export {var}=<free port>`, or delete {ports_file} to pick new free ports"
    )
