"""Let's Encrypt's test CA (pebble) and its DNS helper (pebble-challtestsrv), with real HTTP-01.

pebble 2.10, unpacked from Debian's package into `.tools/pebble-<version>/` by
scripts/bootstrap.sh: it offers ACME profiles and ARI (RFC 9773), and checks an order's
`replaces`. pebble resolves every name through challtestsrv (all -> 127.0.0.1, no IPv6 so it
never dials [::1]) and validates on nginx's HTTP port, where nginx serves the ACME webroot. The
package has no certificate for pebble's own listener, so we make a small CA and a localhost
certificate. pebble makes a new issuing root at every start: it is fetched after each start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.devstack.base import PROBE_TIMEOUT, Component, http_answers, minimal_env
from provisioner.devstack.errors import DevStackError
from provisioner.devstack.process import spawn
from provisioner.fsutil import write_atomically

PEBBLE_ENV = {
    # Without it pebble sleeps 0-15 s before each validation.
    "PEBBLE_VA_NOSLEEP": "1",
    # Accept every nonce and never reuse an authorization: validation is what is tested.
    "PEBBLE_WFE_NONCEREJECT": "0",
    "PEBBLE_AUTHZREUSE": "0",
}
# A listener certificate closer than this to its end is made again.
RENEW_BEFORE = dt.timedelta(days=30)
PEBBLE_VERSION = "2.10.0"
# Where scripts/bootstrap.sh unpacks the package (the repository's .tools/, gitignored).
TOOLS = Path(__file__).resolve().parents[2] / ".tools" / f"pebble-{PEBBLE_VERSION}" / "usr" / "bin"
# Let's Encrypt's profiles (2026), with pebble's lifetimes: `shortlived` is short enough that a
# test certificate is inside its ARI window (the last third) within minutes.
SHORTLIVED_SECONDS = 6 * 3600
PROFILES = {
    "classic": {
        "description": "90-day certificates, as Let's Encrypt's classic",
        "validityPeriod": 7776000,
    },
    "tlsserver": {
        "description": "TLS server certificates, as Let's Encrypt's tlsserver",
        "validityPeriod": 7776000,
    },
    "shortlived": {"description": "short-lived certificates", "validityPeriod": SHORTLIVED_SECONDS},
}


def _find(binary: str) -> str:
    """The binary from .tools/ (pebble 2.10): the system's pebble (bookworm's 2.4) lacks
    profiles and ARI, so it is never picked up from PATH."""
    path = TOOLS / binary
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    raise DevStackError(
        f"{binary} {PEBBLE_VERSION} is not in {TOOLS}; run scripts/bootstrap.sh (make setup)"
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, pem, mode=0o600)


def make_listener_tls(folder: Path) -> None:
    """A 10-year CA and a localhost/127.0.0.1/::1 server certificate it signs (keys 0600)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "provision dev pebble listener CA")]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3649))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    _write_key(folder / "tls-ca.key", ca_key)
    _write_key(folder / "key.pem", key)
    write_atomically(folder / "tls-ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    write_atomically(folder / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))


def listener_tls_is_current(folder: Path) -> bool:
    """True when all four files exist and the server certificate is far from its end."""
    names = ("tls-ca.pem", "tls-ca.key", "cert.pem", "key.pem")
    if not all((folder / name).is_file() for name in names):
        return False
    try:
        cert = x509.load_pem_x509_certificate((folder / "cert.pem").read_bytes())
    except ValueError:
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE


class ChallTestSrv(Component):
    """pebble's DNS: answers every A query with 127.0.0.1 and AAAA with nothing."""

    name = "challtestsrv"
    listen_ports = ("dns", "chall_mgmt")
    config_ports = ("dns", "chall_mgmt")

    def __init__(self, ports: dict[str, int], state_dir: Path) -> None:
        super().__init__(ports)
        self.folder = state_dir / "pebble"
        self.pidfile = self.folder / "challtestsrv.pid"

    @property
    def log(self) -> Path:
        return self.folder / "challtestsrv.log"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['chall_mgmt']}"

    def endpoint(self) -> str:
        return f"{self.management_url} (dns 127.0.0.1:{self.ports['dns']})"

    def patterns(self) -> tuple[str, ...]:
        return ("pebble-challtestsrv", f"127.0.0.1:{self.ports['chall_mgmt']}")

    def argv(self) -> list[str]:
        return [
            _find("pebble-challtestsrv"),
            "-dnsserver",
            f"127.0.0.1:{self.ports['dns']}",
            "-doh",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            f"127.0.0.1:{self.ports['chall_mgmt']}",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]

    def launch(self) -> None:
        spawn(self.argv(), self.pidfile, self.log, env=minimal_env())

    def probe(self) -> bool:
        return http_answers(f"{self.management_url}/")


class Pebble(Component):
    """The ACME directory on `acme`, management (roots) on `acme_mgmt`."""

    name = "pebble"
    listen_ports = ("acme", "acme_mgmt")
    config_ports = ("acme", "acme_mgmt", "http", "https", "dns")

    def __init__(self, ports: dict[str, int], state_dir: Path) -> None:
        super().__init__(ports)
        self.folder = state_dir / "pebble"
        self.config = self.folder / "pebble-config.json"
        self.pidfile = self.folder / "pebble.pid"
        self.ca_bundle = self.folder / "tls-ca.pem"
        self.issuer_root = self.folder / "issuer-root.pem"

    @property
    def log(self) -> Path:
        return self.folder / "pebble.log"

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['acme']}/dir"

    def endpoint(self) -> str:
        return self.directory_url

    def patterns(self) -> tuple[str, ...]:
        return ("pebble", str(self.config))

    def prepare(self) -> None:
        if not listener_tls_is_current(self.folder):
            make_listener_tls(self.folder)
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.ports['acme']}",
                "managementListenAddress": f"127.0.0.1:{self.ports['acme_mgmt']}",
                "certificate": str(self.folder / "cert.pem"),
                "privateKey": str(self.folder / "key.pem"),
                "httpPort": self.ports["http"],
                "tlsPort": self.ports["https"],
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "profiles": PROFILES,
            }
        }
        write_atomically(self.config, json.dumps(config, indent=2) + "\n")

    def launch(self) -> None:
        # The root of the previous run is void the moment a new pebble starts.
        self.issuer_root.unlink(missing_ok=True)
        argv = [
            _find("pebble"),
            "-config",
            str(self.config),
            "-dnsserver",
            f"127.0.0.1:{self.ports['dns']}",
            "-strict=false",
        ]
        spawn(argv, self.pidfile, self.log, env=minimal_env(PEBBLE_ENV))

    def probe(self) -> bool:
        return http_answers(self.directory_url, cafile=self.ca_bundle)

    def after_start(self) -> None:
        self.fetch_issuer_root()

    def fetch_issuer_root(self) -> None:
        """Save the root that signs this pebble run's certificates (verified over TLS)."""
        url = f"https://127.0.0.1:{self.ports['acme_mgmt']}/roots/0"
        verify = ssl.create_default_context(cafile=str(self.ca_bundle))
        try:
            with httpx.Client(verify=verify, timeout=PROBE_TIMEOUT * 5, trust_env=False) as client:
                answer = client.get(url)
                answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise DevStackError(f"cannot fetch pebble's issuing root from {url}: {exc}") from None
        if "BEGIN CERTIFICATE" not in answer.text:
            raise DevStackError(f"{url} did not answer with a PEM certificate; see {self.log}")
        write_atomically(self.issuer_root, answer.text)
