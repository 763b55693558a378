"""The operators step: the site joins the AEIMS operator pool, through the data layer.

An operator serves a site when its `domains` map holds the domain with `active: true` (in both
operator files, and `operator_sites` in PostgreSQL: the data layer keeps them together).
`SiteSpec.operators` names the operators (ids or usernames); None means the site's intended
operators once its record keeps them (intended_operators.py), else every active operator of the
pool. The operators it links join that set (a set is started when it links someone). Rollback
takes away exactly the links this run added, puts back the previous entry of a link it changed
(an inactive one it re-activated), and the set as it was.
"""

from __future__ import annotations

from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.pipeline import PipelineError
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.aeims import data_layer_problems
from provisioner.site.intended_operators import (
    SetChange,
    intended_of,
    is_linked,
    link_of,
    plan_set,
    restore_set,
    write_set,
)
from provisioner.site.record import SITES
from provisioner.site.spec import SiteSpec
from provisioner.storage import DataLayer

ROLE = "operator"


class OperatorsStep(Step):
    """Every chosen operator has an active link to the site."""

    name = "operators"
    scope = Scope.GLOBAL

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    def _unknown(self, layer: DataLayer) -> list[str]:
        return [ref for ref in self.spec.operators or () if self._find(layer, ref) is None]

    @staticmethod
    def _find(layer: DataLayer, ref: str) -> dict[str, Any] | None:
        return layer.get_operator_by_id(ref) or layer.get_operator(ref)

    def pool(self, layer: DataLayer) -> list[dict[str, Any]]:
        """The operators the site should have: those named, else its intended ones once it
        keeps a set (those that still exist), else the pool's active ones."""
        if self.spec.operators is None:
            kept = intended_of(layer.get(SITES, self.spec.site_id))
            if kept is not None:
                found = (layer.get_operator_by_id(op_id) for op_id in kept)
                return [op for op in found if op is not None]
            return [op for op in layer.search_operators() if op.get("status") == "active"]
        if unknown := self._unknown(layer):
            raise PipelineError(
                f"no AEIMS operator {', '.join(unknown)}: check the ids or usernames given "
                "to --operators (`provision data operators` lists them)"
            )
        found: dict[str, dict[str, Any]] = {}
        for ref in self.spec.operators:
            operator = self._find(layer, ref)
            assert operator is not None  # checked above
            found.setdefault(str(operator["id"]), operator)
        return list(found.values())

    def _links(self, layer: DataLayer) -> tuple[list[str], dict[str, Any]]:
        """The pool's ids, and for each operator not yet linked, its current entry (or None)."""
        ids: list[str] = []
        missing: dict[str, Any] = {}
        for operator in self.pool(layer):
            op_id = str(operator["id"])
            ids.append(op_id)
            if not is_linked(operator, self.spec.domain):
                missing[op_id] = link_of(operator, self.spec.domain)
        return ids, missing

    # ---------------------------------------------------------------- the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        problems = data_layer_problems(ctx)
        if problems:
            return problems
        if unknown := self._unknown(ctx.client(DATA_LAYER)):
            problems.append(
                f"no AEIMS operator {', '.join(unknown)}: check the ids or usernames given to "
                "--operators"
            )
        return problems

    def _set_change(
        self, layer: DataLayer, ids: list[str], missing: dict[str, Any]
    ) -> SetChange | None:
        """The site's set with these operators in it (started only when some get linked)."""
        return plan_set(layer, self.spec, add=ids, start=bool(missing))

    def check(self, ctx: RunContext) -> Change | None:
        layer = ctx.client(DATA_LAYER)
        ids, missing = self._links(layer)
        intended = self._set_change(layer, ids, missing)
        if not missing and intended is None:
            return None
        before: dict[str, Any] = {"domain": self.spec.domain, "links": missing}
        after: dict[str, Any] = {"domain": self.spec.domain, "operators": ids}
        after["linked"] = sorted(missing)
        if intended is not None:
            before["intended"] = intended.before()
            after["intended"] = intended.now
        if missing:
            summary = f"connected to AEIMS operator pool ({len(ids)} operators)"
            if len(missing) != len(ids):
                summary += f"; {len(missing)} newly linked"
        else:
            assert intended is not None  # checked above
            summary = f"the site's intended operators recorded ({len(intended.now)})"
        return Change(summary=summary, before=before, after=after)

    def apply(self, ctx: RunContext) -> Undo:
        layer = ctx.client(DATA_LAYER)
        ids, missing = self._links(layer)
        intended = self._set_change(layer, ids, missing)
        before: dict[str, Any] = {"domain": self.spec.domain, "links": missing}
        if intended is not None:  # the intent first: a run cut short is resumed from it
            before["intended"] = intended.before()
            write_set(layer, self.spec.site_id, intended.now)
        for op_id in missing:
            layer.set_operator_site(op_id, self.spec.domain, role=ROLE, active=True)
        return {"before": before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before") or {}
        layer = ctx.client(DATA_LAYER)
        domain = before.get("domain", self.spec.domain)
        for op_id, previous in (before.get("links") or {}).items():
            operator = layer.get_operator_by_id(op_id)
            if operator is None:
                continue  # removed since: nothing of ours is left to take back
            domains = operator.get("domains")
            current = domains.get(domain) if isinstance(domains, dict) else None
            if previous is None:
                if current is not None:
                    layer.remove_operator_site(op_id, domain)
            elif current != previous:
                operator["domains"] = {
                    **(domains if isinstance(domains, dict) else {}),
                    domain: previous,
                }
                layer.save_operator(operator)
        restore_set(layer, before)
