"""A created site's life: enable, disable, add and remove operators, as engine pipelines.

Each pipeline is rebuilt from its journaled parameters alone (the site's domain, name, type,
template, and for operators the resolved ids), so `runs resume` and `runs rollback` act on the
same site and the same operators even after the records changed. The commands resolve what
the user typed (`site`: a site id or a domain; usernames, `all_active`, `count`) against the
data layer when they build the pipeline (`resolved`), and journal only the result: an unknown
site or operator is refused there, before any run (exit 2).

- `site-enable`: the site's files, the vhost `live` (TLS kept when the certificate exists),
  the record active, its operator links active, then the HTTPS answer checked.
- `site-disable`: the maintenance page, the vhost `maintenance` (503 with that page; the ACME
  challenge path is served in every state, so renewals go on), the record inactive. The
  certificate is not touched.
- `site-add-operators` / `site-remove-operators`: the operators' links to the site.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, PipelineError, register
from provisioner.engine.step import Step
from provisioner.site.pipelines import site_target
from provisioner.site.spec import SiteSpec

if TYPE_CHECKING:
    from provisioner.storage import DataLayer


def _spec(params: dict[str, Any]) -> SiteSpec:
    from provisioner.site.validate import site_spec

    return site_spec(params)


@contextmanager
def _registry(settings: Settings) -> Iterator[DataLayer]:
    """The data layer, its failures turned into one line (exit 2) for a pipeline factory."""
    from provisioner.storage import DataLayer

    try:
        with DataLayer.from_settings(settings) as layer:
            yield layer
    except PipelineError:
        raise
    except Exception as exc:  # the data layer's own errors: its message says what is wrong
        raise PipelineError(f"cannot read the site registry: {exc}") from None


def site_params(settings: Settings, ref: str) -> dict[str, Any]:
    """The parameters of a created site, found by site_id or domain in the data layer;
    PipelineError (exit 2, one line) when there is no such site."""
    from provisioner.site.registry import find_site

    with _registry(settings) as layer:
        found = find_site(layer, ref) if ref.strip() else None
    if found is None:
        raise PipelineError(
            f"no site {ref!r} in the registry: give the site_id or domain of a created site "
            "(`provision site list` shows them)"
        )
    return found.spec().as_params()  # checked now, as the journal's copy will be


def operator_ids(
    settings: Settings,
    domain: str,
    refs: list[str] | tuple[str, ...] = (),
    *,
    all_active: bool = False,
    count: int | None = None,
) -> list[str]:
    """The ids of the operators named (ids or usernames), of every active operator, or of the
    first `count` active operators not yet linked to `domain` (by id: a stable order).
    PipelineError for an unknown operator, or fewer unlinked operators than asked."""
    with _registry(settings) as layer:
        if refs:
            ids: list[str] = []
            unknown = []
            for ref in refs:
                operator = layer.get_operator_by_id(ref) or layer.get_operator(ref)
                if operator is None:
                    unknown.append(ref)
                elif str(operator["id"]) not in ids:
                    ids.append(str(operator["id"]))
            if unknown:
                raise PipelineError(
                    f"no AEIMS operator {', '.join(map(repr, unknown))}: give ids or usernames "
                    "(`provision data operators` lists them)"
                )
            return ids
        active = sorted(
            (op for op in layer.list("operators") if op.get("status") == "active"),
            key=lambda op: str(op["id"]),
        )
    if all_active:
        return [str(op["id"]) for op in active]
    if count is None or count < 1:
        raise PipelineError("name operators, or give --all-active or --count N (N >= 1)")
    free = [str(op["id"]) for op in active if not _linked(op, domain)]
    if len(free) < count:
        raise PipelineError(
            f"only {len(free)} active operator(s) are not yet linked to {domain}, "
            f"{count} asked for: lower --count or name them with --operator"
        )
    return free[:count]


def resolved(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Full site parameters: as given (the journal's copy, or a caller's), or for `site` (a
    site_id or domain, as `provision run site-enable -p site=...` gives it) read from the
    registry, with `operators` resolved from `all_active` or `count` when those are asked."""
    if "domain" in params:
        return params
    if "site" not in params:
        raise PipelineError("missing parameter site: the site_id or domain of a created site")
    full = site_params(settings, str(params["site"]))
    refs = params.get("operators")
    if refs or params.get("all_active") or params.get("count") is not None:
        full["operators"] = operator_ids(
            settings,
            full["domain"],
            list(refs or ()),
            all_active=bool(params.get("all_active")),
            count=params.get("count"),
        )
    return full


def _linked(operator: dict[str, Any], domain: str) -> bool:
    domains = operator.get("domains")
    entry = domains.get(domain) if isinstance(domains, dict) else None
    return isinstance(entry, dict) and entry.get("active") is True


def _pipeline(
    name: str, spec: SiteSpec, steps: list[Step], title: str, *next_steps: str
) -> Pipeline:
    """A lifecycle pipeline on the site's lock (the one create takes), its steps labelled as
    create's are, its parameters the resolved site (what resume and rollback rebuild from)."""
    from provisioner.site.pipelines import LABELS

    for step in steps:
        step.label = LABELS.get(step.name, step.label)
    return Pipeline(
        name=name,
        target=site_target(spec),
        params=spec.as_params(),
        steps=steps,
        title=title,
        next_steps=list(next_steps),
    )


@register("site-enable")
def site_enable(params: dict[str, Any], settings: Settings) -> Pipeline:
    from provisioner.site.activation import ActivationStep
    from provisioner.site.files import FilesStep
    from provisioner.site.health import HealthStep
    from provisioner.site.nginx import NginxStep, VhostState
    from provisioner.site.operator_links import LinkAction, OperatorLinksStep

    spec = _spec(resolved(params, settings))
    steps: list[Step] = [
        FilesStep(spec, settings),
        NginxStep(spec, settings, VhostState.LIVE),
        ActivationStep(spec, settings, active=True),
        OperatorLinksStep(spec, settings, LinkAction.ACTIVATE),
        HealthStep(spec, settings),
    ]
    return _pipeline(
        "site-enable",
        spec,
        steps,
        f"Enabling site: {spec.domain}",
        f"Add operators: provision site add-operators --site {spec.site_id} --all-active",
        f"Take it down for maintenance: provision site disable --site {spec.site_id}",
    )


@register("site-disable")
def site_disable(params: dict[str, Any], settings: Settings) -> Pipeline:
    from provisioner.site.activation import ActivationStep
    from provisioner.site.maintenance import MaintenancePageStep
    from provisioner.site.nginx import NginxStep, VhostState

    spec = _spec(resolved(params, settings))
    steps: list[Step] = [
        MaintenancePageStep(spec, settings),
        NginxStep(spec, settings, VhostState.MAINTENANCE),
        ActivationStep(spec, settings, active=False),
    ]
    return _pipeline(
        "site-disable",
        spec,
        steps,
        f"Disabling site: {spec.domain} (certificate kept and renewed)",
        f"Put it back: provision site enable --site {spec.site_id}",
    )


def _operators_pipeline(name: str, params: dict[str, Any], settings: Settings) -> Pipeline:
    from provisioner.site.operator_links import LinkAction, OperatorLinksStep

    spec = _spec(resolved(params, settings))
    if not spec.operators:
        raise PipelineError(f"{name}: no operators given")
    action = LinkAction.ADD if name == "site-add-operators" else LinkAction.REMOVE
    step = OperatorLinksStep(spec, settings, action)
    step.label = "Operator pool"  # not create's "Integration": this run only links
    where = "Adding operators to" if action is LinkAction.ADD else "Removing operators from"
    return Pipeline(
        name, site_target(spec), spec.as_params(), [step], f"{where} site: {spec.domain}"
    )


@register("site-add-operators")
def site_add_operators(params: dict[str, Any], settings: Settings) -> Pipeline:
    return _operators_pipeline("site-add-operators", params, settings)


@register("site-remove-operators")
def site_remove_operators(params: dict[str, Any], settings: Settings) -> Pipeline:
    return _operators_pipeline("site-remove-operators", params, settings)
