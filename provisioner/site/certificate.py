"""The certificate step: a certificate for the site's names, from the configured ACME CA.

Before any order: the profile the CA offers, the names' CAA records (RFC 8659), the local
rate-limit ledger, and for HTTP-01 a self-probe through nginx, so a misconfigured site fails
before it costs a failed validation. Skipped while the live certificate covers the names and
is not due: due inside the CA's ARI window (RFC 9773) where offered, else with under a third
of its lifetime left (never a fixed 30 days, which a 6-day certificate would renew every run).

Rollback puts the previous live certificate back (a checkpoint of the live folder) and removes
the generations this run archived. It never revokes: an unused certificate expires harmlessly,
and revocation is not undone. The ACME account and the ledger are kept across rollbacks.
The nginx step owns the vhost: after an issuance this step calls its `install_vhost` (the
vhost gains TLS once the files exist; tested, reloaded, proven live) and its `restore_vhost` on
rollback, after the previous certificate files are back. `vhost=False` leaves nginx alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from typing import Any

from cryptography import x509

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site import acme_client as acme
from provisioner.site.acme_ledger import Ledger, registered_domain
from provisioner.site.caa import caa_problems
from provisioner.site.cert_store import CertStore, LiveCert
from provisioner.site.spec import SiteSpec


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _day(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def replaced_id(live: LiveCert | None) -> str | None:
    """RFC 9773 `replaces` for an order renewing `live`: its ARI id (None: nothing to name)."""
    if live is None:
        return None
    try:
        return acme.ari_cert_id(live.cert)
    except x509.ExtensionNotFound:  # no Authority Key Identifier: nothing to name
        return None


def certificate_scope(settings: Settings) -> Scope:
    """HTTP-01 is answered by the web host that asks, so each host holds its own certificate
    (host scope). DNS-01 proves the names in DNS, not on a host: a fleet behind a load balancer
    obtains the certificate once (global scope, on one host) and distributes its files."""
    return Scope.GLOBAL if settings.acme_challenge == "dns-01" else Scope.HOST


class CertificateStep(Step):
    """The site's names hold a live certificate that is not due for renewal."""

    name = "certificate"
    scope = Scope.HOST
    label = "SSL"

    def __init__(
        self,
        spec: SiteSpec,
        settings: Settings,
        vhost: bool = True,
        ari: bool = True,
    ) -> None:
        self.spec = spec
        self.scope = certificate_scope(settings)
        # False: decide from the files alone, with no call to the CA (`site status` reads only,
        # fast, and leaves renewal windows to `certs status`).
        self.ari = ari
        self.settings = settings
        self.names = spec.names
        self.store = CertStore(settings.cert_dir, spec.domain)
        self.ledger = Ledger.at(settings.cert_dir)
        self.vhost = vhost
        self._key = "cert-live-" + hashlib.sha256(spec.domain.encode()).hexdigest()[:24]
        # What the last issuance asked and got, for the renewal record (`certs status`).
        self.requested_profile: str | None = None
        self.order_url: str | None = None
        self.replaces_outcome: str | None = None

    # ---------------------------------------------------------------- is a certificate due?
    def _due_locally(self, live: LiveCert | None) -> str | None:
        """Why a new certificate is needed, from the files alone (None: not by these rules)."""
        if live is None:
            return "no certificate yet"
        if not live.covers(self.names):
            missing = sorted(set(self.names) - live.names)
            return f"the certificate lacks {', '.join(missing)}"
        if not live.key_matches:
            return "the live key does not match the certificate"
        if _now() >= live.not_after:
            return f"the certificate expired on {_day(live.not_after)}"
        lifetime = live.not_after - live.not_before
        if live.not_after - _now() < lifetime / 3:
            return f"a third of its lifetime left (expires {_day(live.not_after)})"
        return None

    def _due_by_ari(self, live: LiveCert) -> str | None:
        """Inside the CA's suggested window, at a point fixed by the serial (so two checks
        agree, and a fleet's renewals spread over the window as RFC 9773 asks)."""
        from provisioner.site.ari import ari_window

        window = ari_window(self.settings, live.cert)  # kept until the CA's Retry-After
        if window is None:  # no ARI offered, or the CA unreachable: the lifetime rule decides
            return None
        start, end = window.start, window.end
        fraction = int(hashlib.sha256(live.pem).hexdigest()[:8], 16) / 0xFFFFFFFF
        point = start + (end - start) * fraction
        if _now() >= point:
            return f"inside the CA's renewal window (ARI, {_day(start)} to {_day(end)})"
        return None

    def due(self) -> str | None:
        live = self.store.current()
        reason = self._due_locally(live)
        if reason is None and live is not None and self.ari:
            reason = self._due_by_ari(live)
        return reason

    # ---------------------------------------------------------------- the contract
    def preflight(self, ctx: RunContext) -> list[str]:
        settings = self.settings
        if self._due_locally(self.store.current()) is None:
            return []  # not due by its lifetime: a re-run costs no network round trip
        if settings.acme_challenge == "http-01" and not settings.acme_webroot.is_dir():
            return [
                f"certificate: the ACME webroot {settings.acme_webroot} does not exist; create "
                "it (nginx serves /.well-known/acme-challenge/ from it) or set "
                "PROVISION_ACME_WEBROOT"
            ]
        try:
            acme.answerer_for(settings)  # DNS-01 without a DNS provider stops here
            _, problems = self._before_order_problems(probe=False)
        except acme.AcmeError as exc:
            return [f"certificate: {exc}"]
        return [f"certificate: {p}" for p in problems]

    def _before_order_problems(self, probe: bool) -> tuple[Any, list[str]]:
        """The CA's directory, and what stops an order: the profile (raises), the rate-limit
        budget, CAA, and (when `probe`) the HTTP-01 self-probe."""
        settings = self.settings
        directory = acme.fetch_directory(settings)
        acme.requested_profile(directory, settings.acme_profile)
        account = acme.known_account_uri(settings)
        live = self.store.current()
        renewal = live is not None and live.names == frozenset(self.names)
        refusal = self.ledger.refusal(self.names, account, renewal=renewal)
        if refusal:
            return directory, [refusal]
        identities = acme.caa_identities(settings, directory)
        problems = caa_problems(settings, self.names, identities, account, settings.acme_challenge)
        if not problems and probe and settings.acme_challenge == "http-01":
            failed = acme.http01_self_probe(settings, self.names)
            problems = [failed] if failed else []
        return directory, problems

    def check(self, ctx: RunContext) -> Change | None:
        live = self.store.current()
        reason = self.due()
        if reason is None:
            return None
        settings = self.settings
        return Change(
            summary=(
                f"issue a certificate for {', '.join(self.names)} ({reason}; "
                f"{settings.acme_challenge}, profile {settings.acme_profile})"
            ),
            before=self._before(live),
            after={
                "names": list(self.names),
                "profile": settings.acme_profile,
                "challenge": settings.acme_challenge,
                "directory": settings.acme_directory,
            },
        )

    def _before(self, live: LiveCert | None) -> dict[str, Any]:
        return {
            "domain": self.spec.domain,
            "live": live.summary() if live else None,
            "generation": max(self.store.generations(), default=0),
            "created_dirs": self.store.missing_dirs(),
        }

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        """The live folder holds a private key: it goes to a checkpoint, never the journal."""
        reference = ctx.checkpoint().keep(self._key, self.store.live)
        before = {**(change.before or {}), "live_copy": reference}
        if self.vhost:  # what a cut-short apply's install_vhost replaced (undo_from_change)
            from provisioner.site.nginx_control import VhostFiles

            before["vhost_files"] = VhostFiles.for_domain(self.spec.domain, self.settings).read()
        return Change(change.summary, before, change.after, change.diff)

    def undo_from_change(self, change: Change) -> Undo:
        """An apply cut short may have installed the TLS vhost: its files go back as well."""
        undo: Undo = {"before": change.before}
        vhost_files = (change.before or {}).get("vhost_files")
        if self.vhost and vhost_files is not None:
            undo["vhost"] = {"before": vhost_files}
        return undo

    def apply(self, ctx: RunContext) -> Undo:
        live = self.store.current()
        if self.due() is None:
            return {"before": None}
        before = self._before(live)
        if ctx.checkpoints is not None:
            before["live_copy"] = ctx.checkpoint().keep(self._key, self.store.live)
        directory, problems = self._before_order_problems(probe=True)
        if problems:
            raise acme.AcmeError("; ".join(problems) + " (no order was sent)")
        settings = self.settings
        profile = acme.requested_profile(directory, settings.acme_profile)
        self.requested_profile = profile  # for the renewal record (None: the CA has none)
        session = acme.open_session(settings, directory)
        names = list(self.names)
        self.ledger.record("order", names, account=session.account_uri)
        key_pem = acme.new_key_pem()
        try:
            issued = acme.issue(
                session,
                self.names,
                key_pem,
                acme.answerer_for(settings),
                profile,
                replaces=replaced_id(live),
            )
        except acme.ValidationFailed as exc:
            self.ledger.record("failed", exc.names, account=session.account_uri)
            raise
        # For the renewal record: the order, and whether the CA linked it to the old one.
        self.order_url, self.replaces_outcome = issued.order_url, issued.replaces_outcome
        self.store.write(key_pem, issued.fullchain)
        self.ledger.record("issued", names, registered=registered_domain(self.spec.domain))
        return {"before": before, "vhost": self._install_vhost()}

    def _install_vhost(self) -> dict[str, Any] | None:
        if not self.vhost:
            return None
        from provisioner.site.nginx import install_vhost
        from provisioner.site.nginx_control import VhostFiles

        files = VhostFiles.for_domain(self.spec.domain, self.settings)
        if self.scope is Scope.GLOBAL and not files.vhost.is_file():
            # A fleet's global run on a host without the site yet: that host's nginx step
            # writes the vhost, with TLS, once the certificate's files are there.
            return None

        return install_vhost(self.spec, self.settings)

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        before = undo.get("before")
        if not before:
            return  # the apply found nothing due and changed nothing
        vhost_undo = undo.get("vhost") if self.vhost else None
        if vhost_undo and before.get("live") is None:
            # No certificate was served before: the vhost stops naming the files before they
            # go, or every `nginx -t` on the host fails in between (the crash drill's finding).
            self._restore_vhost(vhost_undo)
            vhost_undo = None
        store = self.store
        store.remove_torn()
        previous = int(before.get("generation") or 0)
        reference = before.get("live_copy")
        if reference is not None and ctx.checkpoints is not None:
            ctx.checkpoint().restore(reference, store.live)
        elif previous:
            store.point_live_at(previous)
        else:
            shutil.rmtree(store.live, ignore_errors=True)
        store.remove_generations_after(previous)
        for folder in before.get("created_dirs", []):
            try:
                os.rmdir(folder)
            except OSError:
                continue  # not empty (accounts, the ledger) or already gone
        if vhost_undo:  # a previous certificate is back in place: nginx reloads onto it
            self._restore_vhost(vhost_undo)

    def _restore_vhost(self, vhost_undo: dict[str, Any]) -> None:
        from provisioner.site.nginx import restore_vhost

        restore_vhost(self.spec, self.settings, vhost_undo)

    # ---------------------------------------------------------------- for the output
    def outcome(self, changed: bool) -> str:
        """The ✓ line: what was issued, or until when the kept certificate is valid."""
        live = self.store.current()
        if live is None:
            return "no certificate"
        if changed:
            return f"certificate issued by {live.issuer_cn}, expires {_day(live.not_after)}"
        return f"certificate valid until {_day(live.not_after)} (not due)"
