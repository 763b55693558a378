"""The renewal rules without a CA: the ledger's limits and backoff, the due and alert
thresholds, ARI answers with any Retry-After (a local ARI endpoint: pebble always says 6 h), and
`replaces` in the newOrder payload."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from acme import messages
from cryptography import x509

from provisioner.config import Settings
from provisioner.site import acme_ledger, ari
from provisioner.site.acme_client import ReplacingOrder, ari_cert_id
from provisioner.site.acme_ledger import Ledger
from provisioner.site.cert_report import alert_threshold
from tests.test_certs_renewal import mostly_used_certificate

NAMES = ("a.example.com", "www.a.example.com")


def write_events(ledger: Ledger, *events: dict[str, object]) -> None:
    ledger.path.parent.mkdir(parents=True, exist_ok=True)
    ledger.path.write_text(json.dumps({"version": 1, "events": list(events)}))


def ago(**delta: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(**delta)).isoformat()


def test_backoff_doubles_and_an_issuance_resets_it(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path)
    write_events(ledger, {"at": ago(minutes=4), "kind": "failed", "names": [NAMES[0]]})
    refusal = ledger.refusal(NAMES) or ""
    assert "backing off" in refusal and "retry after" in refusal
    write_events(ledger, {"at": ago(minutes=6), "kind": "failed", "names": [NAMES[0]]})
    assert ledger.refusal(NAMES) is None  # 5 minutes after one failure
    write_events(
        ledger,
        {"at": ago(minutes=40), "kind": "failed", "names": [NAMES[0]]},
        {"at": ago(minutes=8), "kind": "failed", "names": [NAMES[0]]},
    )
    assert "2 time(s) in a row" in (ledger.refusal(NAMES) or "")  # 10 minutes after two
    write_events(
        ledger,
        {"at": ago(minutes=9), "kind": "failed", "names": [NAMES[0]]},
        {"at": ago(minutes=8), "kind": "issued", "names": list(NAMES)},
    )
    assert ledger.refusal(NAMES) is None


def test_five_failed_validations_per_name_per_hour(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path)
    failed = [{"at": ago(minutes=50 - i), "kind": "failed", "names": [NAMES[1]]} for i in range(5)]
    write_events(ledger, *failed)
    assert "5 failed validations for www.a.example.com" in (ledger.refusal(NAMES) or "")


def test_weekly_and_order_limits_and_the_renewal_exemption(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path)
    other = [
        {
            "at": ago(days=1),
            "kind": "issued",
            "names": [f"s{i}.example.com"],
            "registered": "example.com",
        }
        for i in range(acme_ledger.CERTS_PER_REGISTERED_DOMAIN_PER_WEEK)
    ]
    write_events(ledger, *other)
    assert "certificates for example.com" in (ledger.refusal(NAMES) or "")
    assert ledger.refusal(NAMES, renewal=True) is None  # boulder#7508: renewals are exempt
    dupes = [{"at": ago(days=2), "kind": "issued", "names": list(NAMES)} for _ in range(5)]
    write_events(ledger, *dupes)
    assert "certificates for exactly" in (ledger.refusal(NAMES, renewal=True) or "")
    orders = [
        {"at": ago(hours=2), "kind": "order", "names": ["x"], "account": "acct"}
        for _ in range(acme_ledger.ORDERS_PER_ACCOUNT_PER_3_HOURS)
    ]
    write_events(ledger, *orders)
    assert "orders by this ACME account" in (ledger.refusal(NAMES, "acct") or "")
    assert ledger.refusal(NAMES, "acct", renewal=True) is None


def test_alert_threshold_is_14_days_or_a_quarter_of_short_lifetimes() -> None:
    assert alert_threshold(dt.timedelta(days=90)) == dt.timedelta(days=14)
    assert alert_threshold(dt.timedelta(days=45)) == dt.timedelta(days=11.25)
    assert alert_threshold(dt.timedelta(hours=160)) == dt.timedelta(hours=40)


def _cert() -> x509.Certificate:
    _, fullchain, _ = mostly_used_certificate(["a.example.com"])
    return x509.load_pem_x509_certificate(fullchain.encode())


def test_lifetime_window_is_the_last_third() -> None:
    cert = _cert()
    window = ari.lifetime_window(cert)
    assert window.end == cert.not_valid_after_utc
    assert window.start == cert.not_valid_after_utc - dt.timedelta(days=30)


def test_replaces_goes_into_the_new_order_payload() -> None:
    cert = _cert()
    names = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.example.com")]
    payload = ReplacingOrder(identifiers=names, replaces=ari_cert_id(cert)).to_partial_json()
    assert payload["replaces"] == ari_cert_id(cert)
    assert "replaces" not in ReplacingOrder(identifiers=names).to_partial_json()


class _Ari(BaseHTTPRequestHandler):
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Ari.asked.append(self.path)
        body = json.dumps(
            {"suggestedWindow": {"start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z"}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "3600")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def ari_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ari)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/renewal-info"
    finally:
        server.shutdown()


def test_ari_window_is_kept_until_retry_after(
    tmp_path: Path, ari_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(state_dir=tmp_path / "state", acme_directory="https://ca.invalid/dir")
    monkeypatch.setitem(
        ari._DIRECTORIES, (settings.acme_directory, "None"), {"renewalInfo": ari_server}
    )
    cert = _cert()
    _Ari.asked.clear()
    first = ari.ari_window(settings, cert)
    assert first is not None and first.source == "ari"
    assert first.start == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert ari.ari_window(settings, cert) == first
    assert _Ari.asked == [f"/renewal-info/{ari_cert_id(cert)}"]  # asked once: Retry-After 1 h
    kept = json.loads((tmp_path / "state" / "certs" / "ari.json").read_text())
    assert kept[ari_cert_id(cert)]["ask_after"] > dt.datetime.now(dt.UTC).isoformat()
