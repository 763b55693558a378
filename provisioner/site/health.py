"""The health step: the site answers over verified HTTPS, with the certificate just issued.

An HTTPS GET through the host's nginx (127.0.0.1:<https port>) with SNI and Host set to the
domain, verified against the configured roots (pebble's issuing root in the stack; never with
verification off), retried until the deadline. It must answer 200 with the site's name (as the
page escapes it), and the certificate served in that very handshake must be the live one
(serial and expiry): Caddy #7589 served an expired certificate from renewals ago. The step
changes nothing: `apply` waits for the answer, and there is nothing to roll back.
"""

from __future__ import annotations

import html
import ssl
import time
from dataclasses import dataclass

import httpx
from cryptography import x509
from markupsafe import escape

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo
from provisioner.site.cert_store import CertStore
from provisioner.site.spec import SiteSpec

RETRY_PAUSE = 0.25


class HealthError(RuntimeError):
    """The site did not answer as it should before the deadline; says what answered."""


@dataclass(frozen=True)
class Answer:
    ok: bool
    description: str


class HealthStep(Step):
    """https://<domain>/ answers 200 with the site's name and the live certificate."""

    name = "health"
    scope = Scope.HOST
    label = "HTTPS"

    def __init__(self, spec: SiteSpec, settings: Settings, disabled_ok: bool = False) -> None:
        self.spec = spec
        self.settings = settings
        self.store = CertStore(settings.cert_dir, spec.domain)
        # create's check: a site disabled on this host answers 503 on purpose, so re-running
        # create on it (a fleet's host steps, a playbook's `present`) converges instead of
        # waiting for a 200 that never comes.
        self.disabled_ok = disabled_ok

    @property
    def skipped(self) -> str | None:
        if self.disabled_ok and self._in_maintenance_here():
            return "the site is disabled: its 503 maintenance page is on purpose"
        return None

    def _in_maintenance_here(self) -> bool:
        from provisioner.site.nginx import VhostState, state_of
        from provisioner.site.nginx_control import VhostFiles

        vhost = VhostFiles.for_domain(self.spec.domain, self.settings).vhost
        try:
            content = vhost.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return state_of(content) is VhostState.MAINTENANCE

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.settings.nginx_https_port}/"

    @property
    def public_url(self) -> str:
        port = self.settings.nginx_https_port
        return f"https://{self.spec.domain}{'' if port == 443 else f':{port}'}/"

    def outcome(self, changed: bool) -> str:
        return f"site responding at {self.public_url}"

    def _tls(self) -> ssl.SSLContext:
        root = self.settings.acme_issuer_root
        return ssl.create_default_context(cafile=str(root) if root else None)

    def _page_shows_name(self, text: str) -> bool:
        name = self.spec.name
        return any(form in text for form in {str(escape(name)), html.escape(name)})

    def probe(self) -> Answer:
        """One verified GET; what answered, in words fit for an error message."""
        domain = self.spec.domain
        try:
            with (
                httpx.Client(verify=self._tls(), timeout=5.0, trust_env=False) as http,
                http.stream(
                    "GET",
                    self.url,
                    headers={"Host": domain},
                    extensions={"sni_hostname": domain},
                ) as response,
            ):
                stream = response.extensions["network_stream"]
                der = stream.get_extra_info("ssl_object").getpeercert(True)
                body = response.read().decode("utf-8", "replace")
        except httpx.HTTPError as exc:
            return Answer(False, f"{self.url} (SNI {domain}) failed: {exc}")
        served = x509.load_der_x509_certificate(der)
        served_text = (
            f"certificate serial {served.serial_number:x} "
            f"expiring {served.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
        first = next((line.strip() for line in body.splitlines() if line.strip()), "")[:80]
        answered = f"{response.status_code} {first!r} with {served_text}"
        if response.status_code != 200:
            return Answer(False, f"answered {answered}")
        if not self._page_shows_name(body):
            return Answer(False, f"answered {answered}, a page without the site's name")
        live = self.store.current()
        if live is None:
            return Answer(
                False, f"no live certificate in {self.store.live}; nginx served {served_text}"
            )
        if (served.serial_number, served.not_valid_after_utc) != (live.serial, live.not_after):
            return Answer(
                False,
                f"nginx served {served_text}, not the live one (serial {live.serial:x} "
                f"expiring {live.not_after:%Y-%m-%d %H:%M} UTC); reload nginx",
            )
        return Answer(True, f"200 with the site's name and the live {served_text}")

    def preflight(self, ctx: RunContext) -> list[str]:
        root = self.settings.acme_issuer_root
        if root is not None and not root.is_file():
            return [
                f"health: the issuer root {root} does not exist; set PROVISION_ACME_ISSUER_ROOT "
                "to the CA's root certificate (the stack fetches pebble's at every start)"
            ]
        return []

    def check(self, ctx: RunContext) -> Change | None:
        if self.skipped:
            return None
        answer = self.probe()
        if answer.ok:
            return None
        return Change(
            summary="answer over HTTPS",
            before={"answered": answer.description},
            after={"answers": "200 with the site's name and the live certificate"},
        )

    def apply(self, ctx: RunContext) -> Undo:
        """Wait for the right answer until the deadline; changes nothing itself."""
        if self.skipped:
            return {}
        deadline = time.monotonic() + self.settings.health_timeout
        while True:
            answer = self.probe()
            if answer.ok:
                return {}
            if time.monotonic() >= deadline:
                raise HealthError(
                    f"https://{self.spec.domain}/ did not answer correctly within "
                    f"{self.settings.health_timeout:g} s: {answer.description}"
                )
            time.sleep(RETRY_PAUSE)

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        """Nothing to undo: the health check only reads."""

    def undo_from_change(self, change: Change) -> Undo:
        return {}
