"""A local ledger of ACME orders, issuances and failed validations, to stop before the CA's
rate limits instead of running into them (ANCHORS.md §5: Hestia's users were banned for days).

`<cert_dir>/ledger.json`, 0600, rewritten atomically under a lock. It is never rolled back: a
failed validation counts against Let's Encrypt's budget whether or not the run is undone.
Events older than a week (the longest window) are dropped on each write.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.fsutil import file_lock, write_atomically

HOUR = dt.timedelta(hours=1)
WEEK = dt.timedelta(days=7)
# Let's Encrypt's limits (2026): the ledger refuses the request that would be refused.
FAILED_PER_NAME_PER_HOUR = 5
CERTS_PER_REGISTERED_DOMAIN_PER_WEEK = 50
CERTS_PER_NAME_SET_PER_WEEK = 5
ORDERS_PER_ACCOUNT_PER_3_HOURS = 300
# After a failed validation a name waits before its next order, doubling per failure in a row
# (reset by an issuance), as Let's Encrypt's integration guide asks of clients.
BACKOFF_FIRST = dt.timedelta(minutes=5)
BACKOFF_MAX = dt.timedelta(hours=6)


def registered_domain(name: str) -> str:
    """The registered domain a rate limit counts against, without a public-suffix list:
    the last two labels, three under a two-letter ccTLD whose second level is short
    (`example.co.uk`). Close enough for a budget that errs on the safe side."""
    labels = name.split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Ledger:
    path: Path

    @classmethod
    def at(cls, cert_dir: Path) -> Ledger:
        return cls(cert_dir / "ledger.json")

    def events(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []  # an unreadable ledger must not block issuance; it is rewritten next
        return [e for e in data.get("events", []) if isinstance(e, dict)]

    def record(self, kind: str, names: list[str], **extra: Any) -> None:
        """Append an event ("order", "issued", "failed") for these names."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(".ledger.lock")):
            cutoff = _now() - WEEK
            kept = [e for e in self.events() if _at(e) > cutoff]
            kept.append({"at": _now().isoformat(), "kind": kind, "names": names, **extra})
            body = json.dumps({"version": 1, "events": kept}, indent=1) + "\n"
            write_atomically(self.path, body, 0o600)

    def refusal(
        self, names: tuple[str, ...], account: str | None = None, renewal: bool = False
    ) -> str | None:
        """Why the next order for `names` must not be sent, or None when the budget allows it.

        `renewal`: the order renews a certificate for exactly these names, which Let's Encrypt
        exempts from its per-registered-domain and orders-per-account limits (boulder#7508).
        """
        now = _now()
        events = self.events()
        for name in names:
            failed = [
                _at(e)
                for e in events
                if e.get("kind") == "failed" and name in e.get("names", []) and now - _at(e) < HOUR
            ]
            if len(failed) >= FAILED_PER_NAME_PER_HOUR:
                again = (min(failed) + HOUR).strftime("%Y-%m-%d %H:%M UTC")
                return (
                    f"{len(failed)} failed validations for {name} in the last hour (Let's "
                    f"Encrypt allows {FAILED_PER_NAME_PER_HOUR}); fix the challenge and retry "
                    f"after {again}"
                )
        waiting = self.backoff(names, events, now)
        if waiting:
            return waiting
        issued = [e for e in events if e.get("kind") == "issued" and now - _at(e) < WEEK]
        domain = registered_domain(names[0])
        same_domain = [e for e in issued if e.get("registered") == domain]
        if not renewal and len(same_domain) >= CERTS_PER_REGISTERED_DOMAIN_PER_WEEK:
            return (
                f"{len(same_domain)} certificates for {domain} in the last 7 days (Let's Encrypt "
                f"allows {CERTS_PER_REGISTERED_DOMAIN_PER_WEEK}); wait, or reuse a certificate"
            )
        same_set = [e for e in issued if sorted(e.get("names", [])) == sorted(names)]
        if len(same_set) >= CERTS_PER_NAME_SET_PER_WEEK:
            return (
                f"{len(same_set)} certificates for exactly {', '.join(names)} in the last 7 days "
                f"(Let's Encrypt allows {CERTS_PER_NAME_SET_PER_WEEK}); keep the one issued"
            )
        window = 3 * HOUR
        orders = [
            e
            for e in events
            if e.get("kind") == "order" and now - _at(e) < window and e.get("account") == account
        ]
        if account and not renewal and len(orders) >= ORDERS_PER_ACCOUNT_PER_3_HOURS:
            return (
                f"{len(orders)} orders by this ACME account in 3 hours (Let's Encrypt allows "
                f"{ORDERS_PER_ACCOUNT_PER_3_HOURS}); wait before ordering again"
            )
        return None

    @staticmethod
    def backoff(
        names: tuple[str, ...], events: list[dict[str, Any]], now: dt.datetime
    ) -> str | None:
        """Why a name that just failed validation must wait, or None: each failure in a row
        since its last issuance doubles the wait, from BACKOFF_FIRST up to BACKOFF_MAX."""
        for name in names:
            streak: list[dt.datetime] = []
            for event in sorted(events, key=_at):
                if name not in event.get("names", []):
                    continue
                if event.get("kind") == "issued":
                    streak = []
                elif event.get("kind") == "failed":
                    streak.append(_at(event))
            if not streak:
                continue
            wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (len(streak) - 1))
            again = streak[-1] + wait
            if now < again:
                return (
                    f"{name} failed validation {len(streak)} time(s) in a row, the last at "
                    f"{streak[-1]:%Y-%m-%d %H:%M} UTC; backing off: fix the challenge and retry "
                    f"after {again:%Y-%m-%d %H:%M} UTC"
                )
        return None


def _at(event: dict[str, Any]) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(event.get("at")))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
