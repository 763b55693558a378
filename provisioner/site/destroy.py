"""`provision site destroy`: everything create, enable and add-operators made, undone.

The order: the folder is archived first (moved to `<sites_root>/_archived/<domain>_<run>/`),
then the vhost leaves nginx (tested, reloaded, the other sites served throughout), then the
certificate (its files, after the vhost that names them; revoked unless kept), the DNS
records, the operator links, the billing registration, and the record last, so a destroy cut
short still finds the site by it. `provision runs rollback ID` puts everything back in the
reverse order, except a revocation: that is the CA's, and a restored certificate that was
revoked has to be replaced (`provision certs renew --site ID --force`).

The parameters are the site's spec as the record held it, journaled with the run, so resume
and rollback rebuild the same steps after the record is gone.
"""

from __future__ import annotations

from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, register
from provisioner.engine.step import Step
from provisioner.site.pipelines import site_target
from provisioner.site.spec import SiteSpec

LABELS = {
    "archive": "Files",
    "vhost": "Nginx",
    "certificate": "SSL",
    "dns": "DNS",
    "operators": "Integration",
    "billing": "Billing",
    "record": "Database",
}


def destroy_steps(spec: SiteSpec, settings: Settings, keep_certificate: bool) -> list[Step]:
    from provisioner.site.archive import ArchiveStep
    from provisioner.site.billing_removal import BillingRemovalStep
    from provisioner.site.certificate_removal import CertificateRemovalStep
    from provisioner.site.dns_removal import DnsRemovalStep
    from provisioner.site.operators_removal import OperatorLinksRemovalStep
    from provisioner.site.record_removal import RecordRemovalStep
    from provisioner.site.vhost_removal import VhostRemovalStep

    steps: list[Step] = [
        ArchiveStep(spec, settings),
        VhostRemovalStep(spec, settings),
        CertificateRemovalStep(spec, settings, revoke=not keep_certificate),
        DnsRemovalStep(spec, settings),
        OperatorLinksRemovalStep(spec, settings),
        BillingRemovalStep(spec, settings),
        RecordRemovalStep(spec, settings),
    ]
    for step in steps:
        step.label = LABELS[step.name]
    return steps


@register("site-destroy")
def site_destroy(params: dict[str, Any], settings: Settings) -> Pipeline:
    from provisioner.site.archive import ARCHIVE
    from provisioner.site.validate import site_spec

    spec = site_spec(params)
    keep = bool(params.get("keep_certificate", False))
    return Pipeline(
        name="site-destroy",
        target=site_target(spec),
        params={**spec.as_params(), "keep_certificate": keep},
        steps=destroy_steps(spec, settings, keep),
        title=f"Destroying site: {spec.domain}",
        next_steps=[
            f"The site's files are kept under {settings.sites_root / ARCHIVE}/",
            "Undo: provision runs rollback <run id above>"
            + ("" if keep else " (a revoked certificate must then be renewed with --force)"),
        ],
    )
