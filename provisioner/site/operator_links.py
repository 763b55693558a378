"""The operator links step: operators added to a site, removed from it, or their links made
active again (`site add-operators`, `remove-operators`, `enable`), through the data layer.

A link is the operator's `domains` map entry for the site (both operator files, and
`operator_sites` in PostgreSQL: the data layer keeps them together, in every migration phase).
The operators are the ids in `SiteSpec.operators` (resolved by the command before the run, so
a resumed run acts on the same ones), or for `activate` every operator already linked to the
site. `add` and `remove` also change the site's intended operators (intended_operators.py:
the set `site status` holds the links to), the set first, then the links. Rollback is the
operators step's: each changed link back to its previous entry, a link this run made removed,
the set as it was.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Undo
from provisioner.site.intended_operators import SetChange, link_of, plan_set, write_set
from provisioner.site.operators import ROLE, OperatorsStep
from provisioner.site.spec import SiteSpec
from provisioner.storage import DataLayer


class LinkAction(StrEnum):
    ADD = "add"  # the named operators get an active link
    REMOVE = "remove"  # the named operators lose their link
    ACTIVATE = "activate"  # every link the site has becomes active

    @property
    def verb(self) -> str:
        return {"add": "added", "remove": "removed", "activate": "activated"}[self.value]


def who(operator: dict[str, Any]) -> str:
    """An operator as the output names it: `jade (op_jade_001)`."""
    login = operator.get("username")
    if login is None or login == "":
        login = operator.get("name") or operator.get("id")
    return f"{login} ({operator.get('id')})"


class OperatorLinksStep(OperatorsStep):
    """The chosen operators' links to the site are as the action says."""

    name = "operators"
    label = "Operator pool"

    def __init__(self, spec: SiteSpec, settings: Settings, action: LinkAction) -> None:
        super().__init__(spec, settings)
        self.action = LinkAction(action)
        if self.action is not LinkAction.ACTIVATE and spec.operators is None:
            raise ValueError(f"operators to {self.action.value} must be named")

    def targets(self, layer: DataLayer) -> list[dict[str, Any]]:
        """The operators the action is about: those named, or every one linked to the site."""
        if self.action is LinkAction.ACTIVATE:
            return [
                op for op in layer.list("operators") if link_of(op, self.spec.domain) is not None
            ]
        return self.pool(layer)

    def _pending(self, layer: DataLayer) -> dict[str, dict[str, Any]]:
        """The operators whose link must change, by id."""
        pending = {}
        for operator in self.targets(layer):
            entry = link_of(operator, self.spec.domain)
            if self.action is LinkAction.REMOVE:
                needed = entry is not None
            else:
                needed = not (isinstance(entry, dict) and entry.get("active") is True)
            if needed:
                pending[str(operator["id"])] = operator
        return pending

    def _named_set_change(self, layer: DataLayer) -> SetChange | None:
        """The site's set with the named operators added or removed (enable leaves it)."""
        if self.action is LinkAction.ACTIVATE:
            return None
        named = [str(op["id"]) for op in self.targets(layer)]
        if self.action is LinkAction.ADD:
            return plan_set(layer, self.spec, add=named, start=True)
        return plan_set(layer, self.spec, remove=named, start=True)

    def check(self, ctx: RunContext) -> Change | None:
        layer = ctx.client(DATA_LAYER)
        pending = self._pending(layer)
        intended = self._named_set_change(layer)
        if not pending and intended is None:
            return None
        links = {op_id: link_of(op, self.spec.domain) for op_id, op in pending.items()}
        before: dict[str, Any] = {"domain": self.spec.domain, "links": links}
        after: dict[str, Any] = {"domain": self.spec.domain, self.action.verb: sorted(pending)}
        if intended is not None:
            before["intended"] = intended.before()
            after["intended"] = intended.now
        if pending:
            summary = (
                f"{self.action.verb} operators: {', '.join(who(op) for op in pending.values())}"
            )
        else:
            assert intended is not None  # checked above
            summary = (
                f"no link to change; the site's intended operators recorded "
                f"({len(intended.now)}: {', '.join(intended.now) or 'none'})"
            )
        return Change(summary=summary, before=before, after=after)

    def apply(self, ctx: RunContext) -> Undo:
        layer = ctx.client(DATA_LAYER)
        pending = self._pending(layer)
        intended = self._named_set_change(layer)
        links = {op_id: link_of(op, self.spec.domain) for op_id, op in pending.items()}
        before: dict[str, Any] = {"domain": self.spec.domain, "links": links}
        if intended is not None:  # the intent first: a run cut short is resumed from it
            before["intended"] = intended.before()
            write_set(layer, self.spec.site_id, intended.now)
        for op_id, entry in links.items():
            if self.action is LinkAction.REMOVE:
                layer.remove_operator_site(op_id, self.spec.domain)
            else:
                role = entry.get("role", ROLE) if isinstance(entry, dict) else ROLE
                layer.set_operator_site(op_id, self.spec.domain, role=str(role), active=True)
        return {"before": before}
