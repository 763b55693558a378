"""The stack's own PostgreSQL 15 cluster, on 127.0.0.1 only, tuned for tests (no fsync).

`initdb` and `pg_ctl` refuse to run as root, so as root the server binaries run as the
`postgres` OS user; Python itself never does (a venv under /root is unreadable to that user).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from provisioner.devstack.base import Component, can_traverse, minimal_env
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.process import kill_and_wait, log_tail, wait_exited

DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_OS_USER = "postgres"
DATABASE = "provision"
SUPERUSER = "postgres"
# pg_ctl hands its paths to /bin/sh inside double quotes: these characters would escape them.
_SHELL_QUOTE_SAFE = re.compile(r'^[^"$`\\\n\r]+$')
# The socket folder goes unquoted into pg_ctl's -o string, and sun_path is short.
_SOCKET_DIR_SAFE = re.compile(r"^[A-Za-z0-9_./+-]{1,80}$")


def server_os_user() -> str:
    """Who runs the server binaries: `postgres` when we are root, else ourselves."""
    if os.geteuid() == 0:
        return PG_OS_USER
    return pwd.getpwuid(os.geteuid()).pw_name


def fallback_base(state_dir: Path) -> Path:
    """A folder the `postgres` user can reach, unique to this state dir (so two clones differ)."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"provision-pg-{digest}"  # noqa: S108 - ownership checked on use


def choose_base(state_dir: Path) -> Path:
    """`<state>/pg` when the server's OS user can get there, else the /tmp fallback."""
    inside = state_dir / "pg"
    if can_traverse(state_dir, server_os_user()) and _SHELL_QUOTE_SAFE.match(str(inside)):
        return inside
    return fallback_base(state_dir)


class Postgres(Component):
    """One cluster in `<base>/data`, its log in `<base>/server.log`, its socket in `<base>/sock`."""

    name = "postgres"
    listen_ports = ("pg",)
    config_ports = ("pg",)
    start_timeout = 30.0

    def __init__(self, ports: dict[str, int], base: Path, bin_dir: Path) -> None:
        super().__init__(ports)
        self.base = base
        self.bin_dir = bin_dir
        self.data = base / "data"
        self.socket_dir = base / "sock"
        self.pidfile = self.data / "postmaster.pid"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def port(self) -> int:
        return self.ports["pg"]

    def dsn(self, dbname: str = DATABASE) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def endpoint(self) -> str:
        return self.dsn()

    def patterns(self) -> tuple[str, ...]:
        # The postmaster's command line holds `-D <data>`: that tells ours from any other.
        return (str(self.data),)

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        if not Path(runuser).exists():
            raise DevStackError(
                "`runuser` is missing; install util-linux (apt-get install util-linux)"
            )
        return [runuser, "-u", PG_OS_USER, "--", *argv]

    def _binary(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise DevStackError(
                f"PostgreSQL 15 binary {path} not found; install PostgreSQL 15 with "
                "`apt-get install postgresql-15` (scripts/bootstrap.sh does it) or set "
                "PROVISION_PG_BIN to the folder holding initdb and pg_ctl"
            )
        return str(path)

    def _run(self, argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self._as_server_user(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                env=minimal_env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DevStackError(
                f"{what} did not finish within {timeout:g} s; see {self.log}"
            ) from None

    def _prepare_base(self) -> None:
        """Make the base folder, owned by the server's OS user, 0700; refuse a planted one."""
        try:
            owner = pwd.getpwnam(server_os_user())
        except KeyError:
            raise DevStackError(
                f"OS user {PG_OS_USER!r} does not exist; install PostgreSQL 15 "
                "(apt-get install postgresql-15 creates it)"
            ) from None
        self.base.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.base, 0o700)
        st = os.lstat(self.base)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in {owner.pw_uid, os.geteuid()}:
            raise DevStackError(
                f"{self.base} exists but is not a folder owned by {owner.pw_name} or us; "
                "remove it and run `provision dev up` again"
            )
        for folder in (self.base, self.socket_dir):
            folder.mkdir(mode=0o700, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(folder, owner.pw_uid, owner.pw_gid)
            os.chmod(folder, 0o700)

    def prepare(self) -> None:
        for name in ("initdb", "pg_ctl", "postgres"):
            self._binary(name)
        if not _SHELL_QUOTE_SAFE.match(str(self.base)):
            raise DevStackError(f"{self.base}: PostgreSQL's folder must not contain \" $ ` or \\")
        self._prepare_base()
        if (self.data / "PG_VERSION").is_file():
            return
        if self.data.exists() and any(self.data.iterdir()):
            raise DevStackError(
                f"{self.data} holds files but no cluster (an interrupted initdb?); "
                "remove that folder and run `provision dev up` again"
            )
        done = self._run(
            [
                self._binary("initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-N",
            ],
            "initdb",
            timeout=120,
        )
        (self.base / "initdb.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            raise DevStackError(
                f"initdb of {self.data} failed:\n  {(done.stderr or done.stdout).strip()[-800:]}"
            )

    def _server_options(self) -> str:
        socket_dirs = str(self.socket_dir) if _SOCKET_DIR_SAFE.match(str(self.socket_dir)) else "''"
        return (
            f"-c listen_addresses=127.0.0.1 -p {int(self.port)} "
            f"-c unix_socket_directories={socket_dirs} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )

    def launch(self) -> None:
        if self.pidfile.exists() and self.pid() is None:
            # Left by a killed server: its PID is gone or now someone else's.
            self.pidfile.unlink()
        done = self._run(
            [
                self._binary("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-o",
                self._server_options(),
                "start",
            ],
            "pg_ctl start",
            timeout=self.start_timeout + 10,
        )
        if done.returncode != 0:
            raise DevStackError(
                f"PostgreSQL failed to start on 127.0.0.1:{self.port}: "
                f"{(done.stderr or done.stdout).strip()[-400:]}\n  {self.log} ends with:\n  "
                f"{log_tail(self.log)}"
            )

    def probe(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def ensure_database(self) -> None:
        """Create the `provision` database when it is missing (a fresh cluster, or dropped)."""
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2, autocommit=True) as conn:
                found = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if found is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        except psycopg.Error as exc:
            raise DevStackError(
                f"cannot create database {DATABASE!r} on 127.0.0.1:{self.port}: {exc}; "
                f"see {self.log}"
            ) from None

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        self._run(
            [self._binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "20", "stop"],
            "pg_ctl stop",
            timeout=30,
        )
        if not wait_exited(pid, 5.0):
            kill_and_wait(pid, signal.SIGQUIT, timeout=5)
            self.pidfile.unlink(missing_ok=True)
        return True
