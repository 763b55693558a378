"""The billing step of `site destroy`: the site's registration DELETEd from the billing system.

Rollback PUTs back the registration it deleted (the fields of docs/billing-api.md's PUT body:
the server stamps its own times again), unless the site was registered again since.
"""

from __future__ import annotations

from provisioner.engine.step import Change, RunContext, Undo, unified_diff
from provisioner.site.billing import BillingStep, _text


class BillingRemovalStep(BillingStep):
    """The billing system holds no registration for the site."""

    def check(self, ctx: RunContext) -> Change | None:
        if self.skipped:
            return None
        current = self._current(self._api(ctx))
        if current is None:
            return None
        site = self.spec.site_id
        return Change(
            summary=f"removed {site} from the SexaComms billing system",
            before=current,
            after=None,
            diff=unified_diff(_text(current), None, f"billing/v1/sites/{site}"),
        )

    def apply(self, ctx: RunContext) -> Undo:
        if self.skipped:
            return {"site_id": self.spec.site_id, "before": None}
        api = self._api(ctx)
        before = self._current(api)
        if before is not None:
            api.delete(self.spec.site_id)
        return {"site_id": self.spec.site_id, "before": before}

    def undo_from_change(self, change: Change) -> Undo:
        return {"site_id": self.spec.site_id, "before": change.before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before")
        if before is None:
            return
        api = self._api(ctx)
        if self._current(api) is None:
            api.put(undo["site_id"], before)
