"""The dns step: the site's A (and AAAA) records for the domain and www, in Route53.

The zone is the account's public hosted zone with the longest name that is a suffix of the
domain. Every record set that differs is UPSERTed in one change batch, waited for until
INSYNC, then read back: an API that accepts a change it did not make (moto accepts a CREATE of
an existing record, and says INSYNC of any change id) must not pass for one that did. Rollback
puts back exactly the record set found before (TTL and values), or DELETEs exactly the one this
run made, and leaves alone a record someone changed since. With `dns_provider = none` the step
is skipped: nothing to check, nothing to do.
"""

from __future__ import annotations

from typing import Any

from provisioner.clients import ROUTE53
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.site import route53 as r53
from provisioner.site.spec import SiteSpec

# The TTL of a record this step creates; an existing record keeps its own.
DEFAULT_TTL = 300
SKIPPED = "no DNS provider configured"


class DnsStep(Step):
    """A (and AAAA when an IPv6 address is configured) for the domain and its www alias."""

    name = "dns"
    scope = Scope.GLOBAL

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    @property
    def skipped(self) -> str | None:
        """Why the step does nothing at all (no DNS provider), or None when it runs."""
        return SKIPPED if self.settings.dns_provider == "none" else None

    @property
    def hosts(self) -> tuple[str, str]:
        return (self.spec.domain, f"www.{self.spec.domain}")

    def _addresses(self) -> dict[str, str]:
        found = {"A": self.settings.public_ipv4, "AAAA": self.settings.public_ipv6}
        return {rtype: ip for rtype, ip in found.items() if ip}

    # ------------------------------------------------------------------ reading the world
    def _zone(self, client: Any) -> tuple[str, str]:
        zone, duplicates = r53.find_zone(client, self.spec.domain)
        if zone is None:
            raise r53.DnsError(self._no_zone())
        if duplicates:
            raise r53.DnsError(
                f"several public hosted zones are named {zone['Name']} "
                f"({', '.join([r53.zone_id(zone), *duplicates])}); delete the extra ones"
            )
        return r53.zone_id(zone), r53.fqdn(zone["Name"])

    def _no_zone(self) -> str:
        labels = self.spec.domain.split(".")
        parent = ".".join(labels[-2:])
        where = parent if parent == self.spec.domain else f"{parent} (or {self.spec.domain})"
        return (
            f"no Route53 hosted zone holds {self.spec.domain}: create a public hosted zone for "
            f"{where} and delegate it, or set PROVISION_DNS_PROVIDER=none"
        )

    def _plan(self, client: Any) -> tuple[str, str, list[dict[str, Any]]]:
        """The zone, and each record set that differs: name, type, found, wanted."""
        zone, zone_name = self._zone(client)
        plan = []
        for host in self.hosts:
            found = r53.records_at(client, zone, host)
            for rtype, ip in self._addresses().items():
                current = next((r for r in found if r["Type"] == rtype), None)
                simple = current is not None and "ResourceRecords" in current
                if simple and r53.values(current) == [ip]:
                    continue
                ttl = int(current.get("TTL", DEFAULT_TTL)) if simple and current else DEFAULT_TTL
                wanted = r53.simple_record(host, rtype, ttl, [ip])
                plan.append({"name": host, "type": rtype, "before": current, "after": wanted})
        return zone, zone_name, plan

    def preflight(self, ctx: RunContext) -> list[str]:
        if self.skipped:
            return []
        if not self._addresses():
            return [
                "DNS: PROVISION_PUBLIC_IPV4 (or PROVISION_PUBLIC_IPV6) is not set: set it to the "
                "web server's public address, or set PROVISION_DNS_PROVIDER=none"
            ]
        try:
            client = ctx.client(ROUTE53)
            zone, _ = self._zone(client)
            problems = []
            for host in self.hosts:
                for rrset in r53.records_at(client, zone, host):
                    if rrset["Type"] == "CNAME":
                        problems.append(
                            f"DNS: {host} has a CNAME record, which cannot stand beside an A "
                            "record; delete it in Route53 first"
                        )
                    elif rrset["Type"] in self._addresses() and "SetIdentifier" in rrset:
                        problems.append(
                            f"DNS: {host} {rrset['Type']} uses a routing policy "
                            f"({rrset['SetIdentifier']}); this tool manages simple records only"
                        )
            return problems
        except r53.DnsError as exc:
            return [f"DNS: {exc}"]
        except Exception as exc:  # botocore's errors have no common base worth naming here
            return [f"DNS: {_unreachable(self.settings, exc)}"]

    # ------------------------------------------------------------------ the contract
    def check(self, ctx: RunContext) -> Change | None:
        if self.skipped:
            return None
        zone, zone_name, plan = self._plan(ctx.client(ROUTE53))
        if not plan:
            return None
        before = [_entry(p, p["before"]) for p in plan]
        after = [_entry(p, p["after"]) for p in plan]
        old = "".join(r53.zone_line(p["before"]) for p in plan if p["before"])
        new = "".join(r53.zone_line(p["after"]) for p in plan)
        return Change(
            summary=self._summary(plan),
            before={"zone_id": zone, "zone": zone_name, "records": before},
            after={"zone_id": zone, "zone": zone_name, "records": after},
            diff=unified_diff(old or None, new, f"route53/{zone_name}"),
        )

    def _summary(self, plan: list[dict[str, Any]]) -> str:
        verb = "updated" if any(p["before"] for p in plan) else "added"
        parts = []
        for rtype, ip in self._addresses().items():
            if any(p["type"] == rtype for p in plan):
                parts.append(f"{rtype} record pointing to {ip}")
        names = sorted({p["name"] for p in plan}, key=len)
        return f"{verb} {' and '.join(parts)} for {' and '.join(names)}"

    def apply(self, ctx: RunContext) -> Undo:
        if self.skipped:
            return {"zone_id": None, "records": []}
        client = ctx.client(ROUTE53)
        zone, _, plan = self._plan(client)
        changes = [{"Action": "UPSERT", "ResourceRecordSet": p["after"]} for p in plan]
        r53.change_and_wait(client, zone, changes, f"provision site {self.spec.site_id}")
        r53.read_back(client, zone, [(p["name"], p["type"], p["after"]) for p in plan])
        return {
            "zone_id": zone,
            "records": [
                {"name": p["name"], "type": p["type"], "before": p["before"], "made": p["after"]}
                for p in plan
            ],
        }

    def undo_from_change(self, change: Change) -> Undo:
        before, after = change.before or {}, change.after or {}
        made = {(r["name"], r["type"]): r["rrset"] for r in after.get("records", [])}
        return {
            "zone_id": before.get("zone_id"),
            "records": [
                {
                    "name": r["name"],
                    "type": r["type"],
                    "before": r["rrset"],
                    "made": made.get((r["name"], r["type"])),
                }
                for r in before.get("records", [])
            ],
        }

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        records = undo.get("records") or []
        if not records:
            return
        client = ctx.client(ROUTE53)
        zone = undo["zone_id"]
        changes, expected = [], []
        for record in records:
            found = r53.current(client, zone, record["name"], record["type"])
            if not r53.same(found, record["made"]):
                continue  # never made, already undone, or changed by someone since: not ours
            if record["before"] is None:
                # found is the record exactly as Route53 holds it: what a DELETE must name.
                changes.append({"Action": "DELETE", "ResourceRecordSet": found})
            else:
                changes.append({"Action": "UPSERT", "ResourceRecordSet": record["before"]})
            expected.append((record["name"], record["type"], record["before"]))
        r53.change_and_wait(client, zone, changes, f"provision rollback {self.spec.site_id}")
        r53.read_back(client, zone, expected)


def _entry(plan: dict[str, Any], rrset: r53.RRSet | None) -> dict[str, Any]:
    return {"name": plan["name"], "type": plan["type"], "rrset": rrset}


def _unreachable(settings: Settings, exc: Exception) -> str:
    where = settings.aws_endpoint or "AWS"
    reason = " ".join(str(exc).split())[:200]
    return (
        f"Route53 at {where} did not answer ({type(exc).__name__}: {reason}); check the AWS "
        "credentials and PROVISION_AWS_ENDPOINT"
    )
