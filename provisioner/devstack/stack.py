"""The real local stack as one object: `up`, `down`, `status`, `env`.

State lives in one folder (by default the checkout's git-ignored var/stack): chosen ports
(ports.json), where PostgreSQL's cluster lives (stack.json), PID files, logs, configs and the
env.sh that points every setting at the stack. `up` is idempotent and, when everything already
runs, only re-checks: the tests call it at every session start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner.config import load_settings
from provisioner.devstack.base import Component, ComponentStatus
from provisioner.devstack.billing import BillingServer
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.moto import Moto
from provisioner.devstack.nginx import Nginx
from provisioner.devstack.pebble import ChallTestSrv, Pebble
from provisioner.devstack.ports import (
    PORT_NAMES,
    UDP_PORTS,
    busy_port_message,
    is_free,
    read_recorded,
    resolve_ports,
)
from provisioner.devstack.postgres import DEFAULT_PG_BIN, Postgres, choose_base, fallback_base
from provisioner.devstack.process import settle, write_if_changed
from provisioner.fsutil import FileLock, LockBusy, write_atomically

__all__ = ["ComponentStatus", "DevStack", "DevStackError"]

LOCK_WAIT_SECONDS = 120.0
COMPONENT_NAMES = ("postgres", "nginx", "challtestsrv", "pebble", "moto", "billing")


@dataclass(frozen=True)
class Components:
    """The stack's servers; `all()` is the start order, and `down` stops in reverse."""

    postgres: Postgres
    nginx: Nginx
    challtestsrv: ChallTestSrv
    pebble: Pebble
    moto: Moto
    billing: BillingServer

    def all(self) -> list[Component]:
        return [self.postgres, self.nginx, self.challtestsrv, self.pebble, self.moto, self.billing]


class DevStack:
    """PostgreSQL, nginx, pebble + challtestsrv and moto, on loopback, owned by one state folder."""

    def __init__(
        self,
        state_dir: Path,
        ports: dict[str, int] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`ports` pins some ports (beats PROVISION_DEV_*_PORT); `environ` replaces os.environ."""
        self.state_dir = Path(state_dir).expanduser().absolute()
        self._explicit_ports = dict(ports or {})
        self._environ = environ

    @classmethod
    def default(cls) -> DevStack:
        """The checkout's own stack, in `<state_dir>/stack` (var/stack in a checkout)."""
        return cls(load_settings().state_dir / "stack")

    # ------------------------------------------------------------------ state files
    @property
    def ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def stack_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env.sh"

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _pg_bin(self) -> Path:
        return Path(self.environ.get("PROVISION_PG_BIN") or DEFAULT_PG_BIN)

    def _recorded_pg_base(self) -> Path | None:
        try:
            raw = json.loads(self.stack_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DevStackError(
                f"{self.stack_file} is unreadable ({exc}); run `provision dev down`, delete it, "
                "and run `provision dev up` again"
            ) from None
        base = raw.get("pg_base") if isinstance(raw, dict) else None
        return Path(base) if isinstance(base, str) and base.startswith("/") else None

    def pg_base(self) -> Path:
        """Where this stack's PostgreSQL folder is (recorded by `up`, else where it would go)."""
        return self._recorded_pg_base() or choose_base(self.state_dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state folder (two test sessions may start together)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.state_dir / ".lock")
        try:
            lock.acquire(LOCK_WAIT_SECONDS)
        except LockBusy:
            raise DevStackError(
                f"another `provision dev` command has held {self.state_dir}/.lock "
                f"for {LOCK_WAIT_SECONDS:g} s; wait for it or stop it"
            ) from None
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ components
    def _components(self, ports: dict[str, int], pg_base: Path) -> Components:
        return Components(
            Postgres(ports, pg_base, self._pg_bin()),
            Nginx(ports, self.state_dir),
            ChallTestSrv(ports, self.state_dir),
            Pebble(ports, self.state_dir),
            Moto(ports, self.state_dir),
            BillingServer(ports, self.state_dir),
        )

    def _conflicts(
        self, components: list[Component], ours: set[int], ports: dict[str, int]
    ) -> list[str]:
        """Ports that stopped components need but someone else holds."""
        messages = []
        for component in components:
            if component.pid() is not None:
                continue
            # Killed a moment ago, it may hold its ports for a few more milliseconds.
            settle(component.pidfile)
            for name in component.listen_ports:
                port = ports[name]
                if port not in ours and not is_free(port, udp=name in UDP_PORTS):
                    messages.append(busy_port_message(name, port, component.name, self.ports_file))
        return messages

    # ------------------------------------------------------------------ public API
    def up(self) -> dict[str, str]:
        """Start what is not running, re-check what is, and return the stack's environment.

        Errors come before anything starts when a port is taken, so a failed `up` changes nothing.
        """
        # Malformed overrides are refused before anything (even the state folder) is made.
        resolve_ports({}, self._explicit_ports, self.environ, allocate=False)
        with self._locked():
            recorded = read_recorded(self.ports_file)
            ports = resolve_ports(recorded, self._explicit_ports, self.environ, allocate=True)
            recorded_base = self._recorded_pg_base()
            base = recorded_base or choose_base(self.state_dir)
            components = self._components(ports, base)

            # Components started on ports that an override has since changed: restart them.
            outdated: list[Component] = []
            if recorded_base is not None and set(recorded) == set(PORT_NAMES):
                for component in self._components(recorded, recorded_base).all():
                    keys = (*component.listen_ports, *component.config_ports)
                    if any(recorded[k] != ports[k] for k in keys) and component.pid() is not None:
                        outdated.append(component)
            ours = {recorded[k] for c in outdated for k in c.listen_ports}
            conflicts = self._conflicts(components.all(), ours, ports)
            if conflicts:
                raise DevStackError("\n".join(conflicts))

            if recorded != ports:
                write_atomically(self.ports_file, json.dumps(ports, indent=2) + "\n")
            if recorded_base is None:
                write_atomically(
                    self.stack_file, json.dumps({"pg_base": str(base)}, indent=2) + "\n"
                )
            for component in outdated:
                component.stop()
            self._start(components)
            env = self._env(ports, base)
            # It holds the billing server's token: readable by its owner only.
            write_if_changed(self.env_file, render_exports(env), mode=0o600)
            return env

    def _start(self, components: Components) -> None:
        postgres, nginx, pebble = components.postgres, components.nginx, components.pebble
        challtestsrv, moto = components.challtestsrv, components.moto
        billing = components.billing
        launched: set[str] = set()

        def launch(component: Component) -> None:
            if component.pid() is None:
                component.prepare()
                component.launch()
                launched.add(component.name)

        def ready(component: Component) -> None:
            if not component.probe():
                component.wait_ready()
            if component.name in launched:
                component.after_start()

        # moto is the slowest to come up: it imports while the others start.
        launch(moto)
        launch(billing)
        launch(challtestsrv)
        launch(postgres)
        ready(postgres)
        postgres.ensure_database()
        if nginx.pid() is None:
            launch(nginx)
        else:
            nginx.reload_if_changed()
        ready(nginx)
        ready(challtestsrv)
        launch(pebble)
        ready(pebble)
        if not pebble.issuer_root.is_file():
            pebble.fetch_issuer_root()
        ready(moto)
        moto.ensure_hosted_zones()
        ready(billing)

    def down(self) -> list[str]:
        """Stop what this stack started (by PID files checked against /proc); names stopped."""
        if not self.state_dir.is_dir():
            return []
        with self._locked():
            recorded = read_recorded(self.ports_file)
            if set(recorded) != set(PORT_NAMES):
                return []
            recorded_base = self._recorded_pg_base()
            # Without stack.json, the cluster may be in either place: look in both.
            bases = (
                [recorded_base]
                if recorded_base is not None
                else [self.state_dir / "pg", fallback_base(self.state_dir)]
            )
            stopped: list[str] = []
            for component in reversed(self._components(recorded, bases[0]).all()[1:]):
                if component.stop():
                    stopped.append(component.name)
            postgres_stopped = False
            for base in bases:
                if Postgres(recorded, base, self._pg_bin()).stop():
                    postgres_stopped = True
            if postgres_stopped:
                stopped.append("postgres")
            return stopped

    def purge(self) -> list[str]:
        """`down`, then delete the state folder and PostgreSQL's folder (all data is lost)."""
        stopped = self.down()
        base = self._recorded_pg_base()
        for folder in (fallback_base(self.state_dir), base):
            if folder is not None and folder.name.startswith("provision-pg-"):
                shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return stopped

    def status(self) -> list[ComponentStatus]:
        """Each component: running (alive and answering), PID, endpoint, and a detail line."""
        recorded = read_recorded(self.ports_file)
        if set(recorded) != set(PORT_NAMES):
            return [
                ComponentStatus(name, False, None, "", "never started: run `provision dev up`")
                for name in COMPONENT_NAMES
            ]
        return [c.status() for c in self._components(recorded, self.pg_base()).all()]

    def env(self) -> dict[str, str]:
        """The settings that point the tool at this stack (needs the state an `up` wrote)."""
        recorded = read_recorded(self.ports_file)
        base = self._recorded_pg_base()
        if set(recorded) != set(PORT_NAMES) or base is None:
            raise DevStackError(
                f"no dev stack state in {self.state_dir}; run `provision dev up` first"
            )
        return self._env(recorded, base)

    def _env(self, ports: dict[str, int], pg_base: Path) -> dict[str, str]:
        postgres = Postgres(ports, pg_base, self._pg_bin())
        nginx = Nginx(ports, self.state_dir)
        pebble = Pebble(ports, self.state_dir)
        billing = BillingServer(ports, self.state_dir)
        return {
            "PROVISION_PG_DSN": postgres.dsn(),
            "PROVISION_DEV_STATE": str(self.state_dir),
            "PROVISION_NGINX_CMD": shlex.join(nginx.command()),
            "PROVISION_NGINX_PREFIX": str(nginx.prefix),
            "PROVISION_NGINX_VHOST_DIR": str(nginx.vhost_dir),
            "PROVISION_NGINX_ENABLED_DIR": str(nginx.enabled_dir),
            "PROVISION_NGINX_LISTEN": "127.0.0.1",
            "PROVISION_NGINX_HTTP_PORT": str(ports["http"]),
            "PROVISION_NGINX_HTTPS_PORT": str(ports["https"]),
            "PROVISION_SITES_ROOT": str(nginx.sites_root),
            "PROVISION_ACME_WEBROOT": str(nginx.webroot),
            "PROVISION_ACME_DIRECTORY": pebble.directory_url,
            "PROVISION_ACME_CA_BUNDLE": str(pebble.ca_bundle),
            "PROVISION_ACME_ISSUER_ROOT": str(pebble.issuer_root),
            "PROVISION_CHALLTESTSRV_URL": ChallTestSrv(ports, self.state_dir).management_url,
            # CAA and DNS-01 TXT records are read from challtestsrv, pebble's DNS.
            "PROVISION_DNS_RESOLVER": f"127.0.0.1:{ports['dns']}",
            "PROVISION_CERT_DIR": str(self.state_dir / "certs"),
            "PROVISION_AWS_ENDPOINT": Moto(ports, self.state_dir).url,
            "PROVISION_DNS_PROVIDER": "route53",
            "PROVISION_PUBLIC_IPV4": "127.0.0.1",
            "PROVISION_BILLING_URL": billing.url,
            "PROVISION_BILLING_TOKEN": billing.token(),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # ------------------------------------------------------------------ outage drills
    def _postgres(self) -> Postgres:
        recorded = read_recorded(self.ports_file)
        base = self._recorded_pg_base()
        if "pg" not in recorded or base is None:
            raise DevStackError(f"no dev stack in {self.state_dir}; run `provision dev up` first")
        return Postgres(recorded, base, self._pg_bin())

    def stop_postgres(self) -> bool:
        """Stop only PostgreSQL (fast shutdown); True when it was running."""
        with self._locked():
            return self._postgres().stop()

    def start_postgres(self) -> None:
        """Start PostgreSQL again on its recorded port, with its data as it was."""
        with self._locked():
            postgres = self._postgres()
            if postgres.pid() is None:
                conflicts = self._conflicts([postgres], set(), postgres.ports)
                if conflicts:
                    raise DevStackError("\n".join(conflicts))
                postgres.prepare()
                postgres.launch()
            if not postgres.probe():
                postgres.wait_ready()
            postgres.ensure_database()


def render_exports(env: Mapping[str, str]) -> str:
    """`export NAME=value` lines, shell-quoted, for `eval "$(provision dev env)"` or `source`."""
    lines = ['# The provision dev stack: source this file or eval "$(provision dev env)".']
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return "\n".join(lines) + "\n"
