"""The record step of `site destroy`: the site's sites.json record and domains.json entry
deleted through the data layer (PostgreSQL too in the dual and pg phases).

It runs last, so a destroy cut short still finds the site by its record (`site status`,
`site destroy` again). Rollback saves back exactly the records it deleted, unless a record
of that key was made again since.
"""

from __future__ import annotations

import json
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.site.aeims import data_layer_problems
from provisioner.site.record import DOMAINS, SITES
from provisioner.site.spec import SiteSpec


class RecordRemovalStep(Step):
    """No sites.json record and no domains.json entry for the site."""

    name = "record"
    label = "Database"
    scope = Scope.GLOBAL

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings

    def _keys(self) -> dict[str, tuple[str, str]]:
        return {"site": (SITES, self.spec.site_id), "domain": (DOMAINS, self.spec.domain)}

    def _state(self, ctx: RunContext) -> dict[str, Any]:
        layer = ctx.client(DATA_LAYER)
        return {part: layer.get(entity, key) for part, (entity, key) in self._keys().items()}

    def preflight(self, ctx: RunContext) -> list[str]:
        return data_layer_problems(ctx)

    def check(self, ctx: RunContext) -> Change | None:
        before = self._state(ctx)
        if all(value is None for value in before.values()):
            return None
        parts = []
        if before["site"] is not None:
            parts.append(f"site_id {self.spec.site_id} deleted")
        if before["domain"] is not None:
            parts.append(f"domains.json entry {self.spec.domain} deleted")
        text = json.dumps(before, indent=2, sort_keys=True) + "\n"
        return Change(
            summary=", ".join(parts),
            before=before,
            after={"site": None, "domain": None},
            diff=unified_diff(text, None, "aeims/site-record"),
        )

    def apply(self, ctx: RunContext) -> Undo:
        before = self._state(ctx)
        layer = ctx.client(DATA_LAYER)
        for part, (entity, key) in self._keys().items():
            if before[part] is not None:
                layer.delete(entity, key)
        return {"before": before}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before") or {}
        layer = ctx.client(DATA_LAYER)
        for part, (entity, key) in self._keys().items():
            previous = before.get(part)
            if previous is not None and layer.get(entity, key) is None:
                layer.save(entity, previous, key)
