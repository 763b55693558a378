"""`provision site enable`, `disable`, `add-operators` and `remove-operators`, in real processes
on the real local stack (nginx, pebble's certificate, the AEIMS files, PostgreSQL by phase).

A created site is put live (its landing page over verified HTTPS), taken down (503 with its
name over HTTPS, the ACME challenge path still served over HTTP, the certificate untouched)
and put live again; each re-run changes nothing, and `runs rollback` of each run puts back the
state before it; a disabled site's certificate is still renewed. Operators are added and
removed through the data layer in the JSON-only, a dual-write and the pg-only phase, and the
site's record keeps its intended operators. nginx preflights wait for the host's reload lock.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import replace as replace_settings
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from provisioner.config import load_settings
from provisioner.engine.step import RunContext
from provisioner.fsutil import file_lock
from provisioner.site.cert_store import CertStore
from provisioner.site.intended_operators import FIELD
from provisioner.site.nginx import NginxStep
from provisioner.site.nginx_control import Nginx
from provisioner.site.renewal import served_certificate
from provisioner.site.vhost_removal import VhostRemovalStep
from provisioner.storage import DataLayer
from provisioner.storage.layer.phase import Phase
from tests.datalayer_support import FIXTURE_AEIMS, copy_root, layer_in, migrate, pg_record
from tests.site_support import site as site_spec_of
from tests.site_support import stack_env, unique_domain
from tests.test_site_create import REPO, create_args, https_get, provision, world

FIXTURE_SITE = "beta.example.test"  # an operator site of the fixture, no operator linked


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The command's environment: the stack's settings, a private state, AEIMS copy and
    certificate folder (its rate-limit ledger fills up on a stack shared by many runs)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    return {
        **base,
        **stack_env(),
        "PROVISION_STATE_DIR": str(tmp_path / "state"),
        "PROVISION_DATA_DIR": str(copy_root(FIXTURE_AEIMS, tmp_path / "aeims")),
        "PROVISION_CERT_DIR": str(tmp_path / "certs"),
        "PROVISION_JOURNAL": "files",  # the stack's database is shared with the demo
        "PYTHONPATH": str(REPO),
    }


def run(env: dict[str, str], *args: str) -> dict[str, Any]:
    """`provision ... --json` that must succeed; its JSON answer."""
    done = provision(env, *args, "--json")
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    payload: dict[str, Any] = json.loads(done.stdout)
    return payload


def record(env: dict[str, str], domain: str) -> tuple[Any, Any]:
    """sites.json `active` and domains.json `status`, as the data layer reads them."""
    with DataLayer.from_settings(load_settings(env=env)) as layer:
        site = layer.get_site(domain) or {}
        entry = layer.get("domains", domain) or {}
    return site.get("active"), entry.get("status")


def intended(env: dict[str, str], domain: str) -> Any:
    """The site's intended operators, as the data layer reads its record."""
    with DataLayer.from_settings(load_settings(env=env)) as layer:
        return (layer.get_site(domain) or {}).get(FIELD)


def links(env: dict[str, str], domain: str) -> dict[str, Any]:
    """Each operator's link to `domain` (by id), as the data layer reads it."""
    with DataLayer.from_settings(load_settings(env=env)) as layer:
        return {
            str(op["id"]): (op.get("domains") or {}).get(domain)
            for op in layer.list("operators")
            if domain in (op.get("domains") or {})
        }


def certificate_files(env: dict[str, str], domain: str) -> dict[str, bytes]:
    cert_dir = Path(env["PROVISION_CERT_DIR"])
    return {
        str(path): path.read_bytes()
        for folder in cert_dir.glob(f"*/{domain}")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def served(env: dict[str, str], domain: str) -> dict[str, Any]:
    """What the site shows and says about itself: the HTTPS answer, the record, the vhost."""
    answer = https_get(env, domain)
    vhost = Path(env["PROVISION_NGINX_VHOST_DIR"]) / f"{domain}.conf"
    page = Path(env["PROVISION_SITES_ROOT"]) / domain / "maintenance.html"
    return {
        "status": answer.status_code,
        "landing": "Join New Flirts" in answer.text,
        "coming soon": "Coming soon." in answer.text,
        "maintenance": "down for maintenance" in answer.text,
        "record": record(env, domain),
        "vhost": vhost.read_text(),
        "maintenance page": page.exists(),
    }


def acme_challenge_answer(env: dict[str, str], domain: str) -> int | str:
    """A challenge file put in the ACME webroot, fetched over plain HTTP as a CA would."""
    token = secrets.token_urlsafe(16)
    folder = Path(env["PROVISION_ACME_WEBROOT"]) / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / token).write_text(f"{token}.thumbprint")
    try:
        answer = httpx.get(
            f"http://127.0.0.1:{env['PROVISION_NGINX_HTTP_PORT']}/.well-known/acme-challenge/{token}",
            headers={"Host": domain},
            trust_env=False,
            timeout=5,
        )
        same = answer.text == f"{token}.thumbprint"
        return answer.status_code if same else f"{answer.status_code} {answer.text[:80]!r}"
    finally:
        (folder / token).unlink()


@pytest.fixture
def made(env: dict[str, str]) -> Iterator[list[str]]:
    """The runs a test made and has not rolled back yet: rolled back at the end, newest first,
    so a failed test leaves no vhost pointing at its private certificate folder."""
    runs: list[str] = []
    yield runs
    for run_id in reversed(runs):
        provision(env, "runs", "rollback", run_id)


def made_run(env: dict[str, str], made: list[str], *args: str) -> dict[str, Any]:
    payload = run(env, *args)
    made.append(payload["run_id"])
    return payload


def rolled_back(env: dict[str, str], made: list[str], payload: dict[str, Any]) -> None:
    run(env, "runs", "rollback", payload["run_id"])
    made.remove(payload["run_id"])


def test_enable_disable_enable_and_roll_each_back(env: dict[str, str], made: list[str]) -> None:
    domain = unique_domain()
    site_id = domain.replace(".", "_")
    before = world(env, domain)
    created = made_run(env, made, *create_args(domain))
    coming_soon = served(env, domain)
    assert coming_soon["status"] == 200 and coming_soon["coming soon"]
    assert coming_soon["record"] == (False, "provisioned")
    certificate = certificate_files(env, domain)
    assert certificate

    enabled = made_run(env, made, "site", "enable", "--site", site_id)
    assert enabled["changed"] is True
    live = served(env, domain)
    assert live["status"] == 200 and live["landing"] and not live["coming soon"]
    assert live["record"] == (True, "active")
    assert "# provision-state: live" in live["vhost"] and "ssl_certificate " in live["vhost"]
    again = run(env, "site", "enable", "--site", domain)
    assert again["changed"] is False, again["steps"]

    planned = run(env, "site", "disable", "--site", site_id, "--plan")
    assert [s["status"] for s in planned["steps"]] == ["planned"] * 3
    assert "return 503;" in planned["steps"][1]["diff"]["prepared"]
    assert served(env, domain) == live
    disabled = made_run(env, made, "site", "disable", "--site", site_id)
    assert disabled["changed"] is True
    down = served(env, domain)
    assert down["status"] == 503 and down["maintenance"] and down["record"] == (False, "disabled")
    assert "<h1>New Flirts</h1>" in https_get(env, domain).text
    assert acme_challenge_answer(env, domain) == 200
    assert certificate_files(env, domain) == certificate
    again = run(env, "site", "disable", "--site", site_id)
    assert again["changed"] is False, again["steps"]

    enabled_again = made_run(env, made, "site", "enable", "--site", site_id)
    assert served(env, domain) == {**live, "maintenance page": True}

    # Each rollback puts back the state found before its run, newest first.
    rolled_back(env, made, enabled_again)
    assert served(env, domain) == down
    rolled_back(env, made, disabled)
    assert served(env, domain) == live
    rolled_back(env, made, enabled)
    assert served(env, domain) == coming_soon
    assert certificate_files(env, domain) == certificate
    rolled_back(env, made, created)
    assert world(env, domain) == before


def test_a_disabled_site_keeps_its_certificate_renewed(
    env: dict[str, str], made: list[str]
) -> None:
    domain = unique_domain()
    made_run(env, made, *create_args(domain))
    made_run(env, made, "site", "disable", "--site", domain)
    settings = load_settings(env=env)
    old = served_certificate(settings, domain).serial

    renewal = provision(env, "certs", "renew", "--site", domain, "--force", "--json")
    assert renewal.returncode == 0, renewal.stdout + renewal.stderr
    [done] = json.loads(renewal.stdout)["sites"]
    made.append(done["run_id"])

    assert done["outcome"] == "renewed", done
    live = CertStore(settings.cert_dir, domain).current()
    assert live is not None and f"{live.serial:x}" != old
    assert served_certificate(settings, domain).serial == f"{live.serial:x}"
    down = served(env, domain)
    assert down["status"] == 503 and down["maintenance"] and down["record"] == (False, "disabled")


def test_a_missing_site_or_operator_is_refused_on_one_line(env: dict[str, str]) -> None:
    for args in (
        ["enable", "--site", "never-made.aeims.test"],
        ["disable", "--site", "never_made_aeims_test"],
        ["add-operators", "--site", "never-made.aeims.test", "--all-active"],
        ["remove-operators", "--site", "never-made.aeims.test", "--operator", "jade"],
        ["add-operators", "--site", FIXTURE_SITE, "--operator", "nobody-here"],
        ["add-operators", "--site", FIXTURE_SITE],
    ):
        refused = provision(env, "site", *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "Traceback" not in refused.stderr
    assert not Path(env["PROVISION_STATE_DIR"], "journal").exists()


def operators_round_trip(env: dict[str, str]) -> None:
    """Add by name, by count and every active one; remove; each undone by `runs rollback`."""
    assert links(env, FIXTURE_SITE) == {}
    named = provision(env, "site", "add-operators", "--site", FIXTURE_SITE, "--operator", "jade",
                      "--operator", "op_test_001", "--operator", "jade")  # fmt: skip
    assert named.returncode == 0, named.stdout + named.stderr
    assert "added operators: jade (op_jade_001), testop1 (op_test_001)" in named.stdout
    assert intended(env, FIXTURE_SITE) == ["op_jade_001", "op_test_001"]
    assert (
        run(env, "site", "add-operators", "--site", FIXTURE_SITE, "--operator", "jade")["changed"]
        is False
    )
    counted = run(env, "site", "add-operators", "--site", "beta_example_test", "--count", "1")
    assert counted["steps"][0]["msg"] == "added operators: agnes (op_agents_only)"
    everyone = run(env, "site", "add-operators", "--site", FIXTURE_SITE, "--all-active")
    assert everyone["steps"][0]["msg"] == "added operators: 0 (op_zero)"
    linked = links(env, FIXTURE_SITE)
    assert sorted(linked) == ["op_agents_only", "op_jade_001", "op_test_001", "op_zero"]
    assert all(entry["active"] is True for entry in linked.values())

    assert intended(env, FIXTURE_SITE) == sorted(linked)

    removed = run(env, "site", "remove-operators", "--site", FIXTURE_SITE, "--operator", "jade")
    assert removed["steps"][0]["msg"] == "removed operators: jade (op_jade_001)"
    assert "op_jade_001" not in links(env, FIXTURE_SITE)
    assert intended(env, FIXTURE_SITE) == ["op_agents_only", "op_test_001", "op_zero"]
    run(env, "runs", "rollback", removed["run_id"])
    assert links(env, FIXTURE_SITE) == linked
    assert intended(env, FIXTURE_SITE) == sorted(linked)
    for made in (everyone, counted):
        run(env, "runs", "rollback", made["run_id"])
    assert sorted(links(env, FIXTURE_SITE)) == ["op_jade_001", "op_test_001"]
    assert intended(env, FIXTURE_SITE) == ["op_jade_001", "op_test_001"]


def test_operators_in_the_json_only_phase(env: dict[str, str]) -> None:
    operators_round_trip(env)


@pytest.fixture(params=[Phase.DUAL_WRITE_READ_JSON, Phase.PG_ONLY])
def dual_env(
    request: pytest.FixtureRequest, env: dict[str, str], fresh_pg_dsn: str, tmp_path: Path
) -> dict[str, str]:
    """The same, with the AEIMS data in a phase that writes PostgreSQL (both stores, or only
    PostgreSQL) on a database of its own."""
    migrate(fresh_pg_dsn)
    root = copy_root(FIXTURE_AEIMS, tmp_path / "aeims-dual")
    with layer_in(root, fresh_pg_dsn, request.param):
        pass
    return {**env, "PROVISION_DATA_DIR": str(root), "PROVISION_PG_DSN": fresh_pg_dsn}


def test_operators_and_activation_in_the_phases_that_write_postgresql(
    dual_env: dict[str, str],
) -> None:
    dsn = dual_env["PROVISION_PG_DSN"]
    operators_round_trip(dual_env)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM operator_sites WHERE domain = %s", (FIXTURE_SITE,)
        ).fetchone()
    assert rows == (2,)
    kept = (pg_record(dsn, "sites", "beta_example_test") or {}).get(FIELD)
    assert kept == ["op_jade_001", "op_test_001"]  # PostgreSQL's copy of the record keeps it too

    # The record's half of disable and enable (`--scope global`: no web host here).
    disabled = run(dual_env, "site", "disable", "--site", "alpha.example.test", "--scope", "global")
    assert [s["name"] for s in disabled["steps"]] == ["activation"]
    assert pg_state(dsn) == (False, "disabled")
    assert record(dual_env, "alpha.example.test") == (False, "disabled")
    run(dual_env, "runs", "rollback", disabled["run_id"])
    assert pg_state(dsn) == (True, "active")


def pg_state(dsn: str) -> tuple[Any, Any]:
    """The fixture's live site as PostgreSQL's own rows hold it (active, status)."""
    site = pg_record(dsn, "sites", "alpha_example_test") or {}
    entry = pg_record(dsn, "domains", "alpha.example.test") or {}
    return site.get("active"), entry.get("status")


def test_nginx_preflights_test_the_config_inside_the_reload_lock(tmp_path: Path) -> None:
    """`nginx -t` waits for another run's write-test-reload (or put-back) to finish: between
    its write and its reload the whole config may be briefly broken."""
    settings = replace_settings(load_settings(env=stack_env()), lock_timeout=0.2)
    spec = site_spec_of(unique_domain())
    ctx = RunContext(run_id="t", target="t", params={}, settings=settings)
    steps = [NginxStep(spec, settings), VhostRemovalStep(spec, settings)]
    vhost = settings.nginx_vhost_dir / f"{spec.domain}.conf"
    vhost.write_text("# a vhost of this test, so that removing it is planned\n")
    try:
        with file_lock(Nginx(settings).reload_lock_path):
            waited = [step.preflight(ctx) for step in steps]
        free = [step.preflight(ctx) for step in steps]
    finally:
        vhost.unlink()
    for problems in waited:
        assert len(problems) == 1 and "another run has been reloading nginx" in problems[0]
    assert free == [[], []]
