"""The record step: the site in AEIMS's registry, through the data layer (any migration phase).

Two records: the site in `sites` (sites.json: site_id, domain, name, template, theme, ...,
`active: false` until `provision site enable`) and its entry in `domains` (domains.json keyed
by domain: status `provisioned`, ssl_status `pending`, counters at zero). The data layer
writes JSON, PostgreSQL or both, as the phase says.

A record that already exists is kept as it is (it may have been enabled, re-themed, or hold
stats) but for the fields this step owns: domain, name and template of the site, the domain of
the entry. Rollback deletes a record this run created and puts back one it changed, exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.aeims import data_layer_problems, iso_z, php_time
from provisioner.site.spec import SiteSpec, SiteType
from provisioner.site.templates import load_site_template

SITES, DOMAINS = "sites", "domains"
# Fields of an existing record a re-run sets; everything else there is someone else's.
SITE_OWNED = ("domain", "name", "template")
DOMAIN_OWNED = ("domain",)


class RecordStep(Step):
    """The site's sites.json record and domains.json entry exist, status provisioned."""

    name = "record"
    scope = Scope.GLOBAL

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        # One clock per step, so check, a second check and apply agree on the timestamps.
        self.now = datetime.now(UTC).replace(microsecond=0)

    def new_site(self) -> dict[str, Any]:
        """A new sites.json record, in the field order AEIMS writes (REPORT.md section 5)."""
        tpl = load_site_template(self.spec.template)
        if self.spec.type is SiteType.OPERATOR:
            stats: dict[str, Any] = {"total_operators": 0, "active_sites": 0, "total_revenue": 0.0}
        else:
            stats = {
                "total_customers": 0,
                "active_operators": 0,
                "total_calls": 0,
                "total_revenue": 0.0,
            }
        return {
            "site_id": self.spec.site_id,
            "domain": self.spec.domain,
            "name": self.spec.name,
            "description": tpl.description,
            "template": self.spec.template,
            "active": False,
            "created_at": php_time(self.now),
            "categories": list(tpl.categories),
            "theme": tpl.aeims_theme,
            "features": dict(tpl.features),
            "billing": dict(tpl.billing),
            "stats": stats,
        }

    def new_domain(self) -> dict[str, Any]:
        """A new domains.json entry: provisioned, no certificate yet, every counter at zero."""
        tpl = load_site_template(self.spec.template)
        stamp = iso_z(self.now)
        return {
            "domain": self.spec.domain,
            "theme": self.spec.name,
            "description": tpl.description,
            "services": list(tpl.services),
            "status": "provisioned",
            "ssl_status": "pending",
            "created_at": stamp,
            "last_updated": stamp,
            "monthly_revenue": 0.0,
            "monthly_calls": 0,
            "monthly_messages": 0,
            "uptime_percentage": 0.0,
            "operators_count": 0,
            "active_users": 0,
        }

    def _wanted(
        self, current: dict[str, Any] | None, new: dict[str, Any], owned: tuple[str, ...]
    ) -> dict[str, Any]:
        if current is None:
            return new
        wanted = dict(current)
        changed = {key: new[key] for key in owned if current.get(key) != new[key]}
        wanted.update(changed)
        if changed and "last_updated" in current:
            wanted["last_updated"] = new.get("last_updated", current["last_updated"])
        return wanted

    def _state(self, ctx: RunContext) -> dict[str, Any]:
        layer = ctx.client(DATA_LAYER)
        return {
            "site": layer.get(SITES, self.spec.site_id),
            "domain": layer.get(DOMAINS, self.spec.domain),
        }

    # ---------------------------------------------------------------- the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        problems = data_layer_problems(ctx)
        if problems:
            return problems
        layer = ctx.client(DATA_LAYER)
        for site in layer.list_sites():
            same_id = site.get("site_id") == self.spec.site_id
            same_domain = site.get("domain") == self.spec.domain
            if same_id != same_domain:
                problems.append(
                    f"sites.json already has site {site.get('site_id')!r} for domain "
                    f"{site.get('domain')!r}, which clashes with {self.spec.domain} "
                    f"({self.spec.site_id}): fix or remove that record first"
                )
        return problems

    def check(self, ctx: RunContext) -> Change | None:
        before = self._state(ctx)
        after = {
            "site": self._wanted(before["site"], self.new_site(), SITE_OWNED),
            "domain": self._wanted(before["domain"], self.new_domain(), DOMAIN_OWNED),
        }
        if after == before:
            return None
        parts = []
        subjects = {
            "site": f"site_id {self.spec.site_id}",
            "domain": f"domains.json entry {self.spec.domain}",
        }
        for key, what in subjects.items():
            if before[key] is None:
                parts.append(f"{what} created")
            elif before[key] != after[key]:
                parts.append(f"{what} updated")
        return Change(summary=", ".join(parts), before=before, after=after)

    def apply(self, ctx: RunContext) -> Undo:
        change = self.check(ctx)
        if change is None:
            return {"before": None}
        layer = ctx.client(DATA_LAYER)
        if change.after["site"] != change.before["site"]:
            layer.save(SITES, change.after["site"], self.spec.site_id)
        if change.after["domain"] != change.before["domain"]:
            layer.save(DOMAINS, change.after["domain"], self.spec.domain)
        return {"before": change.before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before")
        if before is None:  # apply found nothing to do
            return
        layer = ctx.client(DATA_LAYER)
        for entity, key, previous in (
            (SITES, self.spec.site_id, before["site"]),
            (DOMAINS, self.spec.domain, before["domain"]),
        ):
            if previous is None:
                layer.delete(entity, key)
            elif layer.get(entity, key) != previous:
                layer.save(entity, previous, key)
