"""Certificate renewal as an engine run: `provision certs renew` runs `certs-renew` per site.

The step is the certificate step (same due rule, ledger, CAA, self-probe, checkpointed live
folder, rollback) with three additions: `--force` (a renewal of the certificate live when the
command started, so a resumed run does not renew twice), the names of the live certificate
kept (a renewal never drops a name), and proof that nginx serves the new certificate: a
renewal leaves the vhost unchanged, so nginx is tested, reloaded and the served certificate
read back over TLS until it is the new one. A failure rolls the live folder back and makes
nginx serve the old certificate again. The run locks `site:<site_id>`, as `site create`
does, so a renewal racing a create or a destroy of the same site waits for it.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.step import Change, RunContext, Undo
from provisioner.site.certificate import CertificateStep, replaced_id
from provisioner.site.nginx_control import (
    CONFIRM_SECONDS,
    PROBE_PAUSE,
    STABLE_SECONDS,
    Nginx,
    NginxError,
)
from provisioner.site.pipelines import site_target
from provisioner.site.spec import SiteSpec, SiteType

PIPELINE = "certs-renew"
HANDSHAKE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Served:
    """The certificate nginx presents for a name, and whether it verified against the CA."""

    cert: x509.Certificate | None
    verified: bool
    problem: str | None = None

    @property
    def serial(self) -> str | None:
        return None if self.cert is None else format(self.cert.serial_number, "x")


def _handshake(settings: Settings, domain: str, context: ssl.SSLContext) -> bytes | None:
    address = Nginx(settings).probe_address
    with (
        socket.create_connection(
            (address, settings.nginx_https_port), timeout=HANDSHAKE_TIMEOUT
        ) as raw,
        context.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        return tls.getpeercert(True)


def served_certificate(settings: Settings, domain: str) -> Served:
    """A TLS handshake with SNI to nginx's HTTPS port, verified against the CA's root
    (`acme_issuer_root`, else the system store). A certificate that does not verify is
    reported by the verification error; verification is never turned off to read it."""
    root = settings.acme_issuer_root
    try:
        der = _handshake(
            settings, domain, ssl.create_default_context(cafile=str(root) if root else None)
        )
        return Served(x509.load_der_x509_certificate(der) if der else None, der is not None)
    except ssl.SSLCertVerificationError as exc:
        return Served(None, False, f"does not verify: {exc.verify_message or exc}")
    except (OSError, ssl.SSLError) as exc:
        return Served(None, False, f"no TLS answer ({exc})")


def serve_stored(settings: Settings, domain: str, serial: str) -> None:
    """Make nginx serve the certificate `serial` (the one on disk): nothing when it already
    does; else `nginx -t`, reload, and the handshake polled until it answers with it on every
    new connection for STABLE_SECONDS. NginxError says what is served instead."""
    if served_certificate(settings, domain).serial == serial:
        return
    nginx = Nginx(settings)
    with nginx.reload_lock():
        rejected = nginx.test()
        if rejected is not None:
            raise NginxError(
                f"nginx -t rejects the config ({rejected}): not reloaded, nginx keeps serving "
                "the certificate it had"
            )
        nginx.reload()
        deadline = time.monotonic() + CONFIRM_SECONDS
        since: float | None = None
        while True:
            served = served_certificate(settings, domain)
            now = time.monotonic()
            if served.serial != serial:
                since = None
            elif since is None:
                since = now
            elif now - since >= STABLE_SECONDS:
                return
            if now >= deadline:
                raise NginxError(
                    f"nginx reloaded, but {domain} is served certificate serial "
                    f"{served.serial or '(none)'} {served.problem or ''} instead of {serial} "
                    f"after {CONFIRM_SECONDS:g} s; see nginx's error log"
                )
            time.sleep(PROBE_PAUSE)


class RenewalStep(CertificateStep):
    """The site's certificate is not due (or was forced), and nginx serves the live one."""

    name = "renewal"
    label = "SSL renewal"

    def __init__(
        self,
        spec: SiteSpec,
        settings: Settings,
        force_serial: str | None = None,
        vhost: bool = True,
    ) -> None:
        super().__init__(spec, settings, vhost=vhost)
        self.force_serial = force_serial
        live = self.store.current()
        if live is not None:  # keep every name the live certificate has
            self.names = tuple(dict.fromkeys([*spec.names, *sorted(live.names)]))

    def due(self) -> str | None:
        live = self.store.current()
        if self.force_serial and live is not None and format(live.serial, "x") == self.force_serial:
            return "renewal forced (--force)"
        return super().due()

    def check(self, ctx: RunContext) -> Change | None:
        change = super().check(ctx)
        if change is None:
            return None
        after = {**(change.after or {}), "replaces": replaced_id(self.store.current())}
        return Change(change.summary, change.before, after, change.diff)

    def apply(self, ctx: RunContext) -> Undo:
        undo = super().apply(ctx)
        live = self.store.current()
        if undo.get("before") and self.vhost and live is not None:
            serve_stored(self.settings, self.spec.domain, format(live.serial, "x"))
        return undo

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        super().rollback(ctx, undo)
        live = self.store.current()
        if undo.get("before") and self.vhost and live is not None:
            serve_stored(self.settings, self.spec.domain, format(live.serial, "x"))

    def outcome(self, changed: bool) -> str:
        live = self.store.current()
        if live is None:
            return "no certificate"
        if changed:
            return (
                f"certificate renewed (serial {live.serial:x}), expires "
                f"{live.not_after:%Y-%m-%d}, served by nginx"
            )
        return f"certificate valid until {live.not_after:%Y-%m-%d} (not due)"


def renewal_spec(domain: str) -> SiteSpec:
    """What a renewal needs of a site: its domain (validated again: it reaches paths and
    nginx's config); the name and template are never read by the renewal."""
    from provisioner.site.validate import domain as valid_domain

    checked = valid_domain(domain)
    return SiteSpec(checked, checked, SiteType.CUSTOMER, "default")


@register(PIPELINE)
def certs_renew(params: dict[str, Any], settings: Settings) -> Pipeline:
    spec = renewal_spec(params.get("domain"))  # type: ignore[arg-type]
    force_serial = params.get("force_serial") or None
    return Pipeline(
        name=PIPELINE,
        target=site_target(spec),
        params={"domain": spec.domain, "force_serial": force_serial},
        steps=[RenewalStep(spec, settings, force_serial=force_serial)],
        title=f"Renewing the certificate of {spec.domain}",
    )


# ------------------------------------------------------------------------ `certs renew`


@dataclass
class SiteRenewal:
    """What `certs renew` did for one site: renewed, not_due, skipped or failed."""

    domain: str
    outcome: str
    message: str
    run_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "outcome": self.outcome,
            "msg": self.message,
            "run_id": self.run_id,
        }


def _renew_one(runner: Any, settings: Settings, domain: str, force: bool) -> SiteRenewal:
    """One site through the engine (locked per site, journaled), when due or forced."""
    from provisioner.engine.errors import RunBlocked
    from provisioner.engine.pipeline import build
    from provisioner.site.ari import renewal_window
    from provisioner.site.cert_report import record_attempt
    from provisioner.site.cert_store import CertStore

    live = CertStore(settings.cert_dir, domain).current()
    if live is None:
        return SiteRenewal(domain, "skipped", "no certificate (`provision site create` issues it)")
    force_serial = format(live.serial, "x") if force else None
    reason = RenewalStep(renewal_spec(domain), settings, force_serial=force_serial).due()
    if reason is None:
        window = renewal_window(settings, live.cert)
        return SiteRenewal(
            domain,
            "not_due",
            f"valid until {live.not_after:%Y-%m-%d}; renewal window ({window.source}) from "
            f"{window.start:%Y-%m-%d %H:%M} UTC",
        )
    pipeline = build(PIPELINE, {"domain": domain, "force_serial": force_serial}, settings)
    step = pipeline.steps[0]
    try:
        result = runner.run(pipeline)
    except RunBlocked as exc:  # another run holds the site (a create, a destroy): next time
        done = SiteRenewal(domain, "failed", f"{reason}; not renewed: {exc}")
    else:
        renewed = CertStore(settings.cert_dir, domain).current()
        if result.exit_code == 0 and renewed is not None and renewed.serial != live.serial:
            message = (
                f"{reason}; renewed: serial {renewed.serial:x} replaces {live.serial:x}, "
                f"expires {renewed.not_after:%Y-%m-%d}, served by nginx"
            )
            done = SiteRenewal(domain, "renewed", message, result.run_id)
        elif result.exit_code == 0:
            done = SiteRenewal(domain, "not_due", "not due once the site's lock was held")
        else:
            failure = result.failure or result.status
            message = f"{reason}; renewal failed, the previous certificate still serves: {failure}"
            done = SiteRenewal(domain, "failed", message, result.run_id)
    current = CertStore(settings.cert_dir, domain).current()
    record_attempt(
        settings,
        domain,
        {
            "outcome": done.outcome,
            "message": done.message,
            "run_id": done.run_id,
            "serial": format(current.serial, "x") if current else None,
            "profile": getattr(step, "requested_profile", None),
            "replaces_outcome": getattr(step, "replaces_outcome", None),
            "order": getattr(step, "order_url", None),
        },
    )
    return done


def renew_sites(
    runner: Any, settings: Settings, sites: list[Any], force: bool
) -> list[SiteRenewal]:
    """Every site's renewal in turn (a failure does not stop the others), then the run
    recorded for `certs status`'s "renewals have not run" alert."""
    import datetime as dt

    from provisioner.site.cert_report import record_attempt, record_run

    started = dt.datetime.now(dt.UTC)
    done: list[SiteRenewal] = []
    for entry in sites:
        if not entry.in_registry:
            done.append(SiteRenewal(entry.domain, "skipped", "a live folder no registry site owns"))
            continue
        try:
            done.append(_renew_one(runner, settings, entry.domain, force))
        except Exception as exc:  # one site's surprise must not stop the others' renewals
            failed = SiteRenewal(entry.domain, "failed", f"{type(exc).__name__}: {exc}")
            record_attempt(settings, entry.domain, {"outcome": "failed", "message": failed.message})
            done.append(failed)
    counts = {kind: sum(d.outcome == kind for d in done) for kind in OUTCOMES}
    record_run(settings, started, counts)
    return done


OUTCOMES = ("renewed", "not_due", "skipped", "failed")
