"""A private nginx master for the stack: own prefix, config, PID file, logs and temp folders.

It never touches the system nginx: `-e` is always passed (otherwise nginx opens
/var/log/nginx/error.log before reading its config) and everything lives under the prefix.
As on Debian, vhosts are written to `<prefix>/sites-available/` and enabled by a link in
`<prefix>/sites-enabled/`, which nginx.conf includes (beside `conf.d/*.conf`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from provisioner.devstack.base import Component, can_traverse, http_answers, minimal_env
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.process import wait_until, write_if_changed

# Paths go into nginx.conf between double quotes; these would end the string or be expanded.
_CONF_SAFE = re.compile(r'^[^"\\${}\x00-\x1f;]+$')
WORKER_USER = "nobody"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    """The nginx executable (root's PATH has /usr/sbin, other users' often not)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise DevStackError(
            "nginx is not installed; run `apt-get install nginx` (scripts/bootstrap.sh)"
        )
    return found


def _quoted(path: Path) -> str:
    if not _CONF_SAFE.match(str(path)):
        raise DevStackError(
            f"{path}: nginx's config cannot hold this path (it has a quote, backslash, $, brace, "
            "semicolon or control character); move the checkout to a plainer path"
        )
    return f'"{path}"'


class Nginx(Component):
    """The master runs as us; its workers as `nobody` when they can reach the web roots."""

    name = "nginx"
    listen_ports = ("http", "https")
    config_ports = ("http",)
    start_timeout = 10.0
    # QUIT: graceful; the workers finish and exit before the master does.
    stop_signal = signal.SIGQUIT

    def __init__(self, ports: dict[str, int], state_dir: Path) -> None:
        super().__init__(ports)
        self.state_dir = state_dir
        self.prefix = state_dir / "nginx"
        self.conf = self.prefix / "nginx.conf"
        self.pidfile = self.prefix / "nginx.pid"
        self.error_log = self.prefix / "logs" / "error.log"
        self.vhost_dir = self.prefix / "sites-available"
        self.enabled_dir = self.prefix / "sites-enabled"
        self.conf_d = self.prefix / "conf.d"
        self.webroot = state_dir / "www" / "acme"
        self.sites_root = state_dir / "sites"

    @property
    def log(self) -> Path:
        return self.error_log

    def command(self) -> list[str]:
        """The argv prefix that addresses this master (append `-t`, `-s reload`, ...)."""
        return [
            nginx_binary(),
            "-p",
            f"{self.prefix}/",
            "-e",
            str(self.error_log),
            "-c",
            str(self.conf),
        ]

    def endpoint(self) -> str:
        return (
            f"http://127.0.0.1:{self.ports['http']} (https port {self.ports['https']} for vhosts)"
        )

    def patterns(self) -> tuple[str, ...]:
        return ("nginx: master", str(self.conf))

    def worker_user_line(self) -> str:
        """Workers run as nobody (as in production) unless nobody cannot reach our folders.

        A checkout under a private folder (/root, a 0700 temporary dir) is unreachable for
        nobody; there the workers run as root, which is only acceptable on this loopback stack.
        """
        if os.geteuid() != 0:
            return "# not root: workers run as the current user"
        if can_traverse(self.webroot, WORKER_USER) and can_traverse(self.sites_root, WORKER_USER):
            return f"# workers run as {WORKER_USER}, as in production"
        return f"user root; # {self.state_dir} is not reachable by {WORKER_USER}"

    def render(self) -> str:
        tmp = self.prefix / "tmp"
        mime = Path("/etc/nginx/mime.types")
        types = f"include {_quoted(mime)};" if mime.is_file() else "types { text/html html; }"
        temp_lines = "\n".join(
            f"    {kind}_temp_path {_quoted(tmp / kind)};" for kind in TEMP_PATHS
        )
        return f"""# Private nginx of the provision dev stack (rewritten by `provision dev up`).
# Vhosts go in {self.vhost_dir}/, enabled by links in {self.enabled_dir}/.
daemon on;
worker_processes 1;
{self.worker_user_line()}
pid {_quoted(self.pidfile)};
error_log {_quoted(self.error_log)} warn;
events {{ worker_connections 256; }}
http {{
    {types}
    default_type application/octet-stream;
    # Long site names (www. + a long domain) overflow the default 64-byte buckets.
    server_names_hash_bucket_size 128;
    access_log {_quoted(self.prefix / "logs" / "access.log")};
{temp_lines}
    server {{
        listen 127.0.0.1:{int(self.ports["http"])} default_server;
        server_name _;
        location /.well-known/acme-challenge/ {{
            root {_quoted(self.webroot)};
            default_type text/plain;
        }}
        location / {{ return 404 "no vhost\\n"; }}
    }}
    include {_quoted(self.conf_d / "*.conf")};
    include {_quoted(self.enabled_dir / "*.conf")};
}}
"""

    def _nginx(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command(), *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            env=minimal_env(),
            start_new_session=True,
            check=False,
        )

    def write_config(self) -> bool:
        """Write nginx.conf and test it; True when its content changed."""
        for folder in (
            self.prefix / "logs",
            self.prefix / "tmp",
            self.conf_d,
            self.vhost_dir,
            self.enabled_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.webroot, self.sites_root):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o755)  # noqa: S103 - workers (nobody) read web roots
        changed = write_if_changed(self.conf, self.render())
        if changed or self.pid() is None:
            tested = self._nginx("-t", "-q")
            if tested.returncode != 0:
                raise DevStackError(
                    f"nginx rejects {self.conf} (or a vhost in {self.enabled_dir}): "
                    f"{tested.stderr.strip()[-600:]}"
                )
        return changed

    def prepare(self) -> None:
        self.write_config()

    def reload_if_changed(self) -> None:
        """Keep a running master, but make it read a changed config (reload is asynchronous)."""
        if self.write_config():
            done = self._nginx("-s", "reload")
            if done.returncode != 0:
                raise DevStackError(f"nginx reload failed: {done.stderr.strip()[-400:]}")

    def launch(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        done = self._nginx()
        if done.returncode != 0:
            raise DevStackError(
                f"nginx failed to start on 127.0.0.1:{self.ports['http']}: "
                f"{done.stderr.strip()[-600:]}; see {self.error_log}"
            )
        # With `daemon on` the master writes its PID file just after the launcher exits.
        wait_until(lambda: self.pid() is not None, self.start_timeout, "nginx's PID file", self.log)

    def probe(self) -> bool:
        return http_answers(f"http://127.0.0.1:{self.ports['http']}/")
