"""Contract cases for the dns step (the stack's moto) and the billing step (the stack's billing
reference server).

The harness's World gives its RunContext settings with only a state folder; these steps need
the stack's (the Route53 client is opened from `ctx.settings.aws_endpoint`, and without it
boto3 would aim at the real AWS). `on_the_stack` therefore turns the case's World into a
StackWorld, whose settings are the stack's, before anything else runs. Each case's names are
derived from its World's folder: stable within the case, new in every run, so nothing is
shared with other tests and moto is never reset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import RunContext, Step
from provisioner.site.billing import BillingStep
from provisioner.site.dns import DnsStep
from provisioner.site.spec import SiteSpec, SiteType
from tests.contract.harness import StepCase, World
from tests.site_support import route53, stack_env, stack_settings, upsert, zone_id


class StackWorld(World):
    """A World whose runs see the local stack's settings."""

    @property
    def settings(self) -> Settings:
        return stack_settings(stack_env(), self.state_dir)


def on_the_stack(world: World) -> StackWorld:
    if not isinstance(world, StackWorld):
        world.__class__ = StackWorld
    assert isinstance(world, StackWorld)
    return world


def case_family(
    prefix: str, kind: type[Step], build: Callable[[World], Step], snapshot: Callable[[World], Any]
) -> Callable[..., StepCase]:
    """A case factory for one step class: a name, an arrangement and what to expect."""

    def case(name: str, arrange: Callable[[World], Any], **expect: Any) -> StepCase:
        return StepCase(
            id=f"{prefix}/{name}",
            kind=kind,
            build=build,
            arrange=arrange,
            snapshot=snapshot,
            **expect,
        )

    return case


def domain_of(world: World) -> str:
    return f"c{hashlib.sha256(str(world.root).encode()).hexdigest()[:12]}.aeims.test"


def spec_of(world: World, kind: SiteType = SiteType.CUSTOMER) -> SiteSpec:
    return SiteSpec(domain=domain_of(world), name="Contract", type=kind, template="default")


# --------------------------------------------------------------------------------------------
# DnsStep: A records for the domain and www, in the stack's aeims.test zone
# --------------------------------------------------------------------------------------------


def dns_step(world: World) -> DnsStep:
    return DnsStep(spec_of(world), on_the_stack(world).settings)


def _r53() -> tuple[Any, str]:
    client = route53(stack_env())
    return client, zone_id(client, "aeims.test")


def upsert_at(world: World, prefix: str, ttl: int, value: str) -> None:
    client, zone = _r53()
    upsert(client, zone, f"{prefix}{domain_of(world)}", "A", ttl, value)


def dns_records(world: World) -> list[Any]:
    """Every record set at the case's domain and below it, exactly as Route53 returns them."""
    client, zone = _r53()
    domain = f"{domain_of(world)}."
    found = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    return sorted(
        (r for r in found if r["Name"] == domain or r["Name"].endswith(f".{domain}")),
        key=repr,
    )


def dns_arrange(*records: tuple[str, int, str]) -> Any:
    def arrange(world: World) -> None:
        on_the_stack(world)
        for prefix, ttl, value in records:
            upsert_at(world, prefix, ttl, value)

    return arrange


def only_the_apex_made(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after Route53 took one change of the batch (moto's batches are not atomic)."""
    change = step.check(ctx)
    assert change is not None
    first = change.after["records"][0]["rrset"]
    assert first["Name"] == f"{domain_of(world)}."
    client, zone = _r53()
    batch = {"Changes": [{"Action": "UPSERT", "ResourceRecordSet": first}]}
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch=batch)


dns_case = case_family("site-dns", DnsStep, dns_step, dns_records)


DNS_CASES = [
    dns_case("records-absent", dns_arrange(), partial_apply=only_the_apex_made),
    dns_case(
        "records-elsewhere-restored-with-their-ttl",
        dns_arrange(("", 3600, "10.0.0.7"), ("www.", 60, "10.0.0.8"), ("mail.", 600, "10.0.0.9")),
        partial_apply=only_the_apex_made,
    ),
    dns_case("www-only-missing", dns_arrange(("", 300, "127.0.0.1"))),
    dns_case(
        "already-converged",
        dns_arrange(("", 300, "127.0.0.1"), ("www.", 900, "127.0.0.1")),
        converged=True,
    ),
]

# --------------------------------------------------------------------------------------------
# BillingStep: the site's registration with the billing reference server
# --------------------------------------------------------------------------------------------


def billing_step(world: World, kind: SiteType = SiteType.CUSTOMER) -> BillingStep:
    return BillingStep(spec_of(world, kind), on_the_stack(world).settings)


def registration(world: World) -> dict[str, Any] | None:
    """The stored document, all but `updated_at` (a PUT that restores it sets that anew)."""
    step = billing_step(world)
    with world.run("contract-snapshot") as ctx:
        found = step._api(ctx).get(step.spec.site_id)
    return None if found is None else {k: v for k, v in found.items() if k != "updated_at"}


def registered(**changes: Any) -> Any:
    def arrange(world: World) -> None:
        step = billing_step(world)
        with on_the_stack(world).run("contract-arrange") as ctx:
            step._api(ctx).put(step.spec.site_id, {**step.document(), **changes})

    return arrange


billing_case = case_family("site-billing", BillingStep, billing_step, registration)


OTHER_TERMS = {"per_minute_rate": 1.5, "minimum_purchase": 5.0, "currency": "EUR"}
BILLING_CASES = [
    billing_case("not-registered", on_the_stack),
    billing_case(
        "registered-with-other-terms",
        registered(name="Old", billing=OTHER_TERMS),
    ),
    billing_case("already-registered", registered(), converged=True),
]

CASES: list[StepCase] = [*DNS_CASES, *BILLING_CASES]
