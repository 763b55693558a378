"""The nginx step's test helpers: settings for the stack's real nginx, site folders, a
hand-written vhost, a self-signed certificate, and what nginx answers for a Host."""

from __future__ import annotations

import datetime
import http.client
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from provisioner.config import Settings, load_settings
from provisioner.site.nginx_control import Nginx, VhostFiles, read_path, restore
from provisioner.site.spec import SiteSpec, SiteType


@lru_cache(maxsize=1)
def stack_environment() -> dict[str, str]:
    """The real local stack's settings (started if needed; `up` only re-checks a running one)."""
    from provisioner.devstack.stack import DevStack

    return dict(DevStack.default().up())


def stack_settings(**overrides: Any) -> Settings:
    """Settings pointing at the stack's nginx. The state folder stays the checkout's (var/), so
    the reload lock is the one every run on this host takes."""
    env = stack_environment()
    certs = Path(env["PROVISION_DEV_STATE"]) / "nginx-test-certs"
    settings = load_settings(env={**env, "PROVISION_CERT_DIR": str(certs)})
    return replace(settings, **overrides)


def site(domain: str, name: str = "Test Site") -> SiteSpec:
    return SiteSpec(domain, name, SiteType.CUSTOMER, "default")


def site_folder(settings: Settings, spec: SiteSpec, files: dict[str, str] | None = None) -> Path:
    """The site's folder with its coming-soon page (the files step's job in a real run);
    world-readable, since nginx's workers run as nobody."""
    folder = settings.sites_root / spec.domain
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.chmod(0o755)
    pages = {"coming-soon.html": f"<h1>{spec.name}</h1><p>Coming soon</p>\n", **(files or {})}
    for rel, text in pages.items():
        path = folder / rel
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
    return folder


def hand_written_vhost(settings: Settings, domain: str, body: str = "hand-written") -> str:
    """A vhost an operator wrote (no marker of ours), answering `body` on every path."""
    address = settings.nginx_listen[0] if settings.nginx_listen else "127.0.0.1"
    return (
        f"# written by hand for {domain}\n"
        f"server {{\n    listen {address}:{settings.nginx_http_port};\n"
        f"    server_name {domain} www.{domain};\n"
        f'    location / {{ default_type text/plain; return 200 "{body}\\n"; }}\n}}\n'
    )


def install_hand_written(
    settings: Settings, domain: str, *, mode: int = 0o640, enabled: str = "link"
) -> dict[str, dict[str, Any]]:
    """Put a hand-written vhost in place (its link a symlink, a copied file, or none), live."""
    files = VhostFiles.for_domain(domain, settings)
    content = hand_written_vhost(settings, domain)
    states: dict[str, dict[str, Any]] = {
        "vhost": {"kind": "file", "content": content, "mode": mode}
    }
    if files.enabled is not None:
        states["enabled"] = {
            "link": {"kind": "link", "target": str(files.vhost)},
            "file": {"kind": "file", "content": content, "mode": 0o644},
            "absent": {"kind": "absent"},
        }[enabled]
    restore(Nginx(settings), domain, files, states)
    return states


def remove_vhost(settings: Settings, domain: str) -> None:
    """No vhost for `domain`, and nginx running without it."""
    files = VhostFiles.for_domain(domain, settings)
    absent = {"kind": "absent"}
    restore(Nginx(settings), domain, files, {"vhost": absent, "enabled": absent})


def vhost_paths(settings: Settings, domain: str) -> dict[str, Any]:
    files = VhostFiles.for_domain(domain, settings)
    return {
        "vhost": read_path(files.vhost),
        "enabled": read_path(files.enabled) if files.enabled else None,
        "torn": sorted(
            p.name
            for folder in {files.vhost.parent, *([files.enabled.parent] if files.enabled else [])}
            if folder.is_dir()
            for p in folder.glob(f".{domain}.conf.*")
        ),
    }


def get(settings: Settings, domain: str, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    """Plain HTTP to the stack's nginx with the site's Host: status, headers, body."""
    address = settings.nginx_listen[0] if settings.nginx_listen else "127.0.0.1"
    conn = http.client.HTTPConnection(address, settings.nginx_http_port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": domain, "Connection": "close"})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def self_signed(settings: Settings, domain: str) -> Path:
    """certbot's live layout for `domain` (and www), self-signed: the CA bundle to verify with."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    live = settings.cert_dir / "live" / domain
    live.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain), x509.DNSName(f"www.{domain}")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (live / "fullchain.pem").write_bytes(pem)
    key_path = live / "privkey.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return live / "fullchain.pem"
