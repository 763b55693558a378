"""`provision site status` and `site list`, in real processes on the real local stack: a
created site is converged (exit 0); each kind of drift a person can cause (a template file or
the vhost edited by hand, the DNS record deleted or pointing elsewhere, a certificate near its
end, the billing registration deleted, an operator unlinked) exits 1 with that step's diff and
its `present` flag; an unknown site exits 4; `site list` shows the created sites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioner.site.cert_store import CertStore
from tests.lifecycle_e2e import (
    NAME,
    billing,
    created,
    delete_record,
    env,
    json_of,
    layer_of,
    route53_of,
)
from tests.site_e2e_support import provision
from tests.site_support import upsert
from tests.test_certs_renewal import mostly_used_certificate

__all__ = ["created", "env"]  # fixtures


def steps_of(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (site,) = payload["sites"]
    return {step["name"]: step for step in site["steps"]}


def drifted(env: dict[str, str], domain: str) -> dict[str, dict[str, Any]]:
    """The steps in drift (status exit 1), by name."""
    payload = json_of(env, "site", "status", "--site", domain, expect=1)
    steps = steps_of(payload)
    return {name: step for name, step in steps.items() if step["status"] != "ok"}


def test_a_created_site_is_converged_and_every_step_present(
    env: dict[str, str], created: str
) -> None:
    payload = json_of(env, "site", "status", "--site", created, expect=0)

    steps = steps_of(payload)
    assert list(steps) == [
        "record",
        "files",
        "nginx",
        "dns",
        "certificate",
        "operators",
        "billing",
        "health",
    ]
    assert all(s["status"] == "ok" and s["present"] is True for s in steps.values()), steps
    assert payload["sites"][0]["vhost_state"] == "coming_soon"
    human = provision(env, "site", "status", "--site", created.replace(".", "_"))
    assert (
        human.returncode == 0 and f"{created} (" in human.stdout and ": converged" in human.stdout
    )


def test_hand_edits_of_a_template_file_and_the_vhost_are_drift_with_diffs(
    env: dict[str, str], created: str
) -> None:
    page = Path(env["PROVISION_SITES_ROOT"]) / created / "index.html"
    page.write_text(page.read_text() + "<!-- edited by hand -->\n")
    vhost = Path(env["PROVISION_NGINX_VHOST_DIR"]) / f"{created}.conf"
    vhost.write_text(vhost.read_text().replace('"SAMEORIGIN"', '"DENY"'))

    steps = drifted(env, created)

    assert set(steps) == {"files", "nginx"}, steps
    assert "+<!-- edited by hand -->" in steps["files"]["diff"]
    assert "index.html" in steps["files"]["summary"]
    assert '-    add_header X-Frame-Options "DENY" always;' in steps["nginx"]["diff"]
    assert all(s["present"] is True for s in steps.values())
    human = provision(env, "site", "status", "--site", created)
    assert human.returncode == 1 and "✗ Nginx: drift:" in human.stdout


def test_a_deleted_dns_record_and_billing_registration_are_missing(
    env: dict[str, str], created: str
) -> None:
    delete_record(env, f"www.{created}")
    assert billing(env, "DELETE", created).status_code in {200, 204}

    steps = drifted(env, created)

    assert set(steps) == {"dns", "billing"}, steps
    assert f"+www.{created}. 300 IN A 127.0.0.1" in steps["dns"]["diff"]
    assert steps["dns"]["present"] is False and steps["billing"]["present"] is False
    assert '"name": "Status Flirts"' in steps["billing"]["diff"]


def test_a_record_pointing_elsewhere_and_a_certificate_near_its_end_are_drift(
    env: dict[str, str], created: str
) -> None:
    client, zone = route53_of(env)
    upsert(client, zone, created, "A", 300, "10.9.9.9")
    # Time passes: the live certificate is a 90-day one with 10 days left (a new generation
    # of the live folder, as a renewal writes it; nginx keeps serving the one it loaded).
    key_pem, fullchain, _ = mostly_used_certificate([created, f"www.{created}"])
    CertStore(Path(env["PROVISION_CERT_DIR"]), created).write(key_pem, fullchain)
    try:
        steps = drifted(env, created)
    finally:
        upsert(client, zone, created, "A", 300, "127.0.0.1")

    assert {"dns", "certificate"} <= set(steps) <= {"dns", "certificate", "health"}, steps
    assert f"-{created}. 300 IN A 10.9.9.9" in steps["dns"]["diff"], steps["dns"]["diff"]
    assert f"+{created}. 300 IN A 127.0.0.1" in steps["dns"]["diff"]
    assert steps["dns"]["present"] is True  # a record that exists, pointing elsewhere
    assert steps["certificate"]["present"] is True
    assert "a third of its lifetime left (expires " in steps["certificate"]["summary"]


def test_an_unlinked_operator_is_drift(env: dict[str, str], created: str) -> None:
    with layer_of(env) as layer:
        linked = [o for o in layer.search_operators() if created in (o.get("domains") or {})]
        assert len(linked) > 1
        gone = str(linked[0]["id"])
        layer.remove_operator_site(gone, created)

    steps = drifted(env, created)

    assert set(steps) == {"operators"}, steps
    assert f"+{gone}" in steps["operators"]["diff"]
    assert steps["operators"]["present"] is True  # the others are still linked


def test_an_unknown_site_exits_4_and_list_shows_created_sites(
    env: dict[str, str], created: str
) -> None:
    missing = provision(env, "site", "status", "--site", "nowhere.aeims.test")
    assert missing.returncode == 4 and "no site 'nowhere.aeims.test'" in missing.stderr

    listed = json_of(env, "site", "list", expect=0)
    row = next(r for r in listed["sites"] if r["domain"] == created)
    assert row["status"] == "provisioned" and row["name"] == NAME
    assert row["certificate_expires"] and row["operators"] > 0
    table = provision(env, "site", "list")
    assert table.returncode == 0 and created.replace(".", "_") in table.stdout
