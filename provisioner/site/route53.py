"""Route53 reads and writes for the dns step: the zone of a name, the record sets at a name, and
one change batch applied, waited for (INSYNC) and read back.

Record sets travel as Route53's own `ResourceRecordSet` dicts (as `list_resource_record_sets`
returns them), so one read back can be sent again unchanged: a DELETE must name the exact
current record (TTL and values), and a restore puts back exactly what was read.
"""

from __future__ import annotations

from typing import Any

RRSet = dict[str, Any]
# Real Route53 reaches INSYNC in about a minute; give it five before calling the change lost.
WAIT_DELAY_SECONDS = 3
WAIT_MAX_ATTEMPTS = 100


class DnsError(RuntimeError):
    """Route53 refused a change, or did not end up holding what it accepted."""


def fqdn(name: str) -> str:
    """Route53's form of a name: lowercase, with the trailing dot."""
    return name.lower().rstrip(".") + "."


def find_zone(client: Any, domain: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The public hosted zone whose name is the longest suffix of `domain` (or None), and the ids
    of any other public zone of that same name (Route53 allows duplicates: ambiguous)."""
    name = fqdn(domain)
    best: list[dict[str, Any]] = []
    for page in client.get_paginator("list_hosted_zones").paginate():
        for zone in page["HostedZones"]:
            if zone.get("Config", {}).get("PrivateZone"):
                continue
            zone_name = fqdn(zone["Name"])
            if name != zone_name and not name.endswith("." + zone_name):
                continue
            if not best or len(zone_name) > len(fqdn(best[0]["Name"])):
                best = [zone]
            elif zone_name == fqdn(best[0]["Name"]):
                best.append(zone)
    if not best:
        return None, []
    return best[0], [zone_id(zone) for zone in best[1:]]


def zone_id(zone: dict[str, Any]) -> str:
    """The bare id (`Z123`), whichever form Route53 gave (`/hostedzone/Z123`)."""
    return str(zone["Id"]).rsplit("/", 1)[-1]


def records_at(client: Any, zone: str, name: str) -> list[RRSet]:
    """Every record set named `name` in the zone (of every type), as Route53 returns them."""
    wanted = fqdn(name)
    found: list[RRSet] = []
    kwargs: dict[str, Any] = {"HostedZoneId": zone, "StartRecordName": wanted, "MaxItems": "100"}
    while True:
        page = client.list_resource_record_sets(**kwargs)
        for rrset in page["ResourceRecordSets"]:
            if fqdn(rrset["Name"]) != wanted:
                return found
            found.append(rrset)
        if not page.get("IsTruncated"):
            return found
        kwargs["StartRecordName"] = page["NextRecordName"]
        kwargs["StartRecordType"] = page["NextRecordType"]
        if page.get("NextRecordIdentifier"):
            kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]


def simple_record(name: str, rtype: str, ttl: int, values: list[str]) -> RRSet:
    return {
        "Name": fqdn(name),
        "Type": rtype,
        "TTL": ttl,
        "ResourceRecords": [{"Value": value} for value in values],
    }


def same(a: RRSet | None, b: RRSet | None) -> bool:
    """Equal as DNS sees them: names' case and trailing dot, and the values' order, aside."""
    if a is None or b is None:
        return a is b

    def norm(rrset: RRSet) -> RRSet:
        out = dict(rrset, Name=fqdn(rrset["Name"]))
        if "ResourceRecords" in out:
            out["ResourceRecords"] = sorted(r["Value"] for r in out["ResourceRecords"])
        return out

    return norm(a) == norm(b)


def values(rrset: RRSet | None) -> list[str]:
    return [] if rrset is None else [r["Value"] for r in rrset.get("ResourceRecords", [])]


def zone_line(rrset: RRSet) -> str:
    """A record set as a zone file line, for diffs."""
    if "AliasTarget" in rrset:
        target = rrset["AliasTarget"]["DNSName"]
        return f"{fqdn(rrset['Name'])} ALIAS {rrset['Type']} {target}\n"
    ttl = rrset.get("TTL", "")
    return "".join(
        f"{fqdn(rrset['Name'])} {ttl} IN {rrset['Type']} {value}\n" for value in values(rrset)
    )


def change_and_wait(client: Any, zone: str, changes: list[dict[str, Any]], comment: str) -> None:
    """Send one change batch and wait, bounded, until Route53 reports it INSYNC."""
    if not changes:
        return
    answer = client.change_resource_record_sets(
        HostedZoneId=zone, ChangeBatch={"Comment": comment[:256], "Changes": changes}
    )
    client.get_waiter("resource_record_sets_changed").wait(
        Id=answer["ChangeInfo"]["Id"],
        WaiterConfig={"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": WAIT_MAX_ATTEMPTS},
    )


def read_back(client: Any, zone: str, expected: list[tuple[str, str, RRSet | None]]) -> None:
    """Check the zone now holds exactly `expected` ((name, type, record set or None) each):
    an API that accepts a change it did not make (moto does) must not pass for one that did."""
    for name, rtype, wanted in expected:
        found = current(client, zone, name, rtype)
        if not same(found, wanted):
            shown = zone_line(found).strip() if found else "nothing"
            raise DnsError(
                f"Route53 accepted the change but {fqdn(name)} {rtype} reads back as {shown}"
            )


def current(client: Any, zone: str, name: str, rtype: str) -> RRSet | None:
    """The record set of this name and type (the first, if a routing policy makes several)."""
    for rrset in records_at(client, zone, name):
        if rrset["Type"] == rtype:
            return rrset
    return None
