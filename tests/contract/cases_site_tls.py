"""Contract cases of the TLS steps: certificate (real pebble, real HTTP-01 through the stack's
nginx) and health (a verified HTTPS answer from the stack's nginx).

The harness's World gives its runs `Settings(state_dir)` only; these steps take their settings
when built, so each case builds them from the running stack with `cert_dir = <root>/certs`.
The snapshot is the live and archive folders: the ACME account and the rate-limit ledger are
kept across rollbacks on purpose (a failed validation counts whether or not a run is undone).
The certificate cases leave nginx alone (`vhost=False`); tests/test_site_certificate.py and
the site pipeline cover the vhost hand-over.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import RunContext, Step
from provisioner.site.cert_store import CertStore
from provisioner.site.certificate import CertificateStep
from provisioner.site.health import HealthStep
from provisioner.site.spec import SiteSpec
from tests.contract.harness import StepCase, World, tree
from tests.site_tls_support import (
    run_ctx,
    serve_site,
    tls_settings,
    unique_spec,
)


def settings_of(world: World) -> Settings:
    return tls_settings(world.root, state_dir=world.state_dir)


def base_spec(world: World, *aliases: str) -> SiteSpec:
    """A domain of the world's own (stable across the harness's rebuilds of the step)."""
    digest = hashlib.sha256(str(world.root).encode()).hexdigest()[:12]
    return unique_spec(*aliases, domain=f"c{digest}.example.com")


def grown_spec(world: World) -> SiteSpec:
    return base_spec(world, f"shop.{base_spec(world).domain}")


def snapshot(world: World) -> dict[str, Any]:
    return {
        k: v for k, v in tree(world.root).items() if k.startswith(("certs/live", "certs/archive"))
    }


def issued(world: World) -> None:
    """A certificate for the base names already live (generation 1)."""
    settings = settings_of(world)
    CertificateStep(base_spec(world), settings, vhost=False).apply(run_ctx(settings, "arrange"))


def nothing(world: World) -> None:
    """No certificate yet."""


def killed_between_archive_and_links(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after archiving a new generation, while swapping the live links."""
    assert isinstance(step, CertificateStep)
    store = step.store
    number = max(store.generations(), default=0) + 1
    store.archive.mkdir(parents=True, exist_ok=True)
    for name in ("cert", "chain", "fullchain", "privkey"):
        (store.archive / f"{name}{number}.pem").write_text("torn\n")
    store.live.mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../archive/{store.domain}/cert{number}.pem", store.live / ".cert.pem.new")


def certificate_is_live(world: World) -> None:
    spec = grown_spec(world)
    live = CertStore(settings_of(world).cert_dir, spec.domain).current()
    assert live is not None and live.covers(spec.names) and live.key_matches


def cert_case(name: str, arrange: Any, build: Any, **expect: Any) -> StepCase:
    return StepCase(
        id=f"certificate/{name}",
        kind=CertificateStep,
        build=build,
        arrange=arrange,
        snapshot=snapshot,
        **expect,
    )


def new_names_step(world: World) -> CertificateStep:
    return CertificateStep(grown_spec(world), settings_of(world), vhost=False)


def base_step(world: World) -> CertificateStep:
    return CertificateStep(base_spec(world), settings_of(world), vhost=False)


def site_answering(world: World) -> None:
    """A certificate, a page with the site's name and a TLS vhost serving both (removed
    when the test process ends: the harness has no teardown)."""
    issued(world)
    serve_site(settings_of(world), base_spec(world).domain)


CASES = [
    cert_case("first-certificate", nothing, new_names_step, after_apply=certificate_is_live),
    cert_case(
        "first-certificate-killed-mid-write",
        nothing,
        new_names_step,
        partial_apply=killed_between_archive_and_links,
    ),
    cert_case(
        "renewal-restores-the-previous-one",
        issued,
        new_names_step,
        after_apply=certificate_is_live,
        partial_apply=killed_between_archive_and_links,
    ),
    cert_case("renewal-apply-finished-unjournaled", issued, new_names_step),
    cert_case("not-due", issued, base_step, converged=True),
    StepCase(
        id="health/site-answers",
        kind=HealthStep,
        build=lambda world: HealthStep(base_spec(world), settings_of(world)),
        arrange=site_answering,
        snapshot=snapshot,
        converged=True,
    ),
]
