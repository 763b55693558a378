"""DNS-01's TXT records in Route53 (the production provider) against the stack's real moto.

pebble validates DNS-01 through its own DNS server (challtestsrv), which cannot read moto, so
the end-to-end order with DNS-01 runs with challtestsrv (test_ansible_fleet.py); here the
Route53 side: the records written, shared with another client's token, and removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.config import Settings
from provisioner.site import acme_client as acme
from provisioner.site.route53_txt import Route53Txt, TxtError, route53_client
from tests.site_support import route53, stack_settings, unique_domain, upsert, zone_id


@pytest.fixture
def settings(stack_env: dict[str, str], tmp_path: Path) -> Settings:
    return dataclasses.replace(
        stack_settings(stack_env, tmp_path / "state"),
        acme_challenge="dns-01",
        challtestsrv_url=None,
        dns_provider="route53",
    )


@pytest.fixture
def r53(stack_env: dict[str, str]) -> Any:
    return route53(stack_env)


@pytest.fixture
def name(r53: Any) -> Iterator[str]:
    """`_acme-challenge.<fresh domain>`; whatever a test left there is removed afterwards."""
    fqdn = f"_acme-challenge.{unique_domain()}"
    yield fqdn
    zone = zone_id(r53, "aeims.test")
    for rrset in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]:
        if rrset["Name"].rstrip(".") == fqdn:
            batch = {"Changes": [{"Action": "DELETE", "ResourceRecordSet": rrset}]}
            r53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)


def txt(r53: Any, fqdn: str) -> tuple[int | None, list[str]] | None:
    zone = zone_id(r53, "aeims.test")
    for rrset in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]:
        if rrset["Name"].rstrip(".") == fqdn and rrset["Type"] == "TXT":
            return rrset.get("TTL"), sorted(r["Value"] for r in rrset["ResourceRecords"])
    return None


def test_dns01_without_challtestsrv_answers_through_route53(settings: Settings) -> None:
    answerer = acme.answerer_for(settings)
    assert isinstance(answerer, acme.Dns01)
    assert isinstance(answerer.provider, Route53Txt)


def test_dns01_with_no_dns_provider_is_one_line_naming_the_settings(settings: Settings) -> None:
    with pytest.raises(acme.AcmeError, match="PROVISION_DNS_PROVIDER=route53"):
        acme.answerer_for(dataclasses.replace(settings, dns_provider="none"))


def test_the_token_is_written_quoted_with_a_short_ttl_then_removed(
    settings: Settings, r53: Any, name: str
) -> None:
    provider = Route53Txt(route53_client(settings))
    provider.set_txt(name, "token-one")
    assert txt(r53, name) == (60, ['"token-one"'])
    provider.set_txt(name, "token-one")  # again: converges, no duplicate value
    assert txt(r53, name) == (60, ['"token-one"'])
    provider.clear_txt(name)
    assert txt(r53, name) is None


def test_another_clients_token_at_the_same_name_is_kept(
    settings: Settings, r53: Any, name: str
) -> None:
    upsert(r53, zone_id(r53, "aeims.test"), name, "TXT", 300, '"someone-else"')
    provider = Route53Txt(route53_client(settings))
    provider.set_txt(name, "ours")
    assert txt(r53, name) == (60, ['"ours"', '"someone-else"'])
    provider.clear_txt(name)
    assert txt(r53, name) == (60, ['"someone-else"'])


def test_a_name_with_no_hosted_zone_is_one_line_naming_it(settings: Settings) -> None:
    provider = Route53Txt(route53_client(settings))
    with pytest.raises(TxtError, match=r"no Route53 hosted zone holds _acme-challenge\.x\.nozone"):
        provider.set_txt("_acme-challenge.x.nozone.invalid", "token")
