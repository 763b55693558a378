"""ACME Renewal Information (RFC 9773) as renewal decisions read it, and the JSON state files
the certificate commands keep under `<state_dir>/certs/`.

A CA's answer is kept in `<state_dir>/certs/ari.json` until its Retry-After has passed, so a
`certs status` every minute and a `certs renew` twice a day ask the CA at most as often as it
asked to be asked. When the CA cannot be reached, the last answer kept is used; with none,
the lifetime rule decides (the caller's fallback).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from provisioner.config import Settings
from provisioner.fsutil import file_lock, write_atomically


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def certs_state(settings: Settings) -> Path:
    return settings.state_dir / "certs"


def read_json(path: Path) -> dict[str, Any]:
    """A state file's object; {} when absent or unreadable (it is rewritten on the next update)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_json(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change and rewrite a state file atomically, under its lock (runs for different
    sites update the same file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):
        data = read_json(path)
        change(data)
        write_atomically(path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o644)
    return data


@dataclass(frozen=True)
class Window:
    """When a certificate should be renewed: the CA's (ARI) or the last third of its life."""

    start: dt.datetime
    end: dt.datetime
    source: str  # "ari" or "lifetime"
    ask_after: dt.datetime | None = None  # the CA's Retry-After: not asked again before

    def as_json(self) -> dict[str, str | None]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "source": self.source,
            "ask_after": self.ask_after.isoformat() if self.ask_after else None,
        }


def lifetime_window(cert: x509.Certificate) -> Window:
    """The last third of the certificate's lifetime (never a fixed 30 days)."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    end = cert.not_valid_after_utc
    return Window(end - lifetime / 3, end, "lifetime")


def ari_window(settings: Settings, cert: x509.Certificate) -> Window | None:
    """The CA's suggested window, from the cache while its Retry-After runs, else asked again;
    None when the CA offers no ARI (or cannot be reached and nothing is cached)."""
    from provisioner.site import acme_client as acme

    try:
        key = acme.ari_cert_id(cert)
    except (x509.ExtensionNotFound, ValueError):
        return None  # no Authority Key Identifier: no ARI id
    path = certs_state(settings) / "ari.json"
    kept = read_json(path).get(key)
    now = _now()
    if isinstance(kept, dict) and _time(kept.get("ask_after")) > now:
        return _window_of(kept)
    try:
        info = acme.renewal_info(settings, _directory(settings), cert)
    except Exception:  # the CA unreachable or answering nonsense: keep what we had
        return _window_of(kept) if isinstance(kept, dict) else None
    if info is None:
        return None
    entry = {
        "start": info.start.isoformat(),
        "end": info.end.isoformat(),
        "ask_after": (now + dt.timedelta(seconds=info.retry_after)).isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }

    def keep(data: dict[str, Any]) -> None:
        data[key] = entry
        for other in [k for k, v in data.items() if _time(_get(v, "not_after")) < now]:
            del data[other]  # expired certificates' answers are of no further use

    update_json(path, keep)
    return _window_of(entry)


_DIRECTORIES: dict[tuple[str, str], Any] = {}


def _directory(settings: Settings) -> Any:
    """The CA's directory, fetched once per process (a status of 20 sites asks once)."""
    from provisioner.site import acme_client as acme

    key = (settings.acme_directory, str(settings.acme_ca_bundle))
    if key not in _DIRECTORIES:
        _DIRECTORIES[key] = acme.fetch_directory(settings)
    return _DIRECTORIES[key]


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _time(value: Any) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _window_of(entry: dict[str, Any]) -> Window | None:
    start, end = _time(entry.get("start")), _time(entry.get("end"))
    if start.year == 1 or end.year == 1:
        return None
    ask_after = _time(entry.get("ask_after"))
    return Window(start, end, "ari", None if ask_after.year == 1 else ask_after)


def renewal_window(settings: Settings, cert: x509.Certificate) -> Window:
    """The window a renewal decision uses: the CA's where offered, else the lifetime's."""
    return ari_window(settings, cert) or lifetime_window(cert)
