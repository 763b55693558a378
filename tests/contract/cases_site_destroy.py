"""Contract cases of `site destroy`'s steps, each against what the create cases arrange.

The archive, record and operator cases use the site-data worlds (a sites folder and a copy of
the AEIMS files inside the case's root); the vhost cases the stack's real nginx (the nginx
cases' domains, swept by them when stale); the certificate cases real pebble certificates in
the case's own cert folder (revoked in one case: a rollback restores the files, never the
CA's verdict, which the snapshot does not read); dns and billing the stack's moto and billing
server. Rollback restores each world exactly; `created_at` of a registration put back is the
billing server's to stamp again.
"""

from __future__ import annotations

from typing import Any

from provisioner.engine.step import RunContext, Step
from provisioner.site.archive import ArchiveStep
from provisioner.site.billing_removal import BillingRemovalStep
from provisioner.site.certificate_removal import CertificateRemovalStep
from provisioner.site.dns_removal import DnsRemovalStep
from provisioner.site.operators_removal import OperatorLinksRemovalStep
from provisioner.site.record_removal import RecordRemovalStep
from provisioner.site.spec import SiteType
from provisioner.site.vhost_removal import VhostRemovalStep
from tests.contract import cases_site_data as data
from tests.contract import cases_site_dns_billing as remote
from tests.contract import cases_site_nginx as web
from tests.contract import cases_site_tls as tls
from tests.contract.harness import StepCase, World, tree
from tests.nginx_support import site, stack_settings

EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "site-destroy": {
        "domain": "newflirts.aeims.test",
        "name": "New Flirts",
        "type": "customer",
        "template": "default",
        "operators": None,
        "keep_certificate": False,
    },
}


def case(
    family: str, name: str, kind: type[Step], build: Any, arrange: Any, snapshot: Any, **more: Any
) -> StepCase:
    return StepCase(
        id=f"site-destroy-{family}/{name}",
        kind=kind,
        build=build,
        arrange=arrange,
        snapshot=snapshot,
        **more,
    )


# ------------------------------------------------------------------------------ archive


def archive_step(world: World) -> ArchiveStep:
    return ArchiveStep(data.spec(), data.site_world(world).settings)


def archive_case(name: str, arrange: Any, **more: Any) -> StepCase:
    snapshot = lambda world: tree(world.root / "sites")  # noqa: E731
    return case("archive", name, ArchiveStep, archive_step, arrange, snapshot, **more)


ARCHIVE_CASES = [
    archive_case("rendered-folder", data.sites_folder(rendered_as="New Flirts")),
    archive_case("hand-edited-folder", data.sites_folder(rendered_as="Old", hand_edit=True)),
    archive_case("no-folder", data.sites_folder(), converged=True),
]

# ------------------------------------------------------------------------------ vhost


def vhost_step(name: str) -> Any:
    def build(world: World) -> VhostRemovalStep:
        return VhostRemovalStep(site(web.domain_of(name), "Contract"), stack_settings())

    return build


def vhost_case(name: str, arrange: Any, **more: Any) -> StepCase:
    return case(
        "vhost",
        name,
        VhostRemovalStep,
        vhost_step(f"gone-{name}"),
        arrange,
        web.snapshot_for(f"gone-{name}"),
        **more,
    )


VHOST_CASES = [
    vhost_case("ours", web.arrange_converged("gone-ours")),
    vhost_case("live-site", web.arrange_live_site("gone-live-site")),
    vhost_case("none", web.arrange_nothing("gone-none"), converged=True),
]

# ------------------------------------------------------------------------------ certificate


def cert_step(revoke: bool) -> Any:
    def build(world: World) -> CertificateRemovalStep:
        return CertificateRemovalStep(tls.base_spec(world), tls.settings_of(world), revoke)

    return build


def cert_snapshot(world: World) -> dict[str, Any]:
    return {k: v for k, v in tree(world.root).items() if k.startswith("certs/")}


def certificate_case(name: str, revoke: bool, arrange: Any, **more: Any) -> StepCase:
    build = cert_step(revoke)
    return case("certificate", name, CertificateRemovalStep, build, arrange, cert_snapshot, **more)


def leftover_renewal_conf(world: World) -> None:
    """No certificate, but a renewal file certbot's layout names the domain by."""
    renewal = tls.settings_of(world).cert_dir / "renewal"
    renewal.mkdir(parents=True)
    (renewal / f"{tls.base_spec(world).domain}.conf").write_text("# renew\n")


CERTIFICATE_CASES = [
    certificate_case("revoked-and-removed", True, tls.issued),
    certificate_case("kept-valid-and-removed", False, tls.issued),
    certificate_case("leftover-renewal-file", True, leftover_renewal_conf),
    certificate_case("none", True, tls.nothing, converged=True),
]

# ------------------------------------------------------------------------------ dns


def dns_step(world: World) -> DnsRemovalStep:
    return DnsRemovalStep(remote.spec_of(world), remote.on_the_stack(world).settings)


def dns_case(name: str, arrange: Any, **more: Any) -> StepCase:
    return case("dns", name, DnsRemovalStep, dns_step, arrange, remote.dns_records, **more)


def only_the_apex_deleted(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after Route53 took the first DELETE of the batch (moto's are not atomic)."""
    change = step.check(ctx)
    assert change is not None
    first = change.before["records"][0]
    client, zone = remote._r53()
    batch = {"Changes": [{"Action": "DELETE", "ResourceRecordSet": first}]}
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)


DNS_CASES = [
    dns_case(
        "ours-and-a-neighbour-kept",
        remote.dns_arrange(
            ("", 300, "127.0.0.1"), ("www.", 300, "127.0.0.1"), ("mail.", 600, "10.0.0.9")
        ),
        partial_apply=only_the_apex_deleted,
    ),
    dns_case("pointing-elsewhere", remote.dns_arrange(("", 3600, "10.0.0.7"))),
    dns_case("none", remote.dns_arrange(("mail.", 600, "10.0.0.9")), converged=True),
]

# ------------------------------------------------------------------------------ billing


def billing_step(world: World) -> BillingRemovalStep:
    return BillingRemovalStep(
        remote.spec_of(world, SiteType.CUSTOMER), remote.on_the_stack(world).settings
    )


def registration(world: World) -> dict[str, Any] | None:
    found = remote.registration(world)
    return None if found is None else {k: v for k, v in found.items() if k != "created_at"}


BILLING_CASES = [
    case(
        "billing", "registered", BillingRemovalStep, billing_step, remote.registered(), registration
    ),
    case(
        "billing",
        "registered-with-other-terms",
        BillingRemovalStep,
        billing_step,
        remote.registered(name="Old", billing=remote.OTHER_TERMS),
        registration,
    ),
    case(
        "billing",
        "none",
        BillingRemovalStep,
        billing_step,
        remote.on_the_stack,
        registration,
        converged=True,
    ),
]

# ------------------------------------------------------------------------------ record, operators


def data_case(name: str, kind: type[Step], domain: str, **more: Any) -> StepCase:
    build = data.data_step(kind, domain=domain)
    return case(kind.name, name, kind, build, data.aeims_root, data.aeims_files, **more)


def one_link_removed(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the first operator's link went."""
    assert isinstance(step, OperatorLinksRemovalStep)
    from provisioner.clients import DATA_LAYER

    layer = ctx.client(DATA_LAYER)
    first = next(iter(step.links(layer)))
    layer.remove_operator_site(first, step.spec.domain)


def only_the_site_deleted(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the sites.json record went, before the domains.json entry."""
    assert isinstance(step, RecordRemovalStep)
    from provisioner.clients import DATA_LAYER

    ctx.client(DATA_LAYER).delete("sites", step.spec.site_id)


DATA_CASES = [
    data_case(
        "live-site", RecordRemovalStep, "alpha.example.test", partial_apply=only_the_site_deleted
    ),
    data_case("no-record", RecordRemovalStep, "nowhere.example.test", converged=True),
    data_case(
        "linked-operators",
        OperatorLinksRemovalStep,
        "alpha.example.test",
        partial_apply=one_link_removed,
    ),
    data_case("no-links", OperatorLinksRemovalStep, "beta.example.test", converged=True),
]

CASES: list[StepCase] = [
    *ARCHIVE_CASES,
    *VHOST_CASES,
    *CERTIFICATE_CASES,
    *DNS_CASES,
    *BILLING_CASES,
    *DATA_CASES,
]
