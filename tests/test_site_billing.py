"""The billing step and the billing reference server (docs/billing-api.md), for real over HTTP.

The plain path runs against the stack's own server; fault drills (503s, 429 with Retry-After,
dropped connections, a restart) against a private instance, since faults armed on the shared
server would hit other tests.
"""

from __future__ import annotations

import dataclasses
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.config import Settings
from provisioner.engine.journal import FileJournal, RunStatus
from provisioner.engine.locks import FileTargetLock
from provisioner.engine.pipeline import Pipeline
from provisioner.engine.runner import Runner
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.billing import BillingStep
from provisioner.site.billing_api import BillingError, retry_after_seconds
from provisioner.site.dns import DnsStep
from provisioner.site.spec import SiteType
from tests.site_support import (
    BillingServerProcess,
    billing_server,
    free_port,
    route53,
    run_context,
    site,
    stack_settings,
    unique_domain,
    zone_id,
)

TERMS = {"per_minute_rate": 2.99, "minimum_purchase": 10.0, "currency": "USD"}


@pytest.fixture
def settings(stack_env: dict[str, str], tmp_path: Path) -> Settings:
    return stack_settings(stack_env, tmp_path / "state")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BillingServerProcess]:
    with billing_server(tmp_path_factory.mktemp("billing")) as server:
        yield server


@pytest.fixture
def private(settings: Settings, server: BillingServerProcess) -> Settings:
    """Settings aimed at the private server."""
    server.fail_next(503, 0)  # disarm whatever an earlier test left
    return dataclasses.replace(settings, billing_url=server.url, billing_token=server.token)


def stored(settings: Settings, site_id: str) -> dict[str, Any] | None:
    answer = httpx.get(
        f"{settings.billing_url}/v1/sites/{site_id}",
        headers={"Authorization": f"Bearer {settings.billing_token}"},
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    return answer.json()


def journaled(value: Any) -> Any:
    return json.loads(json.dumps(value, allow_nan=False))


# ------------------------------------------------------------------------------ the step


def test_registers_then_converges_then_rollback_deletes(settings: Settings) -> None:
    spec = site(unique_domain())
    step = BillingStep(spec, settings)
    with run_context(settings) as ctx:
        assert step.preflight(ctx) == []
        change = step.check(ctx)
        assert change is not None and change.summary == "connected to SexaComms billing system"
        assert change.before is None and change.after["billing"] == TERMS
        undo = journaled(step.apply(ctx))
        doc = stored(settings, spec.site_id)
        assert doc is not None
        assert {k: doc[k] for k in ("site_id", "domain", "name", "type", "billing")} == {
            "site_id": spec.site_id,
            "domain": spec.domain,
            "name": "New Flirts",
            "type": "customer",
            "billing": TERMS,
        }
        assert step.check(ctx) is None
        step.apply(ctx)
        assert stored(settings, spec.site_id) == doc  # a re-run changes nothing, not even a date
    with run_context(settings) as ctx:
        BillingStep(spec, settings).rollback(ctx, undo)
        BillingStep(spec, settings).rollback(ctx, undo)
    assert stored(settings, spec.site_id) is None


def test_rollback_puts_back_the_registration_found_before(settings: Settings) -> None:
    spec = site(unique_domain(), SiteType.OPERATOR, name="Operators")
    old = {
        "domain": spec.domain,
        "name": "Old name",
        "type": "operator",
        "billing": {"operator_commission": 0.5, "currency": "EUR"},
    }
    with run_context(settings) as ctx:
        BillingStep(spec, settings)._api(ctx).put(spec.site_id, old)
        before = stored(settings, spec.site_id)
        step = BillingStep(spec, settings)
        change = step.check(ctx)
        assert change is not None and change.summary.startswith("updated the SexaComms billing")
        assert '-    "operator_commission": 0.5' in (change.diff or "")
        undo = journaled(step.apply(ctx))
        assert stored(settings, spec.site_id)["billing"]["operator_commission"] == 0.6
        step.rollback(ctx, undo)
        restored = stored(settings, spec.site_id)
        assert restored is not None and before is not None
        assert {k: restored[k] for k in old} == old
        assert restored["created_at"] == before["created_at"]
        step._api(ctx).delete(spec.site_id)


def test_a_run_cut_short_is_undone_and_a_changed_registration_left(settings: Settings) -> None:
    spec = site(unique_domain())
    step = BillingStep(spec, settings)
    with run_context(settings) as ctx:
        change = step.check(ctx)
        assert change is not None
        planned = Change.from_json(journaled(change.as_json()))
        step.apply(ctx)  # finished, but its undo record was never journaled
        rebuilt = BillingStep(spec, settings)
        rebuilt.rollback(ctx, journaled(rebuilt.undo_from_change(planned)))
        assert stored(settings, spec.site_id) is None

        undo = step.apply(ctx)
        changed = dict(step.document(), name="Renamed by hand")
        step._api(ctx).put(spec.site_id, changed)
        step.rollback(ctx, undo)
        assert stored(settings, spec.site_id)["name"] == "Renamed by hand"
        step._api(ctx).delete(spec.site_id)


def test_retries_503_429_and_dropped_connections(
    private: Settings, server: BillingServerProcess
) -> None:
    spec = site(unique_domain())
    step = BillingStep(spec, private)
    with run_context(private) as ctx:
        server.fail_next(503, 2, retry_after="0")
        assert step.check(ctx) is not None
        server.fail_next("drop", 1)
        undo = step.apply(ctx)
        assert stored(private, spec.site_id) is not None

        server.fail_next(429, 1, retry_after="1")
        started = time.monotonic()
        step.rollback(ctx, undo)
        assert time.monotonic() - started >= 1.0  # Retry-After was honoured
        assert stored(private, spec.site_id) is None


def test_a_lasting_outage_fails_with_one_line_and_no_token(
    private: Settings, server: BillingServerProcess
) -> None:
    spec = site(unique_domain())
    step = BillingStep(spec, private)
    step.policy = dataclasses.replace(step.policy, attempts=3, base_delay=0.01)
    server.fail_next(503, 3, retry_after="0")
    with run_context(private) as ctx, pytest.raises(BillingError) as raised:
        step.check(ctx)
    message = str(raised.value)
    assert "failed after 3 attempt(s): 503 injected failure" in message
    assert private.billing_token not in message and "\n" not in message


def test_preflight_names_a_missing_token_a_wrong_one_and_a_server_down(
    settings: Settings,
) -> None:
    spec = site(unique_domain())
    cases = {
        "no token": dataclasses.replace(settings, billing_token=None),
        "wrong token": dataclasses.replace(settings, billing_token="not-the-token"),
        "down": dataclasses.replace(settings, billing_url=f"http://127.0.0.1:{free_port()}"),
    }
    found = {}
    for name, variant in cases.items():
        with run_context(variant) as ctx:
            [found[name]] = BillingStep(spec, variant).preflight(ctx)
    assert found["no token"].startswith("Billing: PROVISION_BILLING_TOKEN is not set")
    assert "refused the token (401)" in found["wrong token"]
    assert "ConnectError" in found["down"] and "PROVISION_BILLING_URL" in found["down"]
    assert all(settings.billing_token not in line for line in found.values())


def test_no_billing_url_is_skipped_without_any_request(settings: Settings) -> None:
    settings = dataclasses.replace(settings, billing_url=None, billing_token=None)
    step = BillingStep(site(unique_domain()), settings)
    with run_context(settings) as ctx:
        assert step.skipped == "no billing system configured"
        assert step.preflight(ctx) == []
        assert step.check(ctx) is None
        step.rollback(ctx, step.apply(ctx))
        assert ctx._clients == {}


class Explodes(Step):
    name = "explodes"
    scope = Scope.GLOBAL

    def check(self, ctx: RunContext) -> Change | None:
        return Change("fail on purpose")

    def apply(self, ctx: RunContext) -> Undo:
        raise RuntimeError("a later step failed")

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        return None


def test_a_failed_run_rolls_dns_and_billing_back_and_journals_no_token(
    settings: Settings, stack_env: dict[str, str]
) -> None:
    spec = site(unique_domain())
    pipeline = Pipeline(
        name="dns-billing-test",
        target=f"site:{spec.site_id}",
        params=spec.as_params(),
        steps=[DnsStep(spec, settings), BillingStep(spec, settings), Explodes()],
    )
    runner = Runner(
        settings,
        FileJournal(settings.journal_dir),
        lambda target: FileTargetLock(settings.lock_dir, target),
    )
    result = runner.run(pipeline)
    assert result.status == RunStatus.FAILED, result.failure
    r53 = route53(stack_env)
    names = [
        r["Name"]
        for r in r53.list_resource_record_sets(HostedZoneId=zone_id(r53, "aeims.test"))[
            "ResourceRecordSets"
        ]
    ]
    assert not [n for n in names if spec.domain in n]
    assert stored(settings, spec.site_id) is None
    journal = "".join(p.read_text() for p in settings.journal_dir.glob("*.jsonl"))
    assert '"billing"' in journal and settings.billing_token not in journal


# ------------------------------------------------------------------------------ the server


def test_server_contract(server: BillingServerProcess) -> None:
    body = {"domain": "a.test", "name": "A", "type": "customer", "billing": TERMS}
    path = "/v1/sites/a_test"
    assert server.call("GET", path).status_code == 404
    created = server.call("PUT", path, json=body)
    assert created.status_code == 201 and created.json()["site_id"] == "a_test"
    again = server.call("PUT", path, json=body)
    assert again.status_code == 200 and again.json() == created.json()
    updated = server.call("PUT", path, json=dict(body, name="B"))
    assert updated.status_code == 200 and updated.json()["name"] == "B"
    assert updated.json()["created_at"] == created.json()["created_at"]
    assert server.call("GET", path).json() == updated.json()

    unauthorized = httpx.get(f"{server.url}{path}", headers={"Authorization": "Bearer nope"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")
    assert unauthorized.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{server.url}{path}").status_code == 401

    bad = dict(body, billing={"operator_commission": 2, "currency": "USD"}, type="operator")
    assert server.call("PUT", path, json=bad).status_code == 422
    assert server.call("PUT", path, json=dict(body, extra=1)).status_code == 422
    raw = {"headers": {"Content-Type": "application/json"}, "content": b"{nope"}
    assert server.call("PUT", path, **raw).status_code == 400
    text = {"headers": {"Content-Type": "text/plain"}, "content": b"{}"}
    assert server.call("PUT", path, **text).status_code == 415
    assert server.call("GET", "/v1/sites/A.B").status_code == 400

    server.fail_next(503, 1, retry_after="7")
    busy = server.call("GET", path)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "7"

    assert server.call("DELETE", path).status_code == 204
    assert server.call("DELETE", path).status_code == 404


def test_server_keeps_its_state_on_disk_across_a_restart(server: BillingServerProcess) -> None:
    body = {"domain": "kept.test", "name": "Kept", "type": "customer", "billing": TERMS}
    doc = server.call("PUT", "/v1/sites/kept_test", json=body).json()
    assert stat.S_IMODE(server.state_file.stat().st_mode) == 0o600
    server.stop()
    server.start()
    assert server.call("GET", "/v1/sites/kept_test").json() == doc
    assert server.call("DELETE", "/v1/sites/kept_test").status_code == 204


def test_the_stack_server_is_on_loopback_with_a_private_token(stack_env: dict[str, str]) -> None:
    url = stack_env["PROVISION_BILLING_URL"]
    assert url.startswith("http://127.0.0.1:")
    token_file = Path(stack_env["PROVISION_DEV_STATE"]) / "billing" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == stack_env["PROVISION_BILLING_TOKEN"]
    env_file = Path(stack_env["PROVISION_DEV_STATE"]) / "env.sh"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
