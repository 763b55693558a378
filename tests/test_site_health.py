"""The health step against the real stack: a certificate from pebble, a TLS vhost in the stack's
nginx, and a verified HTTPS GET with SNI that checks the page and the certificate served."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioner.config import Settings
from provisioner.site.certificate import CertificateStep
from provisioner.site.health import HealthError, HealthStep
from provisioner.site.spec import SiteSpec
from tests.site_tls_support import (
    SITE_NAME,
    run_ctx,
    serve_site,
    tls_settings,
    unique_spec,
    unserve,
    write_page,
)

pytestmark = pytest.mark.usefixtures("stack_env")


@pytest.fixture
def issued(tmp_path: Path) -> tuple[Settings, SiteSpec]:
    """A site with a certificate from pebble (its vhost is up to each test)."""
    settings = tls_settings(tmp_path, PROVISION_HEALTH_TIMEOUT="1")
    spec = unique_spec()
    CertificateStep(spec, settings, vhost=False).apply(run_ctx(settings))
    return settings, spec


Serve = Callable[..., None]


@pytest.fixture
def serve(issued: tuple[Settings, SiteSpec]) -> Iterator[Serve]:
    """`serve(name=..., cert_gen=...)`: a page and a TLS vhost for the issued site."""
    settings, spec = issued
    written: list[Path] = []

    def serve(name: str = SITE_NAME, cert_gen: str = "") -> None:
        written.append(serve_site(settings, spec.domain, name, cert_gen))

    yield serve
    for path in written:
        unserve(path)


def test_site_answering_is_converged(issued: tuple[Settings, SiteSpec], serve: Serve) -> None:
    settings, spec = issued
    serve()
    step = HealthStep(spec, settings)
    assert step.preflight(run_ctx(settings)) == []
    answer = step.probe()
    assert answer.ok, answer.description
    assert step.check(run_ctx(settings)) is None
    assert step.apply(run_ctx(settings)) == {}
    step.rollback(run_ctx(settings), {})  # nothing to undo, and harmless


def test_no_vhost_fails_saying_what_answered(issued: tuple[Settings, SiteSpec]) -> None:
    settings, spec = issued
    step = HealthStep(spec, settings)
    change = step.check(run_ctx(settings))
    assert change is not None and change.summary == "answer over HTTPS"
    with pytest.raises(HealthError, match=rf"https://{spec.domain}/ did not answer .* 1 s: "):
        step.apply(run_ctx(settings))


def test_a_page_without_the_name_fails(issued: tuple[Settings, SiteSpec], serve: Serve) -> None:
    settings, spec = issued
    serve(name="Another Site")
    with pytest.raises(HealthError, match=r"answered 200 '<!doctype html>' .* without the site"):
        HealthStep(spec, settings).apply(run_ctx(settings))


def test_a_stale_certificate_served_fails(issued: tuple[Settings, SiteSpec], serve: Serve) -> None:
    """nginx still serving the previous certificate (Caddy #7589) is a failure."""
    settings, spec = issued
    grown = unique_spec(f"shop.{spec.domain}", domain=spec.domain)
    CertificateStep(grown, settings, vhost=False).apply(run_ctx(settings, "run-2"))
    serve(cert_gen="1")
    step = HealthStep(grown, settings)
    assert step.check(run_ctx(settings)) is not None
    with pytest.raises(HealthError, match=r"nginx served certificate serial .*, not the live one"):
        step.apply(run_ctx(settings))


def test_verification_is_never_off(
    tmp_path: Path, issued: tuple[Settings, SiteSpec], serve: Serve
) -> None:
    """Verified against another CA (pebble's listener CA), the same answer fails."""
    settings, spec = issued
    serve()
    other = tls_settings(
        tmp_path,
        PROVISION_HEALTH_TIMEOUT="1",
        PROVISION_ACME_ISSUER_ROOT=str(settings.acme_ca_bundle),
    )
    with pytest.raises(HealthError, match="CERTIFICATE_VERIFY_FAILED"):
        HealthStep(spec, other).apply(run_ctx(other))


def test_missing_issuer_root_is_a_preflight_problem(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path, PROVISION_ACME_ISSUER_ROOT=str(tmp_path / "none.pem"))
    [problem] = HealthStep(unique_spec(), settings).preflight(run_ctx(settings))
    assert "PROVISION_ACME_ISSUER_ROOT" in problem


def test_certificate_step_hands_the_vhost_to_nginx(tmp_path: Path) -> None:
    """The pipeline's hand-over: after issuance the nginx step's vhost gains TLS, the site
    answers over verified HTTPS, and a rollback takes both back."""
    settings = tls_settings(tmp_path, PROVISION_HEALTH_TIMEOUT="10")
    spec = unique_spec()
    docroot = settings.sites_root / spec.domain
    write_page(docroot)
    (docroot / "index.html").rename(docroot / "coming-soon.html")
    try:
        certificate = CertificateStep(spec, settings)
        undo = certificate.apply(run_ctx(settings))
        assert undo["vhost"] is not None
        health = HealthStep(spec, settings)
        assert health.apply(run_ctx(settings)) == {}
        assert health.check(run_ctx(settings)) is None
        certificate.rollback(run_ctx(settings), undo)
        assert not (settings.cert_dir / "live" / spec.domain).exists()
        assert health.check(run_ctx(settings)) is not None
    finally:
        shutil.rmtree(docroot, ignore_errors=True)
