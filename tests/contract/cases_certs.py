"""Contract cases of the renewal step (`certs-renew`): real pebble, real HTTP-01 through the
stack's nginx, nginx itself left alone (`vhost=False`: tests/test_certs_renewal.py drills the
reload and the served certificate). Forced, since pebble's certificates are never due."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from provisioner.site.cert_store import CertStore
from provisioner.site.renewal import RenewalStep
from tests.contract.cases_site_tls import base_spec, issued, settings_of, snapshot
from tests.contract.harness import StepCase, World

EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "certs-renew": {"domain": "newflirts.com", "force_serial": None},
}


def _arranged_serial(world: World) -> str | None:
    """The serial `issued` arranged (generation 1): the one `--force` renews, the same for
    every rebuild of the step in a case, as the journal keeps a run's parameters."""
    path = settings_of(world).cert_dir / "archive" / base_spec(world).domain / "cert1.pem"
    try:
        return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "x")
    except OSError:
        return None


def forced(world: World) -> RenewalStep:
    serial = _arranged_serial(world)
    return RenewalStep(base_spec(world), settings_of(world), force_serial=serial, vhost=False)


def renewed(world: World) -> None:
    live = CertStore(settings_of(world).cert_dir, base_spec(world).domain).current()
    assert live is not None and format(live.serial, "x") != _arranged_serial(world)


CASES = [
    StepCase(
        id="renewal/forced",
        kind=RenewalStep,
        build=forced,
        arrange=issued,
        snapshot=snapshot,
        after_apply=renewed,
    ),
    StepCase(
        id="renewal/not-due",
        kind=RenewalStep,
        build=lambda world: RenewalStep(base_spec(world), settings_of(world), vhost=False),
        arrange=issued,
        snapshot=snapshot,
        converged=True,
    ),
]
