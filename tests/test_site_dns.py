"""The dns step against the stack's real moto (Route53): forward, re-run, rollback that restores
what was there, a run cut short, zones by longest suffix, and provider `none`.

Every test uses its own random name under aeims.test and never resets moto, which the rest of
the suite shares.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.config import Settings
from provisioner.engine.step import Change
from provisioner.site.dns import DnsStep
from provisioner.site.route53 import DnsError
from tests.site_support import (
    free_port,
    route53,
    run_context,
    site,
    stack_settings,
    unique_domain,
    upsert,
    zone_id,
)


@pytest.fixture
def settings(stack_env: dict[str, str], tmp_path: Path) -> Settings:
    return stack_settings(stack_env, tmp_path / "state")


@pytest.fixture
def r53(stack_env: dict[str, str]) -> Any:
    return route53(stack_env)


@pytest.fixture
def zone(r53: Any) -> str:
    return zone_id(r53, "aeims.test")


def records(r53: Any, zone: str, domain: str) -> dict[tuple[str, str], tuple[int, list[str]]]:
    """Every record set at the domain and below it: (name, type) -> (TTL, values)."""
    found = {}
    for rrset in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]:
        name = rrset["Name"].rstrip(".")
        if name == domain or name.endswith(f".{domain}"):
            values = sorted(r["Value"] for r in rrset.get("ResourceRecords", []))
            found[(name, rrset["Type"])] = (rrset.get("TTL"), values)
    return found


def journaled(value: Any) -> Any:
    return json.loads(json.dumps(value, allow_nan=False))


@pytest.fixture
def domain(r53: Any, zone: str) -> Iterator[str]:
    """A fresh name under aeims.test; whatever a test left under it is removed afterwards."""
    name = unique_domain()
    yield name
    for rrset in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]:
        if rrset["Name"].rstrip(".").endswith(name):
            batch = {"Changes": [{"Action": "DELETE", "ResourceRecordSet": rrset}]}
            r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)


def test_adds_a_records_then_converges_then_rollback_deletes_exactly_them(
    settings: Settings, r53: Any, zone: str, domain: str
) -> None:
    upsert(r53, zone, f"mail.{domain}", "A", 600, "10.0.0.25")  # a neighbour, never touched
    step = DnsStep(site(domain), settings)
    with run_context(settings) as ctx:
        assert step.preflight(ctx) == []
        change = step.check(ctx)
        assert change is not None
        assert change.summary == (
            f"added A record pointing to 127.0.0.1 for {domain} and www.{domain}"
        )
        assert f"+{domain}. 300 IN A 127.0.0.1" in (change.diff or "")
        undo = journaled(step.apply(ctx))

        assert records(r53, zone, domain) == {
            (domain, "A"): (300, ["127.0.0.1"]),
            (f"www.{domain}", "A"): (300, ["127.0.0.1"]),
            (f"mail.{domain}", "A"): (600, ["10.0.0.25"]),
        }
        assert step.check(ctx) is None
        assert journaled(step.apply(ctx))["records"] == []  # a re-run changes nothing

    with run_context(settings) as ctx:
        DnsStep(site(domain), settings).rollback(ctx, undo)
        DnsStep(site(domain), settings).rollback(ctx, undo)  # twice is harmless
    assert records(r53, zone, domain) == {(f"mail.{domain}", "A"): (600, ["10.0.0.25"])}


def test_rollback_restores_the_record_found_before_with_its_ttl(
    settings: Settings, r53: Any, zone: str, domain: str
) -> None:
    upsert(r53, zone, domain, "A", 3600, "10.0.0.7", "10.0.0.8")
    before = records(r53, zone, domain)
    step = DnsStep(site(domain), settings)
    with run_context(settings) as ctx:
        change = step.check(ctx)
        assert change is not None and change.summary.startswith("updated A record")
        undo = journaled(step.apply(ctx))
    # An existing record keeps its TTL; the one made is at the default.
    assert records(r53, zone, domain) == {
        (domain, "A"): (3600, ["127.0.0.1"]),
        (f"www.{domain}", "A"): (300, ["127.0.0.1"]),
    }
    with run_context(settings) as ctx:
        step.rollback(ctx, undo)
    assert records(r53, zone, domain) == before


def test_aaaa_records_when_an_ipv6_address_is_configured(
    settings: Settings, r53: Any, zone: str, domain: str
) -> None:
    settings = dataclasses.replace(settings, public_ipv6="2001:db8::10")
    step = DnsStep(site(domain), settings)
    with run_context(settings) as ctx:
        change = step.check(ctx)
        assert change is not None
        assert "A record pointing to 127.0.0.1 and AAAA record pointing to 2001:db8::10" in (
            change.summary
        )
        undo = step.apply(ctx)
        assert records(r53, zone, domain) == {
            (name, rtype): (300, [ip])
            for name in (domain, f"www.{domain}")
            for rtype, ip in (("A", "127.0.0.1"), ("AAAA", "2001:db8::10"))
        }
        step.rollback(ctx, undo)
    assert records(r53, zone, domain) == {}


def test_a_run_cut_short_is_undone_from_the_journaled_change(
    settings: Settings, r53: Any, zone: str, domain: str
) -> None:
    upsert(r53, zone, f"www.{domain}", "A", 120, "10.1.1.1")
    before = records(r53, zone, domain)
    step = DnsStep(site(domain), settings)
    with run_context(settings) as ctx:
        change = step.check(ctx)
        assert change is not None
        planned = Change.from_json(journaled(change.as_json()))
    # Killed inside apply after Route53 took only part of the batch (moto's are not atomic).
    upsert(r53, zone, domain, "A", 300, "127.0.0.1")
    with run_context(settings) as ctx:
        rebuilt = DnsStep(site(domain), settings)
        rebuilt.rollback(ctx, journaled(rebuilt.undo_from_change(planned)))
    assert records(r53, zone, domain) == before


def test_rollback_leaves_a_record_someone_changed_since(
    settings: Settings, r53: Any, zone: str, domain: str
) -> None:
    step = DnsStep(site(domain), settings)
    with run_context(settings) as ctx:
        undo = step.apply(ctx)
        upsert(r53, zone, f"www.{domain}", "A", 60, "10.9.9.9")
        step.rollback(ctx, undo)
    assert records(r53, zone, domain) == {(f"www.{domain}", "A"): (60, ["10.9.9.9"])}


def test_the_zone_is_the_longest_suffix_of_the_domain(settings: Settings, r53: Any) -> None:
    sub = unique_domain()
    created = r53.create_hosted_zone(Name=sub, CallerReference=sub)["HostedZone"]
    sub_zone = str(created["Id"]).rsplit("/", 1)[-1]
    domain = f"shop.{sub}"
    try:
        step = DnsStep(site(domain), settings)
        with run_context(settings) as ctx:
            change = step.check(ctx)
            assert change is not None and change.after["zone"] == f"{sub}."
            undo = step.apply(ctx)
            assert set(records(r53, sub_zone, domain)) == {
                (domain, "A"),
                (f"www.{domain}", "A"),
            }
            assert records(r53, zone_id(r53, "aeims.test"), domain) == {}
            step.rollback(ctx, undo)
        assert records(r53, sub_zone, domain) == {}
    finally:
        r53.delete_hosted_zone(Id=sub_zone)


def test_no_zone_is_a_preflight_error_naming_the_zone_to_create(settings: Settings) -> None:
    domain = f"shop.{unique_domain('example')}"
    step = DnsStep(site(domain), settings)
    with run_context(settings) as ctx:
        problems = step.preflight(ctx)
        assert len(problems) == 1
        assert f"no Route53 hosted zone holds {domain}" in problems[0]
        assert f"create a public hosted zone for {domain.split('.', 1)[1]}" in problems[0]
        with pytest.raises(DnsError, match="no Route53 hosted zone"):
            step.check(ctx)


def test_a_cname_at_www_is_a_preflight_error(
    settings: Settings, r53: Any, zone: str, domain: str
) -> None:
    upsert(r53, zone, f"www.{domain}", "CNAME", 300, "elsewhere.example.")
    with run_context(settings) as ctx:
        problems = DnsStep(site(domain), settings).preflight(ctx)
    assert problems == [
        f"DNS: www.{domain} has a CNAME record, which cannot stand beside an A record; "
        "delete it in Route53 first"
    ]


def test_missing_address_and_unreachable_route53_are_one_line_each(
    settings: Settings, domain: str
) -> None:
    no_ip = dataclasses.replace(settings, public_ipv4=None)
    with run_context(no_ip) as ctx:
        [problem] = DnsStep(site(domain), no_ip).preflight(ctx)
    assert "PROVISION_PUBLIC_IPV4" in problem

    closed = dataclasses.replace(settings, aws_endpoint=f"http://127.0.0.1:{free_port()}")
    with run_context(closed) as ctx:
        [problem] = DnsStep(site(domain), closed).preflight(ctx)
    assert problem.startswith(f"DNS: Route53 at {closed.aws_endpoint} did not answer")
    assert "\n" not in problem


def test_provider_none_is_skipped_without_touching_route53(settings: Settings) -> None:
    settings = dataclasses.replace(settings, dns_provider="none", aws_endpoint=None)
    step = DnsStep(site(unique_domain()), settings)
    with run_context(settings) as ctx:
        assert step.skipped == "no DNS provider configured"
        assert step.preflight(ctx) == []
        assert step.check(ctx) is None
        step.rollback(ctx, step.apply(ctx))
        assert ctx._clients == {}  # no Route53 client was ever opened
