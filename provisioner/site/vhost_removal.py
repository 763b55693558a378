"""The vhost step of `site destroy`: the site's vhost and its link removed, nginx tested,
reloaded and proven to no longer run it, with the other sites served throughout.

The same machinery as the nginx step (nginx_control.converge): one reload at a time on the
host, `nginx -t` before the reload, the files put back if nginx rejects the result, and the
reload counted only once nginx stops answering the removed vhost's marker. Rollback writes the
files back as they were and proves that vhost live again.
"""

from __future__ import annotations

import contextlib
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.site.nginx import host_name
from provisioner.site.nginx_control import (
    CONFIRM_SECONDS,
    Answer,
    Nginx,
    NginxError,
    VhostFiles,
    converge,
    file_content,
    marker_of,
    restore,
)
from provisioner.site.spec import SiteSpec

ABSENT: dict[str, Any] = {"kind": "absent"}


class VhostRemovalStep(Step):
    """No `<nginx_vhost_dir>/<domain>.conf`, no link to it, and nginx no longer runs it."""

    name = "vhost"
    label = "Nginx"
    scope = Scope.HOST

    def __init__(self, spec: SiteSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.files = VhostFiles.for_domain(host_name(spec.domain), settings)

    def _absent(self) -> dict[str, dict[str, Any]]:
        return {key: dict(ABSENT) for key in self.files.read()}

    def preflight(self, ctx: RunContext) -> list[str]:
        if self.files.read() == self._absent():
            return []
        try:
            rejected = Nginx(self.settings).test_in_turn()
        except NginxError as exc:
            return [f"vhost: {exc}"]
        if rejected is not None:
            return [f"vhost: nginx's config is already broken before this run ({rejected}); fix it"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        before = self.files.read()
        if before == self._absent():
            return None
        link = f" and its link {self.files.enabled}" if self.files.enabled is not None else ""
        return Change(
            summary=f"removed {self.files.vhost}{link}; nginx tested and reloaded",
            before=before,
            after=self._absent(),
            diff=unified_diff(file_content(before["vhost"]), None, str(self.files.vhost)),
        )

    def apply(self, ctx: RunContext) -> Undo:
        previous = converge(Nginx(self.settings), self.spec.domain, self.files, self._absent())
        return {"before": previous}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before")
        if not before or before == self._absent():
            return
        nginx = Nginx(self.settings)
        unserved = nginx.probe(self.spec.domain)
        restore(nginx, self.spec.domain, self.files, before)
        if marker_of(self.files.live_content(before)) is None:
            # A vhost not ours has no marker to prove it live: wait until nginx no longer
            # answers as it did without it (old workers linger for a moment after a reload).
            with contextlib.suppress(NginxError):
                nginx.wait_for(
                    self.spec.domain,
                    lambda a: a.status is not None and (a.status, a.text) != _said(unserved),
                    "the restored vhost's answer",
                    CONFIRM_SECONDS,
                )


def _said(answer: Answer) -> tuple[int | None, str]:
    return answer.status, answer.text
