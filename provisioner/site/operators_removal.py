"""The operators step of `site destroy`: every operator's link to the site removed.

Whoever made the link (create, add-operators, a person), every entry for the domain in the
operators' `domains` maps (both operator files, `operator_sites` in PostgreSQL: the data layer
keeps them together) goes. Rollback puts back each entry exactly as it was, for the operators
that still exist and have not been linked again since.
"""

from __future__ import annotations

from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.aeims import data_layer_problems
from provisioner.site.spec import SiteSpec
from provisioner.storage import DataLayer


class OperatorLinksRemovalStep(Step):
    """No operator links to the site."""

    name = "operators"
    label = "Integration"
    scope = Scope.GLOBAL

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    def links(self, layer: DataLayer) -> dict[str, Any]:
        """Each linked operator's id and its entry for the domain."""
        found: dict[str, Any] = {}
        for operator in layer.search_operators():
            domains = operator.get("domains")
            if isinstance(domains, dict) and self.spec.domain in domains:
                found[str(operator["id"])] = domains[self.spec.domain]
        return found

    def preflight(self, ctx: RunContext) -> list[str]:
        return data_layer_problems(ctx)

    def check(self, ctx: RunContext) -> Change | None:
        links = self.links(ctx.client(DATA_LAYER))
        if not links:
            return None
        return Change(
            summary=f"unlinked {len(links)} operator(s) from the site",
            before={"domain": self.spec.domain, "links": links},
            after={"domain": self.spec.domain, "links": {}},
        )

    def apply(self, ctx: RunContext) -> Undo:
        layer = ctx.client(DATA_LAYER)
        links = self.links(layer)
        for op_id in links:
            layer.remove_operator_site(op_id, self.spec.domain)
        return {"before": {"domain": self.spec.domain, "links": links}}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before") or {}
        layer = ctx.client(DATA_LAYER)
        domain = before.get("domain", self.spec.domain)
        for op_id, entry in (before.get("links") or {}).items():
            operator = layer.get_operator_by_id(op_id)
            domains = operator.get("domains") if operator else None
            if operator is None or (isinstance(domains, dict) and domain in domains):
                continue  # gone, or linked again since: not ours to overwrite
            operator["domains"] = {**(domains if isinstance(domains, dict) else {}), domain: entry}
            layer.save_operator(operator)
