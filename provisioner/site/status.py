"""`provision site status` and `site list`: every step of a site checked now, drift as diffs.

A site's status is the plan of its create pipeline rebuilt from its record (domain, name, type,
template), with the vhost held to the state the record says (live, coming soon, maintenance)
rather than the one written in the vhost, so a hand edit of either shows. It is read-only and
fast: no preflight (a service that is down is that step's error, and every other step is still
checked), no call to the CA (the certificate is judged from its files: renewal windows are
`certs status`'s business), one set of clients for every site of the report.

`present` says whether the step's part exists (the record, the folder, the vhost, the records
at the names, a live certificate, a link, the registration, an answer): true when the check
found nothing to do or only drift on something that exists, false when it is missing, None
when the step is skipped in this configuration or could not be checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioner.engine.pipeline import Pipeline
from provisioner.engine.results import Outcome, StepResult
from provisioner.engine.step import Change, Step, unified_diff
from provisioner.site.pipelines import LABELS, create_steps, site_target
from provisioner.site.registry import SiteRecord
from provisioner.site.spec import SiteSpec

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.runner import Runner

OK, DRIFT, SKIPPED, ERROR = "ok", "drift", "skipped", "error"
# Sites checked at once by `statuses` (after the first).
PARALLEL = 4


@dataclass
class StepStatus:
    name: str
    label: str
    state: str  # ok | drift | skipped | error
    present: bool | None
    summary: str
    diff: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "status": self.state,
            "present": self.present,
            "summary": self.summary,
            "diff": self.diff,
            "error": self.error,
        }


@dataclass
class SiteStatus:
    site_id: str
    domain: str
    status: str  # the record's: active, provisioned, disabled
    vhost_state: str
    steps: list[StepStatus] = field(default_factory=list)
    error: str | None = None  # the record itself cannot be checked (it does not validate)

    @property
    def converged(self) -> bool:
        return self.error is None and all(s.state in {OK, SKIPPED} for s in self.steps)

    def as_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "domain": self.domain,
            "status": self.status,
            "vhost_state": self.vhost_state,
            "converged": self.converged,
            "error": self.error,
            "steps": [s.as_json() for s in self.steps],
        }


# ------------------------------------------------------------------------------ the steps


def status_steps(spec: SiteSpec, settings: Settings, record: SiteRecord) -> list[Step]:
    """create's steps, held to the record's state; the certificate judged without the CA; the
    operators held to the site's intended ones (the pool's active ones when it keeps none)."""
    from provisioner.site.certificate import CertificateStep
    from provisioner.site.intended_links import IntendedLinksStep
    from provisioner.site.nginx import NginxStep, VhostState

    state = record.vhost_state
    steps: list[Step] = []
    for step in create_steps(spec, settings):
        if step.name == "nginx":
            step = NginxStep(spec, settings, state)
        elif step.name == "certificate":
            step = CertificateStep(spec, settings, ari=False)
        elif step.name == "operators":
            step = IntendedLinksStep(spec, settings)
        elif step.name == "health" and state is VhostState.MAINTENANCE:
            continue  # a disabled site answers 503 on purpose: nothing to check there
        step.label = LABELS.get(step.name, step.label)
        steps.append(step)
    return steps


def _exists(change: Change, key: str) -> bool:
    return (change.before or {}).get(key) is not None


def _vhost_exists(change: Change) -> bool:
    return ((change.before or {}).get("vhost") or {}).get("kind", "absent") != "absent"


def _dns_exists(change: Change) -> bool:
    """Drift on records that exist (pointing elsewhere), or records gone."""
    return all(r.get("rrset") is not None for r in (change.before or {}).get("records", []))


def _operators_exist(change: Change) -> bool:
    """Some operators unlinked, not all of them (of the site's intended ones when it keeps
    them: a link nobody intended is drift on links that exist)."""
    after = change.after or {}
    if "unlinked" in after:  # held to the site's intended operators
        return len(after["unlinked"]) < len(after.get("intended", [])) or not after["unlinked"]
    return len(after.get("linked", [])) < len(after.get("operators", []))


# Whether the part exists, for a step whose check found something to do.
PRESENT: dict[str, Callable[[Change], bool]] = {
    "record": lambda c: _exists(c, "site") and _exists(c, "domain"),
    "files": lambda c: any(v is not None for v in ((c.before or {}).get("files") or {}).values()),
    "nginx": _vhost_exists,
    "dns": _dns_exists,
    "certificate": lambda c: (c.before or {}).get("live") is not None,
    "operators": _operators_exist,
    "billing": lambda c: c.before is not None,
    "health": lambda c: False,
}


def _lines(items: list[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, indent=2, sort_keys=True) + "\n"


def _diff_of(result: StepResult) -> str | None:
    change = result.change
    if change is None:
        return None
    if change.diff:
        return change.diff
    before, after = change.before, change.after
    if result.name == "operators":  # no set kept: the operators linked now against the pool's
        wanted = sorted((after or {}).get("operators", []))
        unlinked = set((after or {}).get("linked", []))
        now = [op for op in wanted if op not in unlinked]
        return unified_diff(_lines(now), _lines(wanted), "operators linked")
    if result.name == "health":  # what answered against what should
        before, after = (before or {}).get("answered"), (after or {}).get("answers")
        return unified_diff(f"{before}\n", f"{after}\n", "https answer")
    return unified_diff(_json_text(before), _json_text(after), result.name) or None


def _files_drift(step: Step) -> tuple[str, str] | None:
    """Files changed by hand that a create already acknowledged (its check is then quiet,
    but status still reports them): the summary and the diff, template against file."""
    plan = step.plan()  # type: ignore[attr-defined]
    known = sorted(plan.known_drift)
    if not known:
        return None
    diffs = []
    for rel in known:
        current = plan.current[rel]
        now = None if current is None else current.decode("utf-8", "replace")
        diffs.append(unified_diff(plan.wanted[rel].decode(), now, rel))
    return f"{len(known)} file(s) changed by hand: {', '.join(known)}", "".join(diffs)


def _step_status(result: StepResult, step: Step) -> StepStatus:
    label = result.label or result.name
    if result.outcome == Outcome.FAILED:
        error = result.error or "could not be checked"
        return StepStatus(result.name, label, ERROR, None, f"could not check: {error}", error=error)
    if result.outcome == Outcome.SKIPPED:
        return StepStatus(result.name, label, SKIPPED, None, result.summary)
    if result.outcome == Outcome.OK:
        if result.name == "files":
            drift = _files_drift(step)
            if drift is not None:
                return StepStatus(result.name, label, DRIFT, True, drift[0], drift[1])
        summary = _said(step) or "as wanted"
        return StepStatus(result.name, label, OK, True, summary)
    change = result.change
    assert change is not None  # planned: a check that found something to do
    present = PRESENT.get(result.name, lambda c: True)(change)
    return StepStatus(result.name, label, DRIFT, present, change.summary, _diff_of(result))


def _said(step: Step) -> str | None:
    if step.name not in {"certificate", "health"}:
        return None
    try:
        return step.outcome(False)
    except Exception:
        return None


# ------------------------------------------------------------------------------ the report


def site_status(runner: Runner, record: SiteRecord) -> SiteStatus:
    """One site checked now, through `Runner.plan` (no preflight, no lock, no change)."""
    from provisioner.engine.errors import UsageError

    found = SiteStatus(record.site_id, record.domain, record.status, str(record.vhost_state))
    try:
        spec = record.spec()
    except UsageError as exc:
        found.error = f"the record does not validate: {exc}"
        return found
    steps = status_steps(spec, runner.settings, record)
    pipeline = Pipeline(
        name="site-status",
        target=site_target(spec),
        params=spec.as_params(),
        steps=steps,
        title=f"Status of {spec.domain}",
    )
    result = runner.plan(pipeline, preflight=False)
    by_name = {step.name: step for step in steps}
    found.steps = [_step_status(r, by_name[r.name]) for r in result.steps]
    return found


def statuses(runner: Runner, records: list[SiteRecord]) -> list[SiteStatus]:
    """Every site's status with one set of clients (one Route53 client, one HTTP client, one
    data layer), closed at the end. The first site is checked alone (it opens the clients),
    the others `PARALLEL` at a time: each check mostly waits on a service (Route53 above all),
    and boto3's and httpx's clients may be shared between threads."""
    from concurrent.futures import ThreadPoolExecutor

    shared: dict[Any, Any] = {}
    runner.shared_clients = shared
    try:
        found = [site_status(runner, record) for record in records[:1]]
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            found.extend(pool.map(lambda record: site_status(runner, record), records[1:]))
        return found
    finally:
        runner.shared_clients = None
        for kind, client in shared.items():
            try:
                kind.close(client)
            except Exception:  # noqa: S112 - closing must not hide the report
                continue


# ------------------------------------------------------------------------------ site list


def site_rows(layer: Any, settings: Settings, records: list[SiteRecord]) -> list[dict[str, Any]]:
    """`site list`: status, certificate expiry (from the cert store) and operators per site."""
    from provisioner.site.cert_store import CertStore

    linked: dict[str, int] = {}
    for operator in layer.search_operators():
        domains = operator.get("domains")
        if isinstance(domains, dict):
            for domain, entry in domains.items():
                if isinstance(entry, dict) and entry.get("active") is True:
                    linked[domain] = linked.get(domain, 0) + 1
    rows = []
    for record in records:
        live = CertStore(settings.cert_dir, record.domain).current() if record.domain else None
        rows.append(
            {
                "site_id": record.site_id,
                "domain": record.domain,
                "name": record.site.get("name"),
                "status": record.status,
                "certificate_expires": live.not_after.isoformat() if live else None,
                "operators": linked.get(record.domain, 0),
            }
        )
    return rows
