"""The renewal drill, on the real stack: `provision site create`, then `certs status` and
`certs renew` in real processes against pebble, nginx and challtestsrv.

pebble 2.4 (the stack's) offers neither profiles nor ARI and issues 5-year certificates, so a
certificate is made due the way time would make it: the live folder gets a new generation
whose lifetime is mostly used (90 days, 10 left), signed by a test CA the status check trusts
beside pebble's root (PROVISION_ACME_ISSUER_ROOT is a bundle of both). The renewal decision is
then the real one (a third of the lifetime left), and the order carries `replaces` with that
certificate's ARI id: pebble 2.4 ignores the field, so the test reads it from the JWS payload
on the wire (tests/jws_capture.py).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.config import load_settings
from provisioner.site.acme_client import ari_cert_id
from provisioner.site.acme_ledger import Ledger
from provisioner.site.cert_store import CertStore
from provisioner.site.nginx_control import Nginx, VhostFiles
from provisioner.site.renewal import serve_stored, served_certificate
from tests.contract.harness import tree
from tests.test_site_create import REPO, create_args, provision
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


def certs(env: dict[str, str], *args: str, capture: Path | None = None) -> tuple[int, Any]:
    """`provision certs ARGS --json` (through the JWS capture when `capture`): (rc, JSON)."""
    argv = ["certs", *args, "--json"]
    if capture is None:
        done = provision(env, *argv)
    else:
        done = subprocess.run(
            [sys.executable, "-m", "tests.jws_capture", *argv],
            env={**env, "JWS_CAPTURE": str(capture)},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


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
    env = private_certs
    domain = env["DRILL_DOMAIN"]
    names = [domain, f"www.{domain}"]
    created = provision(env, *create_args(domain))
    assert created.returncode == 0, created.stdout + created.stderr

    # Time passes: the live certificate is a 90-day one with 10 days left, and nginx serves it.
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
    assert site["certificate"]["days_left"] < 14 and site["due"] is True
    assert site["window"]["source"] == "lifetime"  # pebble 2.4 offers no ARI
    assert site["served"]["serial"] == f"{old.serial:x}" and site["served"]["verified"]
    assert any("expires in 10.0 days" in p for p in site["problems"]), site["problems"]
    assert any("never run" in p for p in before["problems"])

    # The renewal: due by the lifetime rule, ordered with `replaces`, served by nginx.
    capture = tmp_path / "jws.jsonl"
    rc, renewed = certs(env, "renew", "--site", domain, capture=capture)
    assert rc == 0, renewed
    [done] = renewed["sites"]
    assert done["outcome"] == "renewed", done
    orders = [
        json.loads(line)["payload"]
        for line in capture.read_text().splitlines()
        if "identifiers" in (json.loads(line)["payload"] or {})
    ]
    assert [o.get("replaces") for o in orders] == [ari_cert_id(old.cert)]
    new = store.current()
    assert new is not None and new.serial != old.serial and "Pebble" in new.issuer_cn
    assert served_certificate(settings, domain).serial == f"{new.serial:x}"

    rc, after = certs(env, "status", "--site", domain)
    assert rc == 0, after["problems"]
    assert after["sites"][0]["last_attempt"]["outcome"] == "renewed"

    # A renewal that fails validation (the names resolve where nginx does not listen; the
    # self-probe through 127.0.0.1 still passes): the old certificate stays, and is served.
    ledger = Ledger.at(settings.cert_dir)
    kept = live_files(settings.cert_dir, domain)
    for name in names:
        challtestsrv(env, "/add-a", {"host": f"{name}.", "addresses": ["127.0.0.2"]})
    try:
        rc, failed = certs(env, "renew", "--site", domain, "--force")
        assert rc == 1, failed
        assert failed["sites"][0]["outcome"] == "failed"
        assert "could not validate" in failed["sites"][0]["msg"]
        assert live_files(settings.cert_dir, domain) == kept
        assert served_certificate(settings, domain).serial == f"{new.serial:x}"
        mine = [e for e in ledger.events() if domain in e.get("names", [])]
        assert [e["kind"] for e in mine][-2:] == ["order", "failed"]

        rc, alert = certs(env, "status", "--site", domain)
        assert rc == 1
        assert any("last renewal failed" in p for p in alert["sites"][0]["problems"])

        # It keeps failing: the ledger stops the next order before it is sent.
        rc, stopped = certs(env, "renew", "--site", domain, "--force")
        assert rc == 1
        message = stopped["sites"][0]["msg"]
        assert "backing off" in message and "retry after" in message and "no order" in message
        assert len([e for e in ledger.events() if domain in e.get("names", [])]) == len(mine)
    finally:
        for name in names:
            challtestsrv(env, "/clear-a", {"host": f"{name}."})
    assert served_certificate(settings, domain).serial == f"{new.serial:x}"
