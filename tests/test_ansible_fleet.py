"""ansible/site.yml on a fleet of two web hosts, each with its own nginx, sites root,
certificate folder and journal, sharing the AEIMS data, Route53 and billing: the global steps
run once (on the first host), the host steps on both, and the DNS-01 certificate obtained once
is copied to the second host, which serves it.

Both hosts are this machine (`ansible_connection: local`): web1 is the stack's nginx, web2 a
second nginx master of its own, started by the test on free ports.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.devstack.nginx import Nginx
from tests.ansible_support import journaled_runs, playbook, site_vars, succeeded
from tests.site_e2e_support import (
    PROVISION,
    durable_cert_dir,
    https_get,
    residue,
    site_env,
    still_named,
    world,
)
from tests.site_support import free_port, unique_domain

NAME = "Fleet Flirts"


@pytest.fixture
def second_nginx(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[Nginx]:
    """web2's own nginx master (its prefix, sites root and ACME webroot under tmp_path)."""
    nginx = Nginx({"http": free_port(), "https": free_port()}, tmp_path / "web2")
    nginx.prepare()
    nginx.launch()
    try:
        nginx.wait_ready()
        yield nginx
    finally:
        nginx.stop()


@pytest.fixture
def fleet(tmp_path: Path, second_nginx: Nginx) -> Iterator[dict[str, Any]]:
    """The shared environment, each host's own settings, and the inventory naming them."""
    web1_certs = durable_cert_dir("ansible-fleet")
    base = site_env(tmp_path / "web1" / "state", tmp_path / "aeims", "tests.site_pipelines")
    base["PROVISION_ACME_CHALLENGE"] = "dns-01"
    web1 = {
        "PROVISION_HOST_NAME": "web1",
        "PROVISION_STATE_DIR": str(tmp_path / "web1" / "state"),
        "PROVISION_CERT_DIR": str(web1_certs),
    }
    n2 = second_nginx
    web2 = {
        "PROVISION_HOST_NAME": "web2",
        "PROVISION_STATE_DIR": str(tmp_path / "web2" / "state"),
        "PROVISION_CERT_DIR": str(tmp_path / "web2" / "certs"),
        "PROVISION_SITES_ROOT": str(n2.sites_root),
        "PROVISION_ACME_WEBROOT": str(n2.webroot),
        "PROVISION_NGINX_CMD": shlex.join(n2.command()),
        "PROVISION_NGINX_PREFIX": str(n2.prefix),
        "PROVISION_NGINX_VHOST_DIR": str(n2.vhost_dir),
        "PROVISION_NGINX_ENABLED_DIR": str(n2.enabled_dir),
        "PROVISION_NGINX_HTTP_PORT": str(n2.ports["http"]),
        "PROVISION_NGINX_HTTPS_PORT": str(n2.ports["https"]),
    }

    def host(settings: dict[str, str]) -> dict[str, Any]:
        reload = [*shlex.split(settings.get("PROVISION_NGINX_CMD", base["PROVISION_NGINX_CMD"]))]
        return {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "provision_env": settings,
            "provision_nginx_reload": [*reload, "-s", "reload"],
        }

    inventory = tmp_path / "fleet.yml"
    hosts = {"web1": host(web1), "web2": host(web2)}
    inventory.write_text(yaml.safe_dump({"web": {"hosts": hosts}}))
    yield {"base": base, "web1": {**base, **web1}, "web2": {**base, **web2}, "inventory": inventory}
    if not still_named(web1_certs):
        shutil.rmtree(web1_certs, ignore_errors=True)


def runs_by_scope(state_dir: str) -> dict[str, list[str]]:
    """The pipelines a host ran, by the scopes each run covered."""
    found: dict[str, list[str]] = {}
    for run in journaled_runs(Path(state_dir)):
        found.setdefault("+".join(run["scopes"]), []).append(run["pipeline"])
    return found


def web2_residue(env: dict[str, str], domain: str) -> list[str]:
    cert_dir = Path(env["PROVISION_CERT_DIR"])
    paths = [
        Path(env["PROVISION_SITES_ROOT"]) / domain,
        Path(env["PROVISION_NGINX_VHOST_DIR"]) / f"{domain}.conf",
        Path(env["PROVISION_NGINX_ENABLED_DIR"]) / f"{domain}.conf",
        cert_dir / "live" / domain,
        cert_dir / "archive" / domain,
    ]
    return [str(p) for p in paths if p.exists() or p.is_symlink()]


def test_global_steps_run_once_and_host_steps_on_every_web_host(fleet: dict[str, Any]) -> None:
    base, web1, web2, inventory = fleet["base"], fleet["web1"], fleet["web2"], fleet["inventory"]
    domain = unique_domain()
    before = world(web1, domain)
    extra = site_vars(domain, NAME, "enabled") | {"provision_path": PROVISION}
    try:
        first = succeeded(playbook(base, "site.yml", extra, inventory=inventory))
        assert first["web1"]["changed"] == 2  # the global part, the host part
        assert first["web2"]["changed"] >= 3  # the host part, the certificate copied, reloaded

        assert runs_by_scope(web1["PROVISION_STATE_DIR"]) == {
            "global": ["site-create", "site-enable"],
            "host": ["site-create", "site-enable"],
        }
        assert runs_by_scope(web2["PROVISION_STATE_DIR"]) == {
            "host": ["site-create", "site-enable"],
        }
        for host in (web1, web2):
            page = https_get(host, domain)  # verified against pebble's root, on this host's port
            assert page.status_code == 200 and NAME in page.text, host["PROVISION_HOST_NAME"]
        cert = Path("live", domain, "cert.pem")
        assert (Path(web1["PROVISION_CERT_DIR"]) / cert).read_bytes() == (
            Path(web2["PROVISION_CERT_DIR"]) / cert
        ).read_bytes()  # obtained once, the same certificate on both hosts
        key = Path(web2["PROVISION_CERT_DIR"]) / "live" / domain / "privkey.pem"
        assert key.resolve().stat().st_mode & 0o777 == 0o600

        again = succeeded(playbook(base, "site.yml", extra, inventory=inventory))
        assert again["web1"]["changed"] == 0 and again["web2"]["changed"] == 0
    finally:
        gone = playbook(base, "site.yml", extra | {"state": "absent"}, inventory=inventory)
    assert succeeded(gone)["web1"]["changed"] == 2
    assert residue(before, world(web1, domain)) == []
    assert web2_residue(web2, domain) == []
    for archived in (Path(web1["PROVISION_SITES_ROOT"]) / "_archived").glob(f"{domain}_*"):
        shutil.rmtree(archived)
