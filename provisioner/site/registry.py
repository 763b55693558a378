"""A site as the registry holds it: found by site_id or domain, and turned back into a SiteSpec.

The lifecycle commands (status, destroy) start from a site that exists, not from user input:
its spec is rebuilt from its sites.json record and validated again (a record edited by hand
must not put an unchecked name into a page or a command), and its vhost state comes from the
record (active: live; otherwise coming soon until the first enable, maintenance after a
disable), never from the vhost on disk, so a vhost edited by hand shows as drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner.site.nginx import VhostState
from provisioner.site.spec import SiteSpec, SiteType
from provisioner.storage import DataLayer

# domains.json `status` of a site that was created and never enabled.
PROVISIONED = "provisioned"


@dataclass(frozen=True)
class SiteRecord:
    """A site's sites.json record and domains.json entry (None when that one is missing)."""

    site: dict[str, Any]
    domain_entry: dict[str, Any] | None

    @property
    def site_id(self) -> str:
        return str(self.site.get("site_id") or "")

    @property
    def domain(self) -> str:
        return str(self.site.get("domain") or "")

    @property
    def status(self) -> str:
        """active, provisioned, or disabled: what `site list` shows."""
        if self.site.get("active") is True:
            return "active"
        if (self.domain_entry or {}).get("status", PROVISIONED) == PROVISIONED:
            return "provisioned"
        return "disabled"

    @property
    def vhost_state(self) -> VhostState:
        return {
            "active": VhostState.LIVE,
            "provisioned": VhostState.COMING_SOON,
        }.get(self.status, VhostState.MAINTENANCE)

    @property
    def site_type(self) -> SiteType:
        """sites.json has no type field: an operator site's stats count operators."""
        stats = self.site.get("stats")
        if isinstance(stats, dict) and "total_operators" in stats:
            return SiteType.OPERATOR
        return SiteType.CUSTOMER

    def params(self) -> dict[str, Any]:
        """The site-create parameters this record stands for (validated by `site_spec`)."""
        return {
            "domain": self.domain,
            "name": self.site.get("name"),
            "type": str(self.site_type),
            "template": self.site.get("template") or "default",
            "operators": None,
        }

    def spec(self) -> SiteSpec:
        """The validated spec; PipelineError (exit 2) for a record that does not validate."""
        from provisioner.site.validate import site_spec

        return site_spec(self.params())


def find_site(layer: DataLayer, ref: str) -> SiteRecord | None:
    """The site whose site_id or domain is `ref` (case-insensitive domain), or None."""
    wanted = ref.strip().rstrip(".").lower()
    site = layer.get_site(wanted) or layer.get_site(ref)
    if site is None:
        site = next(
            (
                s
                for s in layer.list_sites()
                if wanted in {str(s.get("site_id", "")).lower(), str(s.get("domain", "")).lower()}
            ),
            None,
        )
    if site is None:
        return None
    return SiteRecord(site, layer.get("domains", str(site.get("domain", ""))))


def all_sites(layer: DataLayer) -> list[SiteRecord]:
    """Every site in the registry, with its domains.json entry, in registry order."""
    entries = {str(d.get("domain")): d for d in layer.list("domains")}
    return [SiteRecord(s, entries.get(str(s.get("domain")))) for s in layer.list_sites()]
