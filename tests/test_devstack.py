"""The real local stack: a private one in a temporary folder, on its own free ports.

It lives under pytest's 0700 temporary folder (with a space in its name), so PostgreSQL's data
must go to the /tmp fallback and every config must quote its paths. One stack start serves the
whole module; the session stack (var/stack) is never touched.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import httpx
import psycopg
import pytest
from click.testing import CliRunner
from cryptography import x509

from provisioner.cli.dev import dev
from provisioner.devstack.base import can_traverse
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.ports import is_free
from provisioner.devstack.postgres import fallback_base, server_os_user
from provisioner.devstack.process import alive, spawn, stop_pid
from provisioner.devstack.stack import COMPONENT_NAMES, DevStack

REPO = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def pids(stack: DevStack) -> dict[str, int | None]:
    return {row.name: row.pid for row in stack.status()}


def proc_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat, or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def live_processes() -> list[int]:
    """Every process in /proc that is not a zombie."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if proc_state(pid) not in {None, "Z"}]


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def get(url: str, cafile: Path | None = None) -> httpx.Response:
    """GET over loopback; https is verified against `cafile`, else against the public CAs."""
    verify = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    with httpx.Client(verify=verify, timeout=5, trust_env=False) as client:
        return client.get(url)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # environ={}: a developer's PROVISION_DEV_*_PORT overrides must not aim this stack at theirs.
    stack = DevStack(tmp_path_factory.mktemp("dev stack"), environ={})
    try:
        yield stack
    finally:
        stack.purge()


@pytest.fixture(scope="module")
def dev_env(stack: DevStack) -> dict[str, str]:
    return stack.up()


def test_up_starts_every_component(stack: DevStack, dev_env: dict[str, str]) -> None:
    with psycopg.connect(dev_env["PROVISION_PG_DSN"]) as conn:
        assert conn.execute("SELECT 1, current_database()").fetchone() == (1, "provision")

    http = f"http://127.0.0.1:{dev_env['PROVISION_NGINX_HTTP_PORT']}"
    answer = get(f"{http}/")
    assert (answer.status_code, answer.text) == (404, "no vhost\n")
    challenge_dir = Path(dev_env["PROVISION_ACME_WEBROOT"]) / ".well-known" / "acme-challenge"
    challenge_dir.mkdir(parents=True, exist_ok=True)
    (challenge_dir / "token-1").write_text("token-1.thumbprint")
    (challenge_dir / "token-1").chmod(0o644)
    assert get(f"{http}/.well-known/acme-challenge/token-1").text == "token-1.thumbprint"

    directory = get(
        dev_env["PROVISION_ACME_DIRECTORY"], cafile=Path(dev_env["PROVISION_ACME_CA_BUNDLE"])
    )
    assert {"newNonce", "newAccount", "newOrder"} <= set(directory.json())
    with pytest.raises(httpx.ConnectError):  # the public CAs do not vouch for our listener
        get(dev_env["PROVISION_ACME_DIRECTORY"])
    root = x509.load_pem_x509_certificate(Path(dev_env["PROVISION_ACME_ISSUER_ROOT"]).read_bytes())
    assert "Pebble Root CA" in root.subject.rfc4514_string()

    assert get(f"{dev_env['PROVISION_CHALLTESTSRV_URL']}/").status_code < 500

    route53 = boto3.client(
        "route53",
        endpoint_url=dev_env["PROVISION_AWS_ENDPOINT"],
        aws_access_key_id=dev_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=dev_env["AWS_SECRET_ACCESS_KEY"],
        region_name=dev_env["AWS_DEFAULT_REGION"],
    )
    route53.create_hosted_zone(Name="devstack.test", CallerReference="test-devstack")
    zones = route53.list_hosted_zones()["HostedZones"]
    assert "devstack.test." in {zone["Name"] for zone in zones}


def test_env_names_every_endpoint_and_no_state_dir(dev_env: dict[str, str]) -> None:
    assert "PROVISION_STATE_DIR" not in dev_env
    assert dev_env["PROVISION_PG_DSN"].startswith("host=127.0.0.1 port=")
    assert dev_env["PROVISION_PG_DSN"].endswith(" user=postgres dbname=provision")
    assert dev_env["AWS_EC2_METADATA_DISABLED"] == "true"
    for name in ("PROVISION_NGINX_VHOST_DIR", "PROVISION_SITES_ROOT", "PROVISION_ACME_WEBROOT"):
        assert Path(dev_env[name]).is_dir()
    for name in ("PROVISION_ACME_CA_BUNDLE", "PROVISION_ACME_ISSUER_ROOT"):
        assert Path(dev_env[name]).is_file()


def test_postgres_data_goes_where_the_postgres_user_can_reach(
    stack: DevStack, dev_env: dict[str, str]
) -> None:
    base = stack.pg_base()
    if can_traverse(stack.state_dir, server_os_user()):
        assert base == stack.state_dir / "pg"
    else:
        assert base == fallback_base(stack.state_dir)
    assert (base / "data" / "PG_VERSION").read_text().strip() == "15"
    if os.geteuid() == 0:
        st = base.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, pwd.getpwnam("postgres").pw_uid)


def test_listener_private_keys_are_owner_only(dev_env: dict[str, str]) -> None:
    folder = Path(dev_env["PROVISION_ACME_CA_BUNDLE"]).parent
    for key in ("tls-ca.key", "key.pem"):
        assert (folder / key).stat().st_mode & 0o777 == 0o600


def test_second_up_restarts_nothing_and_rewrites_nothing(
    stack: DevStack, dev_env: dict[str, str]
) -> None:
    before = pids(stack)
    conf = stack.state_dir / "nginx" / "nginx.conf"
    conf_mtime, env_mtime = conf.stat().st_mtime_ns, stack.env_file.stat().st_mtime_ns

    assert stack.up() == dev_env

    assert pids(stack) == before
    assert conf.stat().st_mtime_ns == conf_mtime
    assert stack.env_file.stat().st_mtime_ns == env_mtime


def test_status_reports_each_component(stack: DevStack, dev_env: dict[str, str]) -> None:
    rows = stack.status()
    assert [row.name for row in rows] == list(COMPONENT_NAMES)
    assert all(row.running and isinstance(row.pid, int) for row in rows)
    by_name = {row.name: row for row in rows}
    assert by_name["postgres"].endpoint == dev_env["PROVISION_PG_DSN"]
    assert dev_env["PROVISION_NGINX_HTTP_PORT"] in by_name["nginx"].endpoint
    assert by_name["pebble"].endpoint == dev_env["PROVISION_ACME_DIRECTORY"]
    assert by_name["moto"].endpoint == dev_env["PROVISION_AWS_ENDPOINT"]

    result = CliRunner().invoke(dev, ["--state-dir", str(stack.state_dir), "status"])
    assert result.exit_code == 0, result.output


def test_env_lines_are_valid_shell(stack: DevStack, dev_env: dict[str, str]) -> None:
    script = (
        'eval "$("$0" -m provisioner.cli.dev --state-dir "$1" env)"; '
        'printf "%s\\n" "$PROVISION_PG_DSN" "$PROVISION_NGINX_CMD" "$AWS_DEFAULT_REGION"'
    )
    shown = subprocess.run(
        ["bash", "-c", script, sys.executable, str(stack.state_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout.splitlines()
    assert shown == [
        dev_env["PROVISION_PG_DSN"],
        dev_env["PROVISION_NGINX_CMD"],
        "us-east-1",
    ]
    sourced = subprocess.run(
        ["bash", "-c", 'source "$0"; printf "%s" "$PROVISION_SITES_ROOT"', str(stack.env_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sourced == dev_env["PROVISION_SITES_ROOT"]
    # The quoted command addresses our private master, even with a space in its path.
    tested = subprocess.run(
        [*shlex.split(dev_env["PROVISION_NGINX_CMD"]), "-t"], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stderr


def test_killed_components_are_restarted_by_up(stack: DevStack, dev_env: dict[str, str]) -> None:
    before = pids(stack)
    old_root = Path(dev_env["PROVISION_ACME_ISSUER_ROOT"]).read_bytes()
    for name in ("pebble", "moto"):
        pid = before[name]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: {r.name for r in stack.status() if not r.running} == {"pebble", "moto"},
        "the killed components to show as stopped",
    )

    assert stack.up() == dev_env

    after = pids(stack)
    assert after["pebble"] != before["pebble"] and after["moto"] != before["moto"]
    assert {k: v for k, v in after.items() if k not in {"pebble", "moto"}} == {
        k: v for k, v in before.items() if k not in {"pebble", "moto"}
    }
    assert all(row.running for row in stack.status())
    # A new pebble has a new issuing root, and up fetched it.
    assert Path(dev_env["PROVISION_ACME_ISSUER_ROOT"]).read_bytes() != old_root
    assert get(f"{dev_env['PROVISION_AWS_ENDPOINT']}/moto-api/").status_code == 200


def test_postgres_restart_keeps_data_and_port(stack: DevStack, dev_env: dict[str, str]) -> None:
    dsn = dev_env["PROVISION_PG_DSN"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE outage_drill (note text)")
        conn.execute("INSERT INTO outage_drill VALUES ('kept')")

    assert stack.stop_postgres() is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    assert not next(r for r in stack.status() if r.name == "postgres").running

    stack.start_postgres()
    assert stack.env()["PROVISION_PG_DSN"] == dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT note FROM outage_drill").fetchall() == [("kept",)]


@pytest.mark.parametrize("how", ["ports argument", "environment override"])
def test_port_held_by_a_foreign_socket_is_refused_before_anything_starts(
    tmp_path: Path, how: str
) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        if how == "ports argument":
            other = DevStack(tmp_path / "other", ports={"moto": port}, environ={})
            variable = "PROVISION_DEV_MOTO_PORT"
        else:
            other = DevStack(tmp_path / "other", environ={"PROVISION_DEV_HTTP_PORT": str(port)})
            variable = "PROVISION_DEV_HTTP_PORT"

        with pytest.raises(DevStackError) as raised:
            other.up()

    assert f"port {port}" in str(raised.value)
    assert variable in str(raised.value)
    assert not other.ports_file.exists()
    assert not any(row.running for row in other.status())


def test_bad_port_override_is_named_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    with pytest.raises(DevStackError, match="PROVISION_DEV_PG_PORT='nope' is not a port"):
        DevStack(state, environ={"PROVISION_DEV_PG_PORT": "nope"}).up()
    assert not state.exists()


def test_alive_sees_through_zombies_and_foreign_pids(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "sleeper.pid", tmp_path / "sleeper.log"
    # The shell's background child exits, but `sleep 30` (its new image) never reaps it.
    zombie_pidfile = tmp_path / "zombie.pid"
    spawn(
        ["sh", "-c", f"sleep 0.01 & echo $! > {shlex.quote(str(zombie_pidfile))}; exec sleep 30"],
        pidfile,
        log,
    )
    try:
        wait_for(
            lambda: zombie_pidfile.exists() and zombie_pidfile.read_text().strip() != "", "pid"
        )
        zombie = int(zombie_pidfile.read_text())
        wait_for(lambda: proc_state(zombie) == "Z", "the child to become a zombie")
        os.kill(zombie, 0)  # kill -0 still says "alive"
        assert not alive(zombie_pidfile, "sleep")
        assert alive(pidfile, "sleep 30")
        assert not alive(pidfile, "moto_server")  # a PID that is not what we started
    finally:
        stopped = stop_pid(pidfile, ["sleep 30"])
    assert stopped is not None and not pidfile.exists()
    assert stop_pid(pidfile, ["sleep 30"]) is None


def test_down_stops_everything_and_leaves_no_process(
    stack: DevStack, dev_env: dict[str, str]
) -> None:
    before = pids(stack)
    ports: dict[str, int] = json.loads(stack.ports_file.read_text())
    servers = {pid for pid in before.values() if pid is not None}
    assert len(servers) == len(COMPONENT_NAMES)
    workers = {pid for pid in live_processes() if parent_of(pid) in servers}
    assert workers  # nginx's worker and PostgreSQL's backends, at least

    assert sorted(stack.down()) == sorted(COMPONENT_NAMES)

    still_running = [pid for pid in servers | workers if proc_state(pid) not in {None, "Z"}]
    assert still_running == []
    ours = (str(stack.state_dir), str(stack.pg_base()))
    assert [pid for pid in live_processes() if any(p in cmdline(pid) for p in ours)] == []
    assert all(is_free(port, udp=name == "dns") for name, port in ports.items())
    assert not any(row.running for row in stack.status())
    result = CliRunner().invoke(dev, ["--state-dir", str(stack.state_dir), "status"])
    assert result.exit_code == 1
    assert stack.down() == []
