"""ansible/site.yml and the aeims.provision.site module, run by real `ansible-playbook` against
localhost on the real local stack (nginx, pebble, moto's Route53, the billing server).

A first run changes, a second changes nothing, `--check --diff` shows each step's diff and
changes nothing, the lifecycle states go through enable and disable, `state=absent` leaves no
residue, and a step that fails fails the play with the tool's own message.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible_support import playbook, recap, site_vars, succeeded
from tests.site_e2e_support import (
    answers_with,
    durable_cert_dir,
    https_get,
    residue,
    site_env,
    still_named,
    world,
)
from tests.site_support import unique_domain

NAME = "Playbook Flirts"


@pytest.fixture
def env(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A private state, AEIMS copy and certificate folder on the local stack."""
    cert_dir = durable_cert_dir("ansible")
    yield site_env(tmp_path / "state", tmp_path / "aeims", "tests.site_pipelines", cert_dir)
    if not still_named(cert_dir):
        shutil.rmtree(cert_dir, ignore_errors=True)


@pytest.fixture
def domain(env: dict[str, str]) -> Iterator[str]:
    """A new site's domain, removed at the end whatever the test did."""
    name = unique_domain()
    yield name
    playbook(env, "site.yml", site_vars(name, NAME, "absent") | {"keep_certificate": True})
    for archived in (Path(env["PROVISION_SITES_ROOT"]) / "_archived").glob(f"{name}_*"):
        shutil.rmtree(archived)  # the shared stack's sites folder is not this test's


def test_site_playbook_converges_plans_without_changing_and_removes_without_residue(
    env: dict[str, str], domain: str
) -> None:
    before = world(env, domain)

    planned = playbook(env, "site.yml", site_vars(domain, NAME), "--check", "--diff")
    assert recap(planned)["localhost"]["changed"] == 2, planned.stdout
    assert "site-create: record" in planned.stdout  # each step's diff is shown
    assert world(env, domain) == before, "check mode changed something"

    first = succeeded(playbook(env, "site.yml", site_vars(domain, NAME)))
    assert first["localhost"]["changed"] == 2  # the global part and the host part
    assert answers_with(env, domain, NAME) is None

    again = succeeded(playbook(env, "site.yml", site_vars(domain, NAME)))
    assert again["localhost"]["changed"] == 0

    made = world(env, domain)
    renamed = playbook(env, "site.yml", site_vars(domain, "Renamed Flirts"), "--check", "--diff")
    assert succeeded(renamed)["localhost"]["changed"] == 2
    assert f'-        "name": "{NAME}",' in renamed.stdout  # the record's before and after
    assert '+        "name": "Renamed Flirts",' in renamed.stdout
    assert f'-    <a class="brand" href="/">{NAME}</a>' in renamed.stdout  # the files' diff
    assert world(env, domain) == made, "check mode changed something"
    assert answers_with(env, domain, NAME) is None

    gone = succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "absent")))
    assert gone["localhost"]["changed"] == 2
    assert residue(before, world(env, domain)) == []
    assert (
        succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "absent")))["localhost"][
            "changed"
        ]
        == 0
    )


def test_site_playbook_enables_and_disables_a_site(env: dict[str, str], domain: str) -> None:
    enabled = succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "enabled")))
    assert enabled["localhost"]["changed"] == 2
    live = https_get(env, domain)
    assert live.status_code == 200 and NAME in live.text
    assert "coming soon" not in live.text.lower()

    disabled = succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "disabled")))
    assert disabled["localhost"]["changed"] == 2
    down = https_get(env, domain)
    assert down.status_code == 503 and NAME in down.text

    # present keeps a disabled site disabled (create converges on it: its 503 is on purpose)
    kept = succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "present")))
    assert kept["localhost"]["changed"] == 0
    assert https_get(env, domain).status_code == 503

    back = succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "enabled")))
    assert back["localhost"]["changed"] == 2
    assert answers_with(env, domain, NAME) is None
    assert (
        succeeded(playbook(env, "site.yml", site_vars(domain, NAME, "enabled")))["localhost"][
            "changed"
        ]
        == 0
    )


def test_a_failing_step_fails_the_play_with_the_tools_message(
    env: dict[str, str], domain: str
) -> None:
    # The health check trusts another root than pebble's: the site's answer cannot be verified.
    wrong_root = {**env, "PROVISION_ACME_ISSUER_ROOT": env["PROVISION_ACME_CA_BUNDLE"]}
    token = wrong_root.pop("PROVISION_BILLING_TOKEN")  # handed over by the inventory instead
    secrets = {"provision_env": {"PROVISION_HEALTH_TIMEOUT": "1", "PROVISION_BILLING_TOKEN": token}}
    done = playbook(wrong_root, "site.yml", site_vars(domain, NAME) | secrets, "-vvv")
    assert token not in done.stdout + done.stderr  # masked, even in the module's invocation
    assert done.returncode != 0
    assert recap(done)["localhost"]["failed"] == 1
    fatal = done.stdout[done.stdout.index("fatal: [localhost]: FAILED!") :]
    assert "health: https://" in fatal and "did not answer correctly within 1 s" in fatal
    assert "CERTIFICATE_VERIFY_FAILED" in fatal or "certificate verify failed" in fatal
    assert '"rc": 1' in fatal  # a step failed and its run was rolled back
    assert "PROVISION_BILLING_TOKEN" in fatal  # the invocation is shown (-vvv), its value not
    site = world(env, domain)  # the host part was rolled back; the global part stays
    assert not site["site folder"] and site["vhosts"] == [] and site["certificates"] == []
