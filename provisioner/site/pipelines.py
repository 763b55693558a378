"""The site pipelines: the steps of `provision site create` in DESIGN.md's order.

DNS comes before the certificate because a real CA validates the name over the network; the
vhost is written twice, first to serve the ACME challenge and the "coming soon" page over
HTTP, then with the certificate once it exists; the health check comes last and proves the
site answers over verified HTTPS with the certificate just issued.
"""

from __future__ import annotations

from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.step import Step
from provisioner.site.spec import SiteSpec

# The words of the plan's example output ("✓ Database: Site record created ...").
LABELS = {
    "record": "Database",
    "files": "Files",
    "nginx": "Nginx",
    "dns": "DNS",
    "certificate": "SSL",
    "operators": "Integration",
    "billing": "Billing",
    "health": "Health Check",
}


def site_target(spec: SiteSpec) -> str:
    """One lock per site: two runs on the same site never interleave."""
    return f"site:{spec.site_id}"


def create_steps(spec: SiteSpec, settings: Settings) -> list[Step]:
    from provisioner.site.billing import BillingStep
    from provisioner.site.certificate import CertificateStep
    from provisioner.site.dns import DnsStep
    from provisioner.site.files import FilesStep
    from provisioner.site.health import HealthStep
    from provisioner.site.nginx import NginxStep
    from provisioner.site.operators import OperatorsStep
    from provisioner.site.record import RecordStep

    steps: list[Step] = [
        RecordStep(spec, settings),
        FilesStep(spec, settings),
        NginxStep(spec, settings),
        DnsStep(spec, settings),
        CertificateStep(spec, settings),
        OperatorsStep(spec, settings),
        BillingStep(spec, settings),
        HealthStep(spec, settings, disabled_ok=True),
    ]
    for step in steps:
        step.label = LABELS.get(step.name, step.label)
    return steps


@register("site-create")
def site_create(params: dict[str, Any], settings: Settings) -> Pipeline:
    from provisioner.site.validate import site_spec

    spec = site_spec(params)
    folder = settings.sites_root / spec.domain
    return Pipeline(
        name="site-create",
        target=site_target(spec),
        params=spec.as_params(),
        steps=create_steps(spec, settings),
        title=f"Creating new site: {spec.domain}",
        next_steps=[
            f"Customize theme in {folder / 'assets' / 'css'}/",
            f"Add operators: provision site add-operators --site {spec.site_id}",
            f"Go live: provision site enable --site {spec.site_id}",
        ],
    )
