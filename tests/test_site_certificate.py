"""The certificate step against the real stack: pebble validating real HTTP-01 through nginx
(and DNS-01 through challtestsrv), CAA read from challtestsrv's DNS, the ledger, rollback."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.site import acme_client, caa
from provisioner.site.acme_ledger import Ledger, registered_domain
from provisioner.site.cert_store import CertStore
from provisioner.site.certificate import CertificateStep
from tests.contract.harness import tree
from tests.site_tls_support import (
    clear_caa,
    run_ctx,
    set_caa,
    tls_settings,
    unique_spec,
)

pytestmark = pytest.mark.usefixtures("stack_env")


def certs_tree(root: Path) -> dict[str, object]:
    """What a rollback must restore: the live and archive folders (the account and the
    ledger are kept on purpose)."""
    return {k: v for k, v in tree(root).items() if k.startswith(("certs/live", "certs/archive"))}


def ledger_kinds(settings) -> list[str]:
    return [e["kind"] for e in Ledger.at(settings.cert_dir).events()]


def test_issue_rerun_rollback(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    spec = unique_spec()
    step = CertificateStep(spec, settings, vhost=False)
    ctx = run_ctx(settings)
    assert step.preflight(ctx) == []
    change = step.check(ctx)
    assert change is not None and "no certificate yet" in change.summary
    assert "profile classic" in change.summary
    change = step.keep_before(ctx, change)
    json.dumps(change.as_json())  # journal-able, and no key in it
    assert "PRIVATE KEY" not in json.dumps(change.as_json())

    undo = step.apply(ctx)
    assert "PRIVATE KEY" not in json.dumps(undo)
    live = CertStore(settings.cert_dir, spec.domain).current()
    assert live is not None and live.covers(spec.names) and live.key_matches
    assert "Pebble" in live.issuer_cn
    privkey = settings.cert_dir / "live" / spec.domain / "privkey.pem"
    assert privkey.is_symlink() and stat.S_IMODE(privkey.stat().st_mode) == 0o600
    for name in ("cert", "chain", "fullchain", "privkey"):
        assert (settings.cert_dir / "archive" / spec.domain / f"{name}1.pem").is_file()
    assert step.outcome(True).startswith("certificate issued by Pebble")
    assert "(not due)" in step.outcome(False)
    assert ledger_kinds(settings) == ["order", "issued"]

    # A re-run: not due, nothing changes (not even a network round trip in preflight).
    issued = certs_tree(tmp_path)
    assert step.check(ctx) is None
    assert step.apply(ctx) == {"before": None}
    assert certs_tree(tmp_path) == issued

    step.rollback(run_ctx(settings), undo)
    assert certs_tree(tmp_path) == {}
    step.rollback(run_ctx(settings), undo)
    assert certs_tree(tmp_path) == {}


def test_account_key_made_once_and_kept_0600(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    for _ in range(2):
        step = CertificateStep(unique_spec(), settings, vhost=False)
        step.apply(run_ctx(settings))
    folders = list((settings.cert_dir / "accounts").iterdir())
    assert len(folders) == 1
    key = folders[0] / "private_key.json"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(folders[0].stat().st_mode) == 0o700
    assert json.loads((folders[0] / "regr.json").read_text())["uri"].startswith("https://")


def test_rollback_restores_a_previous_certificate(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    first = unique_spec()
    CertificateStep(first, settings, vhost=False).apply(run_ctx(settings, "run-0"))
    before = certs_tree(tmp_path)
    old = CertStore(settings.cert_dir, first.domain).current()

    # The site gains a name: the kept certificate no longer covers it, so it is due.
    grown = unique_spec(f"shop.{first.domain}", domain=first.domain)
    step = CertificateStep(grown, settings, vhost=False)
    ctx = run_ctx(settings, "run-1")
    change = step.check(ctx)
    assert change is not None and f"lacks shop.{first.domain}" in change.summary
    change = step.keep_before(ctx, change)
    undo = step.apply(ctx)
    new = CertStore(settings.cert_dir, first.domain).current()
    assert new is not None and old is not None and new.serial != old.serial
    assert (settings.cert_dir / "archive" / first.domain / "cert2.pem").exists()

    step.rollback(run_ctx(settings, "run-1"), undo)
    assert certs_tree(tmp_path) == before
    # The same from the journaled Change alone (a run killed inside apply).
    step.apply(run_ctx(settings, "run-2"))
    step.rollback(run_ctx(settings, "run-1"), step.undo_from_change(change))
    assert certs_tree(tmp_path) == before


def test_caa_forbidding_the_ca_fails_before_any_order(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path, PROVISION_ACME_CAA_IDENTITIES="pebble.test")
    spec = unique_spec()
    set_caa(spec.domain, "other-ca.example")
    try:
        step = CertificateStep(spec, settings, vhost=False)
        problems = step.preflight(run_ctx(settings))
        assert len(problems) == 2  # the domain and www (CAA found at the parent)
        assert f"CAA at {spec.domain} allows only other-ca.example" in problems[0]
        with pytest.raises(acme_client.AcmeError, match="no order was sent"):
            step.apply(run_ctx(settings))
        assert ledger_kinds(settings) == []
        assert certs_tree(tmp_path) == {}
        # Naming the CA opens issuance again.
        set_caa(spec.domain, "pebble.test")
        assert step.preflight(run_ctx(settings)) == []
    finally:
        clear_caa(spec.domain)


def test_caa_rules() -> None:
    rec = caa.CaaRecord
    ok = ("letsencrypt.org",)
    verdict = caa.caa_verdict
    assert verdict("a.com", "", [], ok, None, "http-01") is None
    assert (
        verdict("a.com", "a.com", [rec(0, "iodef", "mailto:x@a.com")], ok, None, "http-01") is None
    )
    assert (
        verdict("a.com", "a.com", [rec(0, "issue", "LetsEncrypt.org")], ok, None, "http-01") is None
    )
    assert verdict("a.com", "a.com", [rec(0, "issue", ";")], ok, None, "http-01")
    assert verdict("a.com", "a.com", [rec(128, "tbs", "x")], ok, None, "http-01")
    limited = [rec(0, "issue", "letsencrypt.org; validationmethods=dns-01")]
    assert verdict("a.com", "a.com", limited, ok, None, "http-01")
    assert verdict("a.com", "a.com", limited, ok, None, "dns-01") is None
    bound = [rec(0, "issue", "letsencrypt.org; accounturi=https://ca/acct/1")]
    assert verdict("a.com", "a.com", bound, ok, "https://ca/acct/2", "http-01")
    assert verdict("a.com", "a.com", bound, ok, "https://ca/acct/1", "http-01") is None


def test_self_probe_failing_stops_before_any_order(tmp_path: Path) -> None:
    unserved = tmp_path / "unserved-webroot"
    unserved.mkdir()
    settings = tls_settings(tmp_path, PROVISION_ACME_WEBROOT=str(unserved))
    step = CertificateStep(unique_spec(), settings, vhost=False)
    with pytest.raises(acme_client.AcmeError, match=r"self-probe .* nginx answered 404"):
        step.apply(run_ctx(settings))
    assert ledger_kinds(settings) == []
    assert certs_tree(tmp_path) == {}
    assert not [p for p in unserved.rglob("*") if p.is_file()], "the probe token was left"


def test_failed_validation_is_recorded_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The self-probe passes, but the answer the CA fetches is wrong: pebble fails it."""
    settings = tls_settings(tmp_path)
    step = CertificateStep(unique_spec(), settings, vhost=False)
    ctx = run_ctx(settings)
    change = step.keep_before(ctx, step.check(ctx))
    original = acme_client.Http01Webroot.present

    def wrong_answer(self, name, chall, key) -> None:  # type: ignore[no-untyped-def]
        original(self, name, chall, key)
        self.written[-1].write_text("not the key authorization")

    monkeypatch.setattr(acme_client.Http01Webroot, "present", wrong_answer)
    with pytest.raises(acme_client.ValidationFailed, match="could not validate"):
        step.apply(ctx)
    assert ledger_kinds(settings) == ["order", "failed"]
    step.rollback(run_ctx(settings), step.undo_from_change(change))
    assert certs_tree(tmp_path) == {}


def test_ledger_stops_before_the_failed_validation_limit(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    spec = unique_spec()
    ledger = Ledger.at(settings.cert_dir)
    for _ in range(5):
        ledger.record("failed", [f"www.{spec.domain}"])
    step = CertificateStep(spec, settings, vhost=False)
    [problem] = step.preflight(run_ctx(settings))
    assert f"5 failed validations for www.{spec.domain} in the last hour" in problem
    with pytest.raises(acme_client.AcmeError, match="no order was sent"):
        step.apply(run_ctx(settings))
    assert ledger_kinds(settings) == ["failed"] * 5


def test_ledger_weekly_limits(tmp_path: Path) -> None:
    ledger = Ledger.at(tmp_path)
    names = ("a.example.co.uk", "www.a.example.co.uk")
    assert registered_domain(names[0]) == "example.co.uk"
    for _ in range(5):
        ledger.record("issued", list(names), registered="example.co.uk")
    assert "certificates for exactly" in (ledger.refusal(names) or "")
    assert ledger.refusal(("b.example.co.uk",)) is None


def test_dns01_through_challtestsrv(tmp_path: Path) -> None:
    unserved = tmp_path / "unserved-webroot"
    unserved.mkdir()  # HTTP-01 could not succeed: only DNS-01 can
    settings = tls_settings(
        tmp_path, PROVISION_ACME_CHALLENGE="dns-01", PROVISION_ACME_WEBROOT=str(unserved)
    )
    spec = unique_spec()
    step = CertificateStep(spec, settings, vhost=False)
    assert step.preflight(run_ctx(settings)) == []
    assert "dns-01" in step.check(run_ctx(settings)).summary
    step.apply(run_ctx(settings))
    assert CertStore(settings.cert_dir, spec.domain).current().covers(spec.names)
    res = caa.resolver(settings)
    assert caa.txt_values(res, f"_acme-challenge.{spec.domain}") == set(), "TXT left behind"


# ------------------------------------------------------------------------- when is it due


def _cert(path: Path, lifetime: dt.timedelta, left: dt.timedelta, names: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + left - lifetime)
        .not_valid_after(now + left)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / "privkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.parametrize(
    ("lifetime_days", "left_days", "due"),
    [
        (90, 31, False),
        (90, 29, True),  # under a third of 90 days
        (6.67, 3, False),  # a 160-hour certificate with 3 days left: a 30-day rule renews it
        (6.67, 2, True),
        (90, -1, True),  # expired
    ],
)
def test_due_at_a_third_of_the_lifetime(
    tmp_path: Path, lifetime_days: float, left_days: float, due: bool
) -> None:
    settings = tls_settings(tmp_path)
    spec = unique_spec()
    live = settings.cert_dir / "live" / spec.domain
    _cert(live, dt.timedelta(days=lifetime_days), dt.timedelta(days=left_days), list(spec.names))
    step = CertificateStep(spec, settings, vhost=False)
    assert (step.check(run_ctx(settings)) is not None) is due


def test_profile_named_only_where_offered() -> None:
    plain = messages.Directory.from_json({"newOrder": "x", "meta": {}})
    assert acme_client.requested_profile(plain, "classic") is None
    offered = messages.Directory.from_json(
        {"meta": {"profiles": {"classic": "90 days", "shortlived": "160 hours"}}}
    )
    assert acme_client.requested_profile(offered, "shortlived") == "shortlived"
    with pytest.raises(acme_client.AcmeError, match="offers the profiles classic, shortlived"):
        acme_client.requested_profile(offered, "tlsserver")


def test_ari_certificate_id_matches_rfc_9773() -> None:
    """RFC 9773 §4.1's example: AKI 69:88:5B:..:D4 and serial 0x87654321."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.example")])
    now = dt.datetime.now(dt.UTC)
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x87654321)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert acme_client.ari_cert_id(cert) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
