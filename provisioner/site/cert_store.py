"""Certificates on disk, laid out like certbot's: nginx and operators find them where they look.

`<cert_dir>/archive/<domain>/{cert,chain,fullchain,privkey}N.pem` keeps every generation
(privkey 0600), and `<cert_dir>/live/<domain>/*.pem` are relative symlinks to the newest, so a
renewal is a new generation plus four link swaps, and a rollback points the links back.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from provisioner.fsutil import fsync_dir, write_atomically

FILES = ("cert", "chain", "fullchain", "privkey")
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.DOTALL
)


@dataclass(frozen=True)
class LiveCert:
    """The certificate the live folder serves, and what a renewal decision needs of it."""

    cert: x509.Certificate
    pem: bytes
    names: frozenset[str]
    key_matches: bool

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    @property
    def issuer_cn(self) -> str:
        found = self.cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(found[0].value) if found else self.cert.issuer.rfc4514_string()

    def covers(self, names: tuple[str, ...]) -> bool:
        return set(names) <= self.names

    def summary(self) -> dict[str, object]:
        """The journal's view: no key, only what identifies the certificate."""
        return {
            "serial": format(self.serial, "x"),
            "not_after": self.not_after.isoformat(),
            "names": sorted(self.names),
            "issuer": self.issuer_cn,
        }


def dns_names(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(n.lower() for n in san.value.get_values_for_type(x509.DNSName))


def split_chain(fullchain: str) -> tuple[str, str]:
    """The leaf and the rest of a fullchain PEM."""
    blocks = [m.group(0).rstrip("\r\n") + "\n" for m in _PEM_CERT.finditer(fullchain)]
    if not blocks:
        raise ValueError("the CA answered without a PEM certificate")
    return blocks[0], "".join(blocks[1:])


class CertStore:
    """One domain's certificate folders under `cert_dir`."""

    def __init__(self, cert_dir: Path, domain: str) -> None:
        self.cert_dir = cert_dir
        self.domain = domain
        self.live = cert_dir / "live" / domain
        self.archive = cert_dir / "archive" / domain

    def current(self) -> LiveCert | None:
        """The live certificate, or None when there is none (or it cannot be read)."""
        try:
            pem = (self.live / "cert.pem").read_bytes()
            cert = x509.load_pem_x509_certificate(pem)
        except (OSError, ValueError):
            return None
        try:
            key = serialization.load_pem_private_key((self.live / "privkey.pem").read_bytes(), None)
            matches = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) == cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except (OSError, ValueError, TypeError):
            matches = False
        return LiveCert(cert, pem, dns_names(cert), matches)

    def generations(self) -> list[int]:
        """The archived generations, oldest first."""
        if not self.archive.is_dir():
            return []
        found = {
            int(m.group(1))
            for p in self.archive.iterdir()
            if (m := re.fullmatch(r"(?:cert|chain|fullchain|privkey)(\d+)\.pem", p.name))
        }
        return sorted(found)

    def missing_dirs(self) -> list[str]:
        """Folders a write would create, innermost first (a rollback removes them)."""
        missing: list[str] = []
        for folder in (self.live, self.archive):
            probe = folder
            while not probe.exists() and str(probe) not in missing:
                missing.append(str(probe))
                probe = probe.parent
        return sorted(missing, key=lambda p: -p.count("/"))

    def write(self, key_pem: bytes, fullchain: str) -> int:
        """Archive a new generation and point the live links at it; its number."""
        leaf, chain = split_chain(fullchain)
        number = max(self.generations(), default=0) + 1
        self.archive.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.live.mkdir(parents=True, exist_ok=True, mode=0o755)
        contents = {"cert": leaf, "chain": chain, "fullchain": leaf + chain, "privkey": key_pem}
        for name in FILES:
            mode = 0o600 if name == "privkey" else 0o644
            write_atomically(self.archive / f"{name}{number}.pem", contents[name], mode)
        self.point_live_at(number)
        return number

    def point_live_at(self, number: int) -> None:
        """Swap each live link (and any plain file there) for a link to generation `number`."""
        for name in FILES:
            link = self.live / f"{name}.pem"
            tmp = self.live / f".{name}.pem.new"
            tmp.unlink(missing_ok=True)
            os.symlink(f"../../archive/{self.domain}/{name}{number}.pem", tmp)
            os.replace(tmp, link)
        fsync_dir(self.live)

    def remove_generations_after(self, number: int) -> None:
        """Drop archived generations newer than `number` (0: all of them)."""
        for found in self.generations():
            if found > number:
                for name in FILES:
                    (self.archive / f"{name}{found}.pem").unlink(missing_ok=True)

    def remove_torn(self) -> None:
        """Temp files and links a write killed half-way leaves behind."""
        for folder in (self.live, self.archive):
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.name.startswith("."):
                        path.unlink(missing_ok=True)
