"""The dns step of `site destroy`: the site's A and AAAA records (domain and www) deleted.

Every A and AAAA record set at the two names goes, whatever it points to (the site is being
removed; other types, a CAA or a TXT someone keeps there, stay). Each DELETE names the record
set exactly as Route53 holds it, the change is waited for and read back. Rollback re-creates
exactly the record sets it deleted, and leaves alone a name someone has set again since.
"""

from __future__ import annotations

from typing import Any

from provisioner.clients import ROUTE53
from provisioner.engine.step import Change, RunContext, Undo, unified_diff
from provisioner.site import route53 as r53
from provisioner.site.dns import DnsStep, _unreachable

TYPES = ("A", "AAAA")


class DnsRemovalStep(DnsStep):
    """No A or AAAA record at the domain or its www alias."""

    def _found(self, client: Any) -> tuple[str, str, list[r53.RRSet]]:
        zone, zone_name = self._zone(client)
        found = [
            rrset
            for host in self.hosts
            for rrset in r53.records_at(client, zone, host)
            if rrset["Type"] in TYPES
        ]
        return zone, zone_name, found

    def preflight(self, ctx: RunContext) -> list[str]:
        if self.skipped:
            return []
        try:
            self._zone(ctx.client(ROUTE53))
        except r53.DnsError as exc:
            return [f"DNS: {exc}"]
        except Exception as exc:  # botocore's errors have no common base worth naming here
            return [f"DNS: {_unreachable(self.settings, exc)}"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        if self.skipped:
            return None
        zone, zone_name, found = self._found(ctx.client(ROUTE53))
        if not found:
            return None
        names = sorted({r53.fqdn(r["Name"]).rstrip(".") for r in found}, key=len)
        types = sorted({r["Type"] for r in found})
        return Change(
            summary=f"deleted the {' and '.join(types)} records of {' and '.join(names)}",
            before={"zone_id": zone, "zone": zone_name, "records": found},
            after={"zone_id": zone, "zone": zone_name, "records": []},
            diff=unified_diff("".join(map(r53.zone_line, found)), None, f"route53/{zone_name}"),
        )

    def apply(self, ctx: RunContext) -> Undo:
        if self.skipped:
            return {"zone_id": None, "records": []}
        client = ctx.client(ROUTE53)
        zone, _, found = self._found(client)
        changes = [{"Action": "DELETE", "ResourceRecordSet": rrset} for rrset in found]
        r53.change_and_wait(client, zone, changes, f"provision destroy {self.spec.site_id}")
        r53.read_back(client, zone, [(r["Name"], r["Type"], None) for r in found])
        return {"zone_id": zone, "records": found}

    def undo_from_change(self, change: Change) -> Undo:
        before = change.before or {}
        return {"zone_id": before.get("zone_id"), "records": before.get("records", [])}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        records = undo.get("records") or []
        if not records:
            return
        client = ctx.client(ROUTE53)
        zone = undo["zone_id"]
        missing = [r for r in records if r53.current(client, zone, r["Name"], r["Type"]) is None]
        changes = [{"Action": "UPSERT", "ResourceRecordSet": rrset} for rrset in missing]
        r53.change_and_wait(client, zone, changes, f"provision rollback {self.spec.site_id}")
        r53.read_back(client, zone, [(r["Name"], r["Type"], r) for r in missing])
