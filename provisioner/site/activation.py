"""The activation step: the site's record says whether it is live, through the data layer.

`provision site enable` sets sites.json `active: true` and the domains.json entry's status
`active`; `disable` sets `active: false` and status `disabled`. The data layer writes JSON,
PostgreSQL or both, as the migration phase says. Only those fields (and the entry's
`last_updated` stamp) are this step's: the rest of either record is left as found, and a
rollback puts back exactly the owned fields it changed, whatever else changed meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.aeims import data_layer_problems, iso_z
from provisioner.site.record import DOMAINS, SITES
from provisioner.site.spec import SiteSpec

# The fields each record owes this step (`last_updated` only moves when the status does).
OWNED = {"site": ("active",), "domain": ("status", "last_updated")}


def domain_status(active: bool) -> str:
    """domains.json's word for the state: `active` once enabled, `disabled` once taken down."""
    return "active" if active else "disabled"


class ActivationStep(Step):
    """sites.json `active` and domains.json `status` match the state asked for."""

    name = "activation"
    label = "Database"
    scope = Scope.GLOBAL

    def __init__(self, spec: SiteSpec, settings: Settings, active: bool) -> None:
        self.spec = spec
        self.settings = settings
        self.active = active
        # One clock per step, so check, a second check and apply agree on the stamp.
        self.now = datetime.now(UTC).replace(microsecond=0)

    def _keys(self) -> dict[str, tuple[str, str]]:
        return {"site": (SITES, self.spec.site_id), "domain": (DOMAINS, self.spec.domain)}

    def _state(self, ctx: RunContext) -> dict[str, dict[str, Any] | None]:
        layer = ctx.client(DATA_LAYER)
        return {part: layer.get(entity, key) for part, (entity, key) in self._keys().items()}

    def _wanted(self, before: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
        after: dict[str, Any] = dict(before)
        site = before["site"]
        if site is not None and site.get("active") is not self.active:
            after["site"] = {**site, "active": self.active}
        entry = before["domain"]
        status = domain_status(self.active)
        if entry is not None and entry.get("status") != status:
            after["domain"] = {**entry, "status": status, "last_updated": iso_z(self.now)}
        return after

    # ---------------------------------------------------------------- the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        problems = data_layer_problems(ctx)
        if problems:
            return problems
        if ctx.client(DATA_LAYER).get(SITES, self.spec.site_id) is None:
            problems.append(
                f"site {self.spec.site_id} has no record in sites.json: create it first "
                f"(provision site create --domain {self.spec.domain})"
            )
        return problems

    def check(self, ctx: RunContext) -> Change | None:
        before = self._state(ctx)
        after = self._wanted(before)
        if after == before:
            return None
        parts = []
        if after["site"] != before["site"]:
            word = "active" if self.active else "inactive"
            parts.append(f"site_id {self.spec.site_id} {word}")
        if after["domain"] != before["domain"]:
            parts.append(f"domains.json status {domain_status(self.active)}")
        return Change(summary=", ".join(parts), before=before, after=after)

    def apply(self, ctx: RunContext) -> Undo:
        change = self.check(ctx)
        if change is None:
            return {"before": None}
        layer = ctx.client(DATA_LAYER)
        for part, (entity, key) in self._keys().items():
            if change.after[part] != change.before[part]:
                layer.save(entity, change.after[part], key)
        return {"before": change.before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        """Put back the owned fields of each record as they were (absent ones removed)."""
        before = undo.get("before")
        if before is None:  # apply found nothing to do
            return
        layer = ctx.client(DATA_LAYER)
        for part, (entity, key) in self._keys().items():
            previous, current = before.get(part), layer.get(entity, key)
            if previous is None or current is None:
                continue  # none then (nothing of ours to undo) or none now (removed since)
            restored = dict(current)
            for field in OWNED[part]:
                if field in previous:
                    restored[field] = previous[field]
                else:
                    restored.pop(field, None)
            if restored != current:
                layer.save(entity, restored, key)
