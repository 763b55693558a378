"""The operator links step: operators added to a site, removed from it, or their links made
active again (`site add-operators`, `remove-operators`, `enable`), through the data layer.

A link is the operator's `domains` map entry for the site (both operator files, and
`operator_sites` in PostgreSQL: the data layer keeps them together, in every migration phase).
The operators are the ids in `SiteSpec.operators` (resolved by the command before the run, so
a resumed run acts on the same ones), or for `activate` every operator already linked to the
site. Rollback is the operators step's: each changed link back to its previous entry, a link
this run made removed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Undo
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


def _entry(operator: dict[str, Any], domain: str) -> Any:
    domains = operator.get("domains")
    return domains.get(domain) if isinstance(domains, dict) else None


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
                op for op in layer.list("operators") if _entry(op, self.spec.domain) is not None
            ]
        return self.pool(layer)

    def _pending(self, layer: DataLayer) -> dict[str, dict[str, Any]]:
        """The operators whose link must change, by id."""
        pending = {}
        for operator in self.targets(layer):
            entry = _entry(operator, self.spec.domain)
            if self.action is LinkAction.REMOVE:
                needed = entry is not None
            else:
                needed = not (isinstance(entry, dict) and entry.get("active") is True)
            if needed:
                pending[str(operator["id"])] = operator
        return pending

    def check(self, ctx: RunContext) -> Change | None:
        pending = self._pending(ctx.client(DATA_LAYER))
        if not pending:
            return None
        names = ", ".join(who(op) for op in pending.values())
        links = {op_id: _entry(op, self.spec.domain) for op_id, op in pending.items()}
        return Change(
            summary=f"{self.action.verb} operators: {names}",
            before={"domain": self.spec.domain, "links": links},
            after={"domain": self.spec.domain, self.action.verb: sorted(pending)},
        )

    def apply(self, ctx: RunContext) -> Undo:
        layer = ctx.client(DATA_LAYER)
        pending = self._pending(layer)
        links = {op_id: _entry(op, self.spec.domain) for op_id, op in pending.items()}
        for op_id, entry in links.items():
            if self.action is LinkAction.REMOVE:
                layer.remove_operator_site(op_id, self.spec.domain)
            else:
                role = entry.get("role", ROLE) if isinstance(entry, dict) else ROLE
                layer.set_operator_site(op_id, self.spec.domain, role=str(role), active=True)
        return {"before": {"domain": self.spec.domain, "links": links}}
