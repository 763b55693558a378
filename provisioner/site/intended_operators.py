"""A site's intended operators: who `site create` and `add-operators` linked, less who
`remove-operators` unlinked, kept in the site's sites.json record as `intended_operators` (a
sorted list of operator ids) through the data layer, so JSON, PostgreSQL (the record's extra
fields) or both hold it, as the migration phase says.

`site status` holds the links to that set (an intended operator without an active link, or an
active link of an operator outside it, is drift), so operators removed on purpose are not
reported. A site created before the set was kept has none: its status falls back to the
pool's active operators, and the first `add-operators` or `remove-operators` starts its set
from the operators actively linked then. The steps that change the set journal its previous
value (`before["intended"]`) and their rollback puts that back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from provisioner.site.record import SITES
from provisioner.site.spec import SiteSpec
from provisioner.storage import DataLayer

FIELD = "intended_operators"


def intended_of(site: dict[str, Any] | None) -> list[str] | None:
    """The site record's intended operator ids, sorted; None when it keeps no set (a site
    created before sets were kept, or a value that is not a list)."""
    value = (site or {}).get(FIELD)
    if not isinstance(value, list):
        return None
    return sorted({str(item) for item in value})


def link_of(operator: dict[str, Any] | None, domain: str) -> Any:
    """The operator's entry for the site in its `domains` map (None: no link)."""
    domains = (operator or {}).get("domains")
    return domains.get(domain) if isinstance(domains, dict) else None


def is_linked(operator: dict[str, Any] | None, domain: str) -> bool:
    """An active link: the operator serves the site."""
    entry = link_of(operator, domain)
    return isinstance(entry, dict) and entry.get("active") is True


def linked_ids(layer: DataLayer, domain: str) -> list[str]:
    """The ids of the operators actively linked to the site, sorted."""
    return sorted(str(op["id"]) for op in layer.list("operators") if is_linked(op, domain))


@dataclass(frozen=True)
class SetChange:
    """The site's set as found (`was`, None: none kept) and as it is to be (`now`)."""

    site_id: str
    was: list[str] | None
    now: list[str]

    def before(self) -> dict[str, Any]:
        """What a rollback needs (journaled in the step's Change.before["intended"])."""
        return {"site_id": self.site_id, "value": self.was}


def plan_set(
    layer: DataLayer,
    spec: SiteSpec,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    *,
    start: bool,
) -> SetChange | None:
    """The change of the site's set that adding and removing these ids makes, or None (no
    site record, nothing changes, or no set kept and `start` false). A site without a set
    starts from the operators linked to it now."""
    site = layer.get(SITES, spec.site_id)
    if site is None:
        return None  # nowhere to keep it (a step tried on its own, or the record removed)
    was = intended_of(site)
    if was is None and not start:
        return None
    base = set(was) if was is not None else set(linked_ids(layer, spec.domain))
    now = sorted((base | set(add)) - set(remove))
    return None if now == was else SetChange(spec.site_id, was, now)


def write_set(layer: DataLayer, site_id: str, value: list[str] | None) -> None:
    """Make the site record keep `value` (None: keep no set); nothing when the record is gone
    or already holds it. The rest of the record is left as found."""
    site = layer.get(SITES, site_id)
    if site is None:
        return
    changed = dict(site)
    if value is None:
        changed.pop(FIELD, None)
    else:
        changed[FIELD] = list(value)
    if changed != site:
        layer.save(SITES, changed, site_id)


def restore_set(layer: DataLayer, before: dict[str, Any]) -> None:
    """Rollback: the set a step found (`before["intended"]`), when it changed one."""
    intended = before.get("intended")
    if isinstance(intended, dict) and intended.get("site_id"):
        value = intended.get("value")
        write_set(layer, str(intended["site_id"]), value if isinstance(value, list) else None)
