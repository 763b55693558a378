"""Helpers for the certificate and health tests: settings on the real stack, a unique site,
CAA records in challtestsrv, and a minimal TLS vhost in the stack's nginx (removed after)."""

from __future__ import annotations

import atexit
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from functools import cache
from pathlib import Path

import httpx
from cryptography import x509

from provisioner.config import Settings, load_settings
from provisioner.engine.checkpoint import Checkpoints
from provisioner.engine.step import RunContext
from provisioner.site.spec import SiteSpec, SiteType

TEST_VHOST_PREFIX = "zz-provision-tls-test-"
SITE_NAME = "Café <Flirt> & \"Co\" 'n' friends"
_written: list[Path] = []


@cache
def stack() -> dict[str, str]:
    """The real local stack's environment (started once; `up` is idempotent)."""
    from provisioner.devstack.stack import DevStack

    return DevStack.default().up()


def tls_settings(root: Path, state_dir: Path | None = None, **env: str) -> Settings:
    """Settings on the stack, with certificates and state kept under `root`."""
    values = {
        **stack(),
        "PROVISION_STATE_DIR": str(state_dir or root / "state"),
        "PROVISION_CERT_DIR": str(root / "certs"),
        "PROVISION_HEALTH_TIMEOUT": "10",
        **env,
    }
    return load_settings(values, config_file=root / "absent.toml")


def unique_spec(*aliases: str, domain: str | None = None) -> SiteSpec:
    domain = domain or f"t{uuid.uuid4().hex[:10]}.example.com"
    return SiteSpec(domain, SITE_NAME, SiteType.CUSTOMER, "default", aliases=aliases)


def run_ctx(settings: Settings, run_id: str = "run-1") -> RunContext:
    return RunContext(
        run_id=run_id,
        target="test",
        params={},
        settings=settings,
        checkpoints=Checkpoints(settings.state_dir / "checkpoints", run_id),
    )


def challtestsrv(path: str, body: dict[str, object]) -> None:
    answer = httpx.post(f"{stack()['PROVISION_CHALLTESTSRV_URL']}{path}", json=body, timeout=5)
    answer.raise_for_status()


def set_caa(host: str, *issuers: str) -> None:
    policies = [{"tag": "issue", "value": issuer} for issuer in issuers]
    challtestsrv("/add-caa", {"host": f"{host}.", "policies": policies})


def clear_caa(host: str) -> None:
    challtestsrv("/clear-caa", {"host": f"{host}."})


# ------------------------------------------------------------------------- a test vhost


def _nginx(*args: str) -> None:
    argv = [*shlex.split(stack()["PROVISION_NGINX_CMD"]), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def vhost_folder() -> Path:
    """The first `*.conf` folder the stack's nginx.conf includes (conf.d or sites-enabled)."""
    conf = Path(stack()["PROVISION_NGINX_PREFIX"]) / "nginx.conf"
    for found in re.finditer(r'include\s+"?([^";]+)/\*\.conf"?;', conf.read_text()):
        return Path(found.group(1))
    raise AssertionError(f"{conf} includes no *.conf folder")


def serve_site(settings: Settings, domain: str, name: str = SITE_NAME, cert_gen: str = "") -> Path:
    """A page showing `name` and a minimal HTTPS vhost for `domain`, live before it returns.

    The page lives under the stack's sites_root (pytest's own temp folders are 0700, and a
    concurrent pytest session resets them so). `cert_gen` names an archived generation to
    serve instead of the live links (e.g. "1"). `unserve` (or the end of the process) removes
    both.
    """
    sweep_stale_vhosts()
    docroot = settings.sites_root / f"tls-test-{domain}"
    write_page(docroot, name)
    if cert_gen:
        folder = settings.cert_dir / "archive" / domain
        chain, key = folder / f"fullchain{cert_gen}.pem", folder / f"privkey{cert_gen}.pem"
    else:
        folder = settings.cert_dir / "live" / domain
        chain, key = folder / "fullchain.pem", folder / "privkey.pem"
    port = int(settings.nginx_https_port)
    path = vhost_folder() / f"{TEST_VHOST_PREFIX}{domain}.conf"
    path.write_text(
        f"# cert {chain}\n# docroot {docroot}\n"
        f"server {{\n  listen 127.0.0.1:{port} ssl;\n  server_name {domain};\n"
        f'  ssl_certificate "{chain}";\n  ssl_certificate_key "{key}";\n'
        f'  root "{docroot}";\n  index index.html;\n}}\n'
    )
    _written.append(path)
    _nginx("-t", "-q")
    _nginx("-s", "reload")
    _wait_until_served(settings, domain, chain)
    return path


def _served_serial(settings: Settings, domain: str) -> int | None:
    context = ssl.create_default_context(cafile=str(settings.acme_issuer_root))
    try:
        with (
            socket.create_connection(("127.0.0.1", settings.nginx_https_port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            der = tls.getpeercert(True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


def _wait_until_served(settings: Settings, domain: str, chain: Path, seconds: float = 15) -> None:
    """nginx's reload is asynchronous (and other tests reload it too): wait for our vhost, on
    every new connection for a while, since old workers keep accepting for about 100 ms."""
    wanted = x509.load_pem_x509_certificate(chain.read_bytes()).serial_number
    deadline = time.monotonic() + seconds
    since: float | None = None
    while True:
        now = time.monotonic()
        if _served_serial(settings, domain) != wanted:
            since = None
        elif since is None:
            since = now
        elif now - since >= 0.3:
            return
        assert now < deadline, f"nginx never served the test vhost of {domain}"
        time.sleep(0.02)


def _docroot_of(path: Path) -> Path | None:
    found = re.search(r"^# docroot (.+)$", path.read_text(), re.MULTILINE)
    return Path(found.group(1)) if found else None


def unserve(path: Path) -> None:
    """Remove a test vhost and its page."""
    if path.exists():
        docroot = _docroot_of(path)
        path.unlink()
        _nginx("-s", "reload")
        if docroot is not None:
            shutil.rmtree(docroot, ignore_errors=True)


def sweep_stale_vhosts() -> None:
    """Test vhosts whose certificate is gone (a killed run's) would stop every reload."""
    for path in vhost_folder().glob(f"{TEST_VHOST_PREFIX}*.conf"):
        cert = re.search(r"^# cert (.+)$", path.read_text(), re.MULTILINE)
        if cert is None or not Path(cert.group(1)).exists():
            docroot = _docroot_of(path)
            path.unlink(missing_ok=True)
            if docroot is not None:
                shutil.rmtree(docroot, ignore_errors=True)


@atexit.register
def _remove_written() -> None:
    left = [p for p in _written if p.exists()]
    for path in left:
        unserve(path)


def write_page(docroot: Path, name: str = SITE_NAME) -> None:
    from markupsafe import escape

    docroot.mkdir(parents=True, exist_ok=True)
    docroot.chmod(0o755)
    (docroot / "index.html").write_text(f"<!doctype html>\n<h1>{escape(name)}</h1>\n")
    (docroot / "index.html").chmod(0o644)
