"""What `provision certs status` reports, and what `certs renew` records for it.

Sites come from the registry (the data layer, any migration phase), each with its live
certificate if it has one; live folders under `cert_dir` that no registry site owns are listed
too, marked as such (and not renewed: nothing says which vhost they belong to). Without a
data layer configured, the live folders are the sites.

`<state_dir>/certs/renew-runs.json` keeps when `certs renew` last ran and each site's last
renewal attempt, so a lost timer or cron job (dokku-letsencrypt #215, #308) shows as an alert
instead of a certificate that silently expires.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.site.ari import certs_state, read_json, renewal_window, update_json
from provisioner.site.cert_store import CertStore

ALERT_DAYS = 14  # a certificate closer to expiry than this is an alert...
ALERT_LIFETIME_FRACTION = 4  # ...or than a quarter of its lifetime, for short-lived ones
RENEW_STALE = dt.timedelta(days=2)  # `certs renew` not run for this long is an alert


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SiteEntry:
    site_id: str
    domain: str
    in_registry: bool
    status: str | None = None  # active, provisioned or disabled (registry sites)


def _live_domains(settings: Settings) -> list[str]:
    live = settings.cert_dir / "live"
    if not live.is_dir():
        return []
    return sorted(p.name for p in live.iterdir() if p.is_dir() and not p.name.startswith("."))


def _entry(record: Any) -> SiteEntry:
    return SiteEntry(record.site_id, record.domain, True, record.status)


def all_sites(settings: Settings) -> list[SiteEntry]:
    """Registry sites, then live folders no registry site owns (all of them, without a data
    layer configured: they are the sites then)."""
    entries: list[SiteEntry] = []
    registry = settings.data_dir is not None
    if registry:
        from provisioner.site import registry as sites
        from provisioner.storage import DataLayer

        with DataLayer.from_settings(settings) as layer:
            entries = [_entry(r) for r in sites.all_sites(layer) if r.domain]
    known = {e.domain for e in entries}
    for domain in _live_domains(settings):
        if domain not in known:
            entries.append(SiteEntry(domain.replace(".", "_"), domain, not registry))
    return sorted(entries, key=lambda e: e.domain)


def find_site(settings: Settings, ref: str) -> SiteEntry | None:
    """The site whose site_id or domain is `ref`, from the registry (or, without a data layer,
    the live folders)."""
    if settings.data_dir is None:
        wanted = ref.strip().rstrip(".").lower()
        return next((e for e in all_sites(settings) if wanted in (e.site_id, e.domain)), None)
    from provisioner.site import registry as sites
    from provisioner.storage import DataLayer

    with DataLayer.from_settings(settings) as layer:
        found = sites.find_site(layer, ref)
    return _entry(found) if found is not None and found.domain else None


# ------------------------------------------------------------------------ the renew record


def runs_path(settings: Settings) -> Path:
    return certs_state(settings) / "renew-runs.json"


def record_attempt(settings: Settings, domain: str, attempt: dict[str, Any]) -> None:
    """One site's renewal attempt: when, its outcome, what it said, the run id."""

    def change(data: dict[str, Any]) -> None:
        data.setdefault("sites", {})[domain] = {"at": _now().isoformat(), **attempt}

    update_json(runs_path(settings), change)


def record_run(settings: Settings, started: dt.datetime, counts: dict[str, int]) -> None:
    """`certs renew` ran (whatever it found to do): the alert on stale renewals reads this."""

    def change(data: dict[str, Any]) -> None:
        data["last_run"] = {
            "started": started.isoformat(),
            "finished": _now().isoformat(),
            **counts,
        }

    update_json(runs_path(settings), change)


# ------------------------------------------------------------------------ the report


def _time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def alert_threshold(lifetime: dt.timedelta) -> dt.timedelta:
    """14 days, or a quarter of the lifetime when that is shorter: a 6-day certificate is
    always under 14 days, yet only late when its renewal has failed for a while."""
    return min(dt.timedelta(days=ALERT_DAYS), lifetime / ALERT_LIFETIME_FRACTION)


def site_report(
    settings: Settings, entry: SiteEntry, attempts: dict[str, Any], served: bool = True
) -> dict[str, Any]:
    """One site: stored and served certificates, window, last attempt, and its problems."""
    from provisioner.site.renewal import served_certificate

    now = _now()
    report: dict[str, Any] = {
        "site_id": entry.site_id,
        "domain": entry.domain,
        "in_registry": entry.in_registry,
        "status": entry.status,
        "certificate": None,
        "served": None,
        "window": None,
        "due": False,
        "last_attempt": attempts.get(entry.domain),
        "problems": [],
    }
    problems: list[str] = report["problems"]
    if not entry.in_registry:
        report["note"] = "a live certificate folder no registry site owns (not renewed)"
    live = CertStore(settings.cert_dir, entry.domain).current()
    if live is None:
        report["note"] = "no certificate"
        return report
    left = live.not_after - now
    attempt = report["last_attempt"] or {}
    report["certificate"] = {
        **live.summary(),
        "not_before": live.not_before.isoformat(),
        "days_left": round(left.total_seconds() / 86400, 1),
        "profile": attempt.get("profile") if attempt.get("serial") == f"{live.serial:x}" else None,
        "key_matches": live.key_matches,
    }
    window = renewal_window(settings, live.cert)
    report["window"] = window.as_json()
    report["due"] = now >= window.start
    if left <= dt.timedelta(0):
        problems.append(f"the certificate expired on {live.not_after:%Y-%m-%d %H:%M} UTC")
    elif left < alert_threshold(live.not_after - live.not_before):
        problems.append(
            f"the certificate expires in {left.total_seconds() / 86400:.1f} days "
            f"({live.not_after:%Y-%m-%d %H:%M} UTC)"
        )
    if window.source == "ari" and now >= window.end and left > dt.timedelta(0):
        problems.append(
            f"the CA's renewal window (ARI) ended at {window.end:%Y-%m-%d %H:%M} UTC and the "
            "certificate was not renewed: run `provision certs renew`"
        )
    if attempt.get("outcome") == "failed":
        problems.append(f"the last renewal failed at {attempt.get('at')}: {attempt.get('message')}")
    if served and entry.in_registry:
        seen = served_certificate(settings, entry.domain)
        report["served"] = {
            "serial": seen.serial,
            "verified": seen.verified,
            "problem": seen.problem,
            "not_after": seen.cert.not_valid_after_utc.isoformat() if seen.cert else None,
        }
        if seen.serial != f"{live.serial:x}":
            problems.append(
                f"nginx serves certificate {seen.serial or '(none)'}, not the stored "
                f"{live.serial:x}{f' ({seen.problem})' if seen.problem else ''}"
            )
        elif not seen.verified:
            problems.append(f"the served certificate {seen.problem}")
    return report


def status(settings: Settings, sites: list[SiteEntry]) -> dict[str, Any]:
    """Every site's report, when `certs renew` last ran, and whether anything needs a person."""
    record = read_json(runs_path(settings))
    attempts = record.get("sites") if isinstance(record.get("sites"), dict) else {}
    reports = [site_report(settings, entry, attempts) for entry in sites]
    last_run = record.get("last_run") if isinstance(record.get("last_run"), dict) else None
    problems = [f"{r['domain']}: {p}" for r in reports for p in r["problems"]]
    renewable = any(r["certificate"] and r["in_registry"] for r in reports)
    finished = _time((last_run or {}).get("finished"))
    if renewable and finished is None:
        problems.append("`provision certs renew` has never run: install its timer or cron job")
    elif renewable and finished is not None and _now() - finished > RENEW_STALE:
        problems.append(
            f"`provision certs renew` last ran at {finished:%Y-%m-%d %H:%M} UTC, over "
            f"{RENEW_STALE.days} days ago: is its timer or cron job still installed?"
        )
    return {"sites": reports, "last_run": last_run, "problems": problems, "ok": not problems}
