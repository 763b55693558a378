"""The certificate step of `site destroy`: revoked with the CA (unless kept), files removed.

The live, archive and renewal files of the domain (certbot's layout) are copied to the run's
checkpoint first (they hold private keys: never the journal), then the certificate is revoked
with this host's ACME account (reason cessationOfOperation), then the files are removed.
Rollback puts the files back, so nginx can load the restored vhost; it cannot un-revoke: a
revoked certificate stays revoked at the CA and must be replaced with
`provision certs renew --site ID --force`. `keep_certificate` removes the files without
revoking (the certificate then expires unused), which a rollback undoes completely.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.cert_store import CertStore
from provisioner.site.spec import SiteSpec


class CertificateRemovalStep(Step):
    """No certificate files for the domain; its certificate revoked unless kept."""

    name = "certificate"
    label = "SSL"
    scope = Scope.HOST

    def __init__(self, spec: SiteSpec, settings: Settings, revoke: bool = True) -> None:
        from provisioner.site.certificate import certificate_scope

        self.spec = spec
        self.settings = settings
        # With DNS-01 the certificate was obtained once, with the issuing host's account: that
        # host revokes it (global scope); copies distributed to the others are theirs to remove.
        self.scope = certificate_scope(settings)
        self.revoke = revoke
        self.store = CertStore(settings.cert_dir, spec.domain)
        self.renewal = settings.cert_dir / "renewal" / f"{spec.domain}.conf"
        digest = hashlib.sha256(spec.domain.encode()).hexdigest()[:24]
        self.paths: dict[str, Path] = {
            f"cert-gone-live-{digest}": self.store.live,
            f"cert-gone-archive-{digest}": self.store.archive,
            f"cert-gone-renewal-{digest}": self.renewal,
        }

    def _present(self) -> list[str]:
        return [str(p) for p in self.paths.values() if p.exists() or p.is_symlink()]

    def preflight(self, ctx: RunContext) -> list[str]:
        if not self.revoke or self.store.current() is None:
            return []
        from provisioner.site import acme_client as acme

        try:
            acme.fetch_directory(self.settings)
        except acme.AcmeError as exc:
            return [f"certificate: cannot revoke: {exc} (or destroy with --keep-certificate)"]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        present = self._present()
        if not present:
            return None
        live = self.store.current()
        if live is not None and self.revoke:
            what = (
                f"revoked certificate serial {live.serial:x} with the CA (a rollback cannot "
                "undo that) and removed its files"
            )
        elif live is not None:
            what = f"removed the files of certificate serial {live.serial:x} (not revoked)"
        else:
            what = "removed the leftover certificate files"
        return Change(
            summary=what,
            before={"live": live.summary() if live else None, "paths": present},
            after={"paths": [], "revoke": bool(live is not None and self.revoke)},
        )

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        """The files hold private keys: they go to the run's checkpoint, never the journal."""
        before = {**(change.before or {}), "copies": self._keep(ctx)}
        return Change(change.summary, before, change.after, change.diff)

    def _keep(self, ctx: RunContext) -> dict[str, Any]:
        return {key: ctx.checkpoint().keep(key, path) for key, path in self.paths.items()}

    def apply(self, ctx: RunContext) -> Undo:
        change = self.check(ctx)
        if change is None:
            return {"before": None}
        copies = self._keep(ctx) if ctx.checkpoints is not None else None
        live = self.store.current()
        if live is not None and self.revoke:
            from provisioner.site import acme_client as acme

            acme.revoke(self.settings, live.cert)
        for path in self.paths.values():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return {"before": {**(change.before or {}), "copies": copies}}

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before") or {}
        copies = before.get("copies")
        if not copies or ctx.checkpoints is None:
            return
        for key, path in self.paths.items():
            reference = copies.get(key)
            if reference is not None and reference.get("exists"):
                path.parent.mkdir(parents=True, exist_ok=True)
                ctx.checkpoint().restore(reference, path)
