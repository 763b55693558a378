"""The billing step: the site registered with the SexaComms billing system (docs/billing-api.md).

An idempotent PUT keyed by site_id; rollback DELETEs a registration this run made, or PUTs
back the one found before, and leaves alone one someone changed since. Without
`billing_url` the step is skipped. The token (settings.billing_token) goes only into the
Authorization header: it is in no Change, undo record, message or output.
"""

from __future__ import annotations

import json
from typing import Any

from provisioner.clients import HTTP
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.site.billing_api import BillingApi, BillingError, RetryPolicy
from provisioner.site.spec import SiteSpec, SiteType

SKIPPED = "no billing system configured"
# AEIMS's terms for a new site (data/sites.json: every customer site has these, and the
# operator site its commission), until the command takes them as options.
DEFAULT_BILLING: dict[SiteType, dict[str, Any]] = {
    SiteType.CUSTOMER: {"per_minute_rate": 2.99, "minimum_purchase": 10.0, "currency": "USD"},
    SiteType.OPERATOR: {"operator_commission": 0.6, "currency": "USD"},
}
FIELDS = ("domain", "name", "type", "billing")


class BillingStep(Step):
    """PUT /v1/sites/{site_id} with the site's domain, name, type and billing terms."""

    name = "billing"
    scope = Scope.GLOBAL
    # Preflight asks once, quickly: a service down is reported, not waited for.
    preflight_policy = RetryPolicy(attempts=2, deadline=5.0)
    policy = RetryPolicy()

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    @property
    def skipped(self) -> str | None:
        """Why the step does nothing at all (no billing system), or None when it runs."""
        return SKIPPED if not self.settings.billing_url else None

    def document(self) -> dict[str, Any]:
        """The registration this site should have (the PUT body)."""
        return {
            "domain": self.spec.domain,
            "name": self.spec.name,
            "type": str(self.spec.type),
            "billing": dict(DEFAULT_BILLING[self.spec.type]),
        }

    def _api(self, ctx: RunContext, policy: RetryPolicy | None = None) -> BillingApi:
        if not self.settings.billing_url or not self.settings.billing_token:
            raise BillingError(_NO_BILLING_KEY_HELP)
        return BillingApi(
            ctx.client(HTTP),
            self.settings.billing_url,
            self.settings.billing_token,
            policy or self.policy,
        )

    def _current(self, api: BillingApi) -> dict[str, Any] | None:
        """What the billing system holds for the site, in the PUT body's fields."""
        found = api.get(self.spec.site_id)
        return None if found is None else {k: found.get(k) for k in FIELDS}

    def preflight(self, ctx: RunContext) -> list[str]:
        if self.skipped:
            return []
        if not self.settings.billing_token:
            return [f"Billing: {_NO_BILLING_KEY_HELP}"]
        try:
            self._current(self._api(ctx, self.preflight_policy))
        except BillingError as exc:
            return [f"Billing: {exc}"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        if self.skipped:
            return None
        current = self._current(self._api(ctx))
        wanted = self.document()
        if current == wanted:
            return None
        site = self.spec.site_id
        summary = (
            "connected to SexaComms billing system"
            if current is None
            else f"updated the SexaComms billing registration of {site}"
        )
        return Change(
            summary=summary,
            before=current,
            after=wanted,
            diff=unified_diff(_text(current), _text(wanted), f"billing/v1/sites/{site}"),
        )

    def apply(self, ctx: RunContext) -> Undo:
        if self.skipped:
            return {"site_id": self.spec.site_id, "before": None, "made": None}
        api = self._api(ctx)
        before = self._current(api)
        wanted = self.document()
        if before != wanted:
            api.put(self.spec.site_id, wanted)
        # A changed or unchanged answer alike: read back what the system now holds.
        if self._current(api) != wanted:
            raise BillingError(f"the billing system did not store {self.spec.site_id} as sent")
        return {"site_id": self.spec.site_id, "before": before, "made": wanted}

    def undo_from_change(self, change: Change) -> Undo:
        return {"site_id": self.spec.site_id, "before": change.before, "made": change.after}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        made, before = undo.get("made"), undo.get("before")
        if made is None or made == before:
            return
        api = self._api(ctx)
        site_id = undo["site_id"]
        if self._current(api) != made:
            return  # never made, already undone, or changed by someone since: not ours
        if before is None:
            api.delete(site_id)
        else:
            api.put(site_id, before)


_NO_BILLING_KEY_HELP = (
    "PROVISION_BILLING_TOKEN is not set: export the SexaComms API token (environment only), "
    "or unset PROVISION_BILLING_URL to skip billing"
)


def _text(document: dict[str, Any] | None) -> str | None:
    return None if document is None else json.dumps(document, indent=2, sort_keys=True) + "\n"
