"""The operators step as `site status` checks it: the links are the site's intended operators.

Once the site's record keeps its intended operators (intended_operators.py), drift is an
intended operator without an active link (unlinked by hand, made inactive, or gone from the
operator files), or an active link of an operator outside the set (a link nobody intended); the
diff is the operators linked now against the intended ones. A site that keeps no set (created
before sets were kept) is checked as `site create` checks it: against the pool's active
operators.

`apply` makes the links match the set (an operator gone from the files leaves it), so the step
keeps the whole contract; rollback is the operators step's (links and set as they were).
"""

from __future__ import annotations

from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.engine.step import Change, RunContext, Undo, unified_diff
from provisioner.site.intended_operators import (
    SetChange,
    intended_of,
    is_linked,
    link_of,
    write_set,
)
from provisioner.site.operator_links import who
from provisioner.site.operators import ROLE, OperatorsStep
from provisioner.site.record import SITES
from provisioner.storage import DataLayer


def _lines(ids: list[str]) -> str:
    return "".join(f"{op_id}\n" for op_id in ids)


class IntendedLinksStep(OperatorsStep):
    """The operators actively linked to the site are exactly its intended operators."""

    name = "operators"
    label = "Integration"

    def _drift(self, layer: DataLayer) -> dict[str, Any] | None:
        """The set, the links now and how they differ; None when the site keeps no set."""
        kept = intended_of(layer.get(SITES, self.spec.site_id))
        if kept is None:
            return None
        operators = {str(op["id"]): op for op in layer.list("operators")}
        linked = sorted(op_id for op_id, op in operators.items() if is_linked(op, self.spec.domain))
        return {
            "intended": kept,
            "linked": linked,
            "unlinked": [op_id for op_id in kept if op_id in operators and op_id not in linked],
            "gone": [op_id for op_id in kept if op_id not in operators],
            "unintended": [op_id for op_id in linked if op_id not in kept],
            "operators": operators,
        }

    @staticmethod
    def _named(ids: list[str], operators: dict[str, Any]) -> str:
        return ", ".join(who(operators[op_id]) if op_id in operators else op_id for op_id in ids)

    def _links_before(self, drift: dict[str, Any]) -> dict[str, Any]:
        """The previous entry of every link apply changes (None: no link)."""
        operators = drift["operators"]
        changing = [*drift["unlinked"], *drift["unintended"]]
        return {op_id: link_of(operators[op_id], self.spec.domain) for op_id in changing}

    def _set_without_gone(self, drift: dict[str, Any]) -> SetChange | None:
        if not drift["gone"]:
            return None
        now = [op_id for op_id in drift["intended"] if op_id not in drift["gone"]]
        return SetChange(self.spec.site_id, drift["intended"], now)

    def check(self, ctx: RunContext) -> Change | None:
        layer = ctx.client(DATA_LAYER)
        drift = self._drift(layer)
        if drift is None:
            return super().check(ctx)  # no set kept: the pool's active operators
        if not (drift["unlinked"] or drift["gone"] or drift["unintended"]):
            return None
        operators = drift["operators"]
        parts = []
        if drift["unlinked"]:
            named = self._named(drift["unlinked"], operators)
            parts.append(f"{len(drift['unlinked'])} intended operator(s) unlinked: {named}")
        if drift["gone"]:
            parts.append(
                f"{len(drift['gone'])} intended operator(s) no longer exist: "
                f"{', '.join(drift['gone'])}"
            )
        if drift["unintended"]:
            named = self._named(drift["unintended"], operators)
            parts.append(f"{len(drift['unintended'])} link(s) nobody intended: {named}")
        before: dict[str, Any] = {
            "domain": self.spec.domain,
            "links": self._links_before(drift),
            "linked": drift["linked"],
        }
        if (gone := self._set_without_gone(drift)) is not None:
            before["intended"] = gone.before()
        after = {
            "domain": self.spec.domain,
            "intended": drift["intended"],
            "unlinked": drift["unlinked"] + drift["gone"],
            "unintended": drift["unintended"],
        }
        diff = unified_diff(_lines(drift["linked"]), _lines(drift["intended"]), "operators linked")
        return Change(summary="; ".join(parts), before=before, after=after, diff=diff)

    def apply(self, ctx: RunContext) -> Undo:
        layer = ctx.client(DATA_LAYER)
        drift = self._drift(layer)
        if drift is None:
            return super().apply(ctx)
        links = self._links_before(drift)
        before: dict[str, Any] = {"domain": self.spec.domain, "links": links}
        if (gone := self._set_without_gone(drift)) is not None:
            before["intended"] = gone.before()
            write_set(layer, self.spec.site_id, gone.now)
        for op_id, entry in links.items():
            if op_id in drift["unintended"]:
                layer.remove_operator_site(op_id, self.spec.domain)
            else:
                role = entry.get("role", ROLE) if isinstance(entry, dict) else ROLE
                layer.set_operator_site(op_id, self.spec.domain, role=str(role), active=True)
        return {"before": before}
