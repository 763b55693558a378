"""The operators step: the site joins the AEIMS operator pool, through the data layer.

An operator serves a site when its `domains` map holds the domain with `active: true` (in both
operator files, and `operator_sites` in PostgreSQL: the data layer keeps them together).
`SiteSpec.operators` names the operators (ids or usernames); None means every active operator
of the pool. Rollback takes away exactly the links this run added, and puts back the previous
entry of a link it changed (an inactive one it re-activated).
"""

from __future__ import annotations

from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.pipeline import PipelineError
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.aeims import data_layer_problems
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
        """The operators the site should have: those named, or the pool's active ones."""
        if self.spec.operators is None:
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
            domains = operator.get("domains")
            entry = domains.get(self.spec.domain) if isinstance(domains, dict) else None
            if not (isinstance(entry, dict) and entry.get("active") is True):
                missing[op_id] = entry
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

    def check(self, ctx: RunContext) -> Change | None:
        ids, missing = self._links(ctx.client(DATA_LAYER))
        if not missing:
            return None
        summary = f"connected to AEIMS operator pool ({len(ids)} operators)"
        if len(missing) != len(ids):
            summary += f"; {len(missing)} newly linked"
        return Change(
            summary=summary,
            before={"domain": self.spec.domain, "links": missing},
            after={"domain": self.spec.domain, "operators": ids, "linked": sorted(missing)},
        )

    def apply(self, ctx: RunContext) -> Undo:
        layer = ctx.client(DATA_LAYER)
        _, missing = self._links(layer)
        for op_id in missing:
            layer.set_operator_site(op_id, self.spec.domain, role=ROLE, active=True)
        return {"before": {"domain": self.spec.domain, "links": missing}}

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
                operator["domains"] = {**domains, domain: previous}
                layer.save_operator(operator)
