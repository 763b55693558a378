"""The renewal drill, on the real stack: `provision site create`, then `certs status` and
`certs renew` in real processes against pebble 2.10, nginx and challtestsrv.

The site's certificate comes from pebble's `shortlived` profile; pebble's management API then
sets its ARI answer to a window that has already ended, as Let's Encrypt does when it wants
a certificate replaced early. The renewal is the real one: due by ARI, ordered with `replaces`
(RFC 9773), which pebble checks and links to the old certificate, validated over HTTP-01
through nginx, and served. A foreign certificate (another CA's) has its `replaces` refused by
pebble, and the order is sent again without it.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from acme import errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.config import Settings, load_settings
from provisioner.devstack.pebble import SHORTLIVED_SECONDS
from provisioner.site import acme_client as acme
from provisioner.site.acme_client import ari_cert_id
from provisioner.site.acme_ledger import Ledger
from provisioner.site.cert_store import CertStore
from provisioner.site.nginx_control import Nginx, VhostFiles
from provisioner.site.renewal import serve_stored, served_certificate
from tests.contract.harness import tree
from tests.test_site_create import create_args, provision
from tests.test_site_create import env as env

pytestmark = pytest.mark.usefixtures("stack_env")


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def mostly_used_certificate(names: list[str]) -> tuple[bytes, str, bytes]:
    """(leaf key PEM, fullchain PEM, CA root PEM): a 90-day certificate with 10 days left,
    from a test CA, with the Authority Key Identifier ARI ids are made of."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("renewal drill test CA"))
        .issuer_name(_name("renewal drill test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=80))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ca_pem = ca.public_bytes(pem)
    return key_pem, (leaf.public_bytes(pem) + ca_pem).decode(), ca_pem


def certs(env: dict[str, str], *args: str) -> tuple[int, Any]:
    """`provision certs ARGS --json`: (rc, JSON)."""
    done = provision(env, "certs", *args, "--json")
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def pebble_management(env: dict[str, str], path: str, body: dict[str, str]) -> None:
    """A POST to pebble's management API (its listener verified with the stack's CA)."""
    folder = Path(env["PROVISION_DEV_STATE"]) / "pebble"
    config = json.loads((folder / "pebble-config.json").read_text())
    address = config["pebble"]["managementListenAddress"]
    tls = ssl.create_default_context(cafile=str(folder / "tls-ca.pem"))
    answer = httpx.post(
        f"https://{address}{path}", json=body, verify=tls, trust_env=False, timeout=10
    )
    assert answer.status_code == 200, answer.text


def end_renewal_window(env: dict[str, str], cert_pem: str) -> None:
    """pebble's ARI answer for this certificate becomes a window that ended an hour ago."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    window = {
        "suggestedWindow": {
            "start": (now - dt.timedelta(hours=2)).isoformat().replace("+00:00", "Z"),
            "end": (now - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        }
    }
    pebble_management(
        env, "/set-renewal-info/", {"certificate": cert_pem, "ariResponse": json.dumps(window)}
    )


def order_of(settings: Settings, url: str) -> dict[str, Any]:
    """The order object as pebble keeps it, read with the site's ACME account."""
    session = acme.open_session(settings, acme.fetch_directory(settings))
    return dict(session.acme._post_as_get(url).json())


def challtestsrv(env: dict[str, str], path: str, body: dict[str, object]) -> None:
    httpx.post(
        f"{env['PROVISION_CHALLTESTSRV_URL']}{path}", json=body, timeout=5
    ).raise_for_status()


def live_files(cert_dir: Path, domain: str) -> dict[str, Any]:
    return {
        k: v
        for k, v in tree(cert_dir).items()
        if k.startswith((f"live/{domain}", f"archive/{domain}"))
    }


@pytest.fixture
def private_certs(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """The stack with a private cert_dir (and so a private ledger: the shared one counts every
    test's *.aeims.test certificate against the 50 per registered domain per week). The
    site's vhost, which names files in it, is removed afterwards, and nginx reloaded: a vhost
    whose certificate vanishes with pytest's temp folder would stop every later reload."""
    private = {**env, "PROVISION_CERT_DIR": str(tmp_path / "certs")}
    private["DRILL_DOMAIN"] = domain = f"r{uuid.uuid4().hex[:10]}.aeims.test"
    yield private
    settings = load_settings(env=private, config_file=tmp_path / "absent.toml")
    files = VhostFiles.for_domain(domain, settings)
    for path in (files.vhost, files.enabled):
        if path is not None and (path.exists() or path.is_symlink()):
            path.unlink()
    Nginx(settings).reload()


def test_renewal_drill(private_certs: dict[str, str], tmp_path: Path) -> None:
    env = {**private_certs, "PROVISION_ACME_PROFILE": "shortlived"}
    domain = env["DRILL_DOMAIN"]
    names = [domain, f"www.{domain}"]
    created = provision(env, *create_args(domain))
    assert created.returncode == 0, created.stdout + created.stderr
    settings = load_settings(env=env, config_file=tmp_path / "absent.toml")
    store = CertStore(settings.cert_dir, domain)
    old = store.current()
    assert old is not None and "Pebble" in old.issuer_cn
    assert old.not_after - old.not_before <= dt.timedelta(seconds=SHORTLIVED_SECONDS)

    # The CA wants it replaced: its ARI window ended an hour ago.
    end_renewal_window(env, old.cert.public_bytes(serialization.Encoding.PEM).decode())
    rc, before = certs(env, "status", "--site", domain)
    assert rc == 1, before
    [site] = before["sites"]
    assert site["window"]["source"] == "ari" and site["due"] is True, site["window"]
    assert site["window"]["ask_after"] > dt.datetime.now(dt.UTC).isoformat()  # Retry-After
    assert site["served"]["serial"] == f"{old.serial:x}" and site["served"]["verified"]
    assert any("renewal window (ARI) ended" in p for p in site["problems"]), site["problems"]
    assert any("never run" in p for p in before["problems"])

    # The renewal (now with the classic profile): due by ARI, ordered with `replaces`, which
    # pebble accepts and links to the old certificate, then served by nginx.
    renew_env = {**env, "PROVISION_ACME_PROFILE": "classic"}
    rc, renewed = certs(renew_env, "renew", "--site", domain)
    assert rc == 0, renewed
    [done] = renewed["sites"]
    assert done["outcome"] == "renewed" and "inside the CA's renewal window" in done["msg"], done
    new = store.current()
    assert new is not None and new.serial != old.serial and "Pebble" in new.issuer_cn
    assert new.not_after - new.not_before > dt.timedelta(days=60)  # classic: 90 days
    assert served_certificate(settings, domain).serial == f"{new.serial:x}"

    rc, after = certs(renew_env, "status", "--site", domain)
    assert rc == 0, after["problems"]
    attempt = after["sites"][0]["last_attempt"]
    assert attempt["outcome"] == "renewed" and attempt["replaces_outcome"] == "accepted"
    assert attempt["profile"] == "classic" and after["sites"][0]["window"]["source"] == "ari"
    assert order_of(settings, attempt["order"])["replaces"] == ari_cert_id(old.cert)
    # pebble linked the two: the old certificate cannot be replaced a second time.
    session = acme.open_session(settings, acme.fetch_directory(settings))
    csr = acme.acme_crypto.make_csr(acme.new_key_pem(), names)
    with pytest.raises(errors.ConflictError):
        acme.new_order(session.acme, csr, None, ari_cert_id(old.cert))

    # The replaced certificate put back live (a restore from an old backup): pebble answers
    # the renewal's `replaces` with 409, and the order goes again without it.
    first = min(store.generations())
    store.write(
        (store.archive / f"privkey{first}.pem").read_bytes(),
        (store.archive / f"fullchain{first}.pem").read_text(),
    )
    serve_stored(settings, domain, f"{old.serial:x}")
    rc, again = certs(renew_env, "renew", "--site", domain, "--force")
    assert rc == 0 and again["sites"][0]["outcome"] == "renewed", again
    rc, after = certs(renew_env, "status", "--site", domain)
    assert rc == 0, after["problems"]
    attempt = after["sites"][0]["last_attempt"]
    assert attempt["replaces_outcome"].startswith("refused: 409"), attempt
    assert "replaces" not in order_of(settings, attempt["order"])
    new = store.current()
    assert new is not None and new.serial != old.serial
    assert served_certificate(settings, domain).serial == f"{new.serial:x}"

    # A renewal that fails validation (the names resolve where nginx does not listen; the
    # self-probe through 127.0.0.1 still passes): the old certificate stays, and is served.
    ledger = Ledger.at(settings.cert_dir)
    kept = live_files(settings.cert_dir, domain)
    for name in names:
        challtestsrv(env, "/add-a", {"host": f"{name}.", "addresses": ["127.0.0.2"]})
    try:
        rc, failed = certs(renew_env, "renew", "--site", domain, "--force")
        assert rc == 1, failed
        assert failed["sites"][0]["outcome"] == "failed"
        assert "could not validate" in failed["sites"][0]["msg"]
        assert live_files(settings.cert_dir, domain) == kept
        assert served_certificate(settings, domain).serial == f"{new.serial:x}"
        mine = [e for e in ledger.events() if domain in e.get("names", [])]
        assert [e["kind"] for e in mine][-2:] == ["order", "failed"]

        rc, alert = certs(renew_env, "status", "--site", domain)
        assert rc == 1
        assert any("last renewal failed" in p for p in alert["sites"][0]["problems"])

        # It keeps failing: the ledger stops the next order before it is sent.
        rc, stopped = certs(renew_env, "renew", "--site", domain, "--force")
        assert rc == 1
        message = stopped["sites"][0]["msg"]
        assert "backing off" in message and "retry after" in message and "no order" in message
        assert len([e for e in ledger.events() if domain in e.get("names", [])]) == len(mine)
    finally:
        for name in names:
            challtestsrv(env, "/clear-a", {"host": f"{name}."})
    assert served_certificate(settings, domain).serial == f"{new.serial:x}"


def test_replaces_refused_is_sent_again_without(
    private_certs: dict[str, str], tmp_path: Path
) -> None:
    """Another CA's certificate: pebble refuses `replaces` (no issuer it knows), and the same
    order goes again without it; the record says so."""
    env = private_certs
    domain = env["DRILL_DOMAIN"]
    names = [domain, f"www.{domain}"]
    created = provision(env, *create_args(domain))
    assert created.returncode == 0, created.stdout + created.stderr

    # Time passes: the live certificate is another CA's 90-day one with 10 days left.
    key_pem, fullchain, ca_pem = mostly_used_certificate(names)
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(Path(env["PROVISION_ACME_ISSUER_ROOT"]).read_bytes() + ca_pem)
    env = {**env, "PROVISION_ACME_ISSUER_ROOT": str(bundle)}
    settings = load_settings(env=env, config_file=tmp_path / "absent.toml")
    store = CertStore(settings.cert_dir, domain)
    store.write(key_pem, fullchain)
    old = store.current()
    assert old is not None
    serve_stored(settings, domain, f"{old.serial:x}")

    rc, before = certs(env, "status", "--site", domain)
    assert rc == 1, before
    [site] = before["sites"]
    assert site["window"]["source"] == "lifetime"  # pebble has no ARI for another CA's
    assert any("expires in 10.0 days" in p for p in site["problems"]), site["problems"]

    rc, renewed = certs(env, "renew", "--site", domain)
    assert rc == 0, renewed
    assert renewed["sites"][0]["outcome"] == "renewed", renewed
    new = store.current()
    assert new is not None and "Pebble" in new.issuer_cn
    assert served_certificate(settings, domain).serial == f"{new.serial:x}"
    rc, after = certs(env, "status", "--site", domain)
    assert rc == 0, after["problems"]
    attempt = after["sites"][0]["last_attempt"]
    assert attempt["replaces_outcome"].startswith("refused: malformed"), attempt
    assert "replaces" not in order_of(settings, attempt["order"])
