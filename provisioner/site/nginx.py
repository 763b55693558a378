"""The nginx step: a site's vhost from templates/nginx/, enabled, tested, reloaded, proven live.

The vhost serves ACME challenges over HTTP in every state; once certbot's files exist for the
site (`<cert_dir>/live/<domain>/`) it redirects the rest to HTTPS and serves the site there,
so the certificate step only has to call `install_vhost` again after issuance (or the nginx
step's `check` finds that the certificate now exists and the vhost lacks TLS). The site's
state (`coming_soon` until `site enable`, `live`, `maintenance`) is a template variable,
written into the vhost, and kept by a later run that does not name another.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from provisioner.config import Settings
from provisioner.engine.step import Change, RunContext, Scope, Step, Undo, unified_diff
from provisioner.site.nginx_control import (
    Nginx,
    NginxError,
    VhostFiles,
    converge,
    file_content,
    marker_of,
    restore,
)
from provisioner.site.spec import SiteSpec
from provisioner.site.templates import templates_root

TEMPLATE = "nginx/vhost.conf.j2"
# LDH host names, lowercase (IDN already in punycode): what `server_name` may hold.
_HOST = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    re.ASCII,
)
# An absolute path that can sit between double quotes in nginx's config: no quote or
# backslash (ends the string), `$` (a variable), braces or `;` (a block or a directive).
_CONF_PATH = re.compile(r'^/[^"\\${};\x00-\x1f\x7f]*$')
_STATE_LINE = re.compile(r"^# provision-state: ([a-z_]+)$", re.MULTILINE)


class VhostState(StrEnum):
    """What the vhost serves: the coming-soon page, the site, or the maintenance page."""

    COMING_SOON = "coming_soon"
    LIVE = "live"
    MAINTENANCE = "maintenance"


class VhostValueError(ValueError):
    """A value is not fit for nginx's config (validation should have stopped it earlier)."""


def host_name(value: str) -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise VhostValueError(f"{value!r} is not a lowercase LDH host name; nginx gets none")
    return value


def conf_path(label: str, path: Path) -> str:
    """`path` as it may sit between double quotes in nginx's config (the template quotes it),
    or VhostValueError naming the setting."""
    text = str(path)
    if not _CONF_PATH.match(text):
        raise VhostValueError(
            f"{label}={text!r} cannot go into an nginx config: use an absolute path without "
            'quotes, backslashes, "$", braces, ";" or control characters'
        )
    return text


def certificate_files(domain: str, settings: Settings) -> tuple[Path, Path]:
    """certbot's layout: the chain and the key of the site's live certificate."""
    live = settings.cert_dir / "live" / domain
    return live / "fullchain.pem", live / "privkey.pem"


def has_certificate(domain: str, settings: Settings) -> bool:
    return all(path.is_file() for path in certificate_files(domain, settings))


def _listen(settings: Settings, port: int) -> list[str]:
    """`listen` arguments: each configured address, or every IPv4 and IPv6 one."""
    if not settings.nginx_listen:
        return [str(port), f"[::]:{port}"]
    lines = []
    for text in settings.nginx_listen:
        address = ipaddress.ip_address(text)  # parsed again: nothing else reaches the file
        lines.append(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")
    return lines


def _port(label: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise VhostValueError(f"{label}={value!r} is not a port")
    return value


def vhost_values(
    spec: SiteSpec, settings: Settings, state: VhostState, tls: bool
) -> dict[str, Any]:
    """Every value the template sees, each checked here: nothing else reaches the vhost (the
    site's display name never does)."""
    domain = host_name(spec.domain)
    https_port = _port("nginx_https_port", settings.nginx_https_port)
    fullchain, privkey = certificate_files(domain, settings)
    return {
        "domain": domain,
        "server_names": [host_name(name) for name in spec.names],
        "listen_http": _listen(settings, _port("nginx_http_port", settings.nginx_http_port)),
        "listen_https": _listen(settings, https_port),
        "https_port_suffix": "" if https_port == 443 else f":{https_port}",
        "docroot": conf_path("sites_root", settings.sites_root / domain),
        "acme_webroot": conf_path("acme_webroot", settings.acme_webroot),
        "php_fpm_socket": (
            conf_path("php_fpm_socket", settings.php_fpm_socket)
            if settings.php_fpm_socket is not None
            else None
        ),
        "state": VhostState(state).value,
        "tls": bool(tls),
        "certificate": conf_path("cert_dir", fullchain),
        "certificate_key": conf_path("cert_dir", privkey),
    }


@lru_cache(maxsize=4)
def _environment(root: Path) -> Environment:
    # No autoescape: this is not HTML; every value is checked by vhost_values instead.
    return Environment(
        loader=FileSystemLoader(root),
        undefined=StrictUndefined,
        autoescape=False,  # noqa: S701
        keep_trailing_newline=True,
    )


def render_vhost(spec: SiteSpec, settings: Settings, state: VhostState, tls: bool) -> str:
    """The vhost text; its marker is a digest of the text rendered without one."""
    template = _environment(templates_root()).get_template(TEMPLATE)
    values = vhost_values(spec, settings, state, tls)
    draft = template.render(**values, marker="")
    marker = hashlib.sha256(draft.encode("utf-8")).hexdigest()[:16]
    return template.render(**values, marker=marker)


def state_of(content: str | None) -> VhostState | None:
    """The state a vhost of ours was rendered with (None: absent, or not ours)."""
    found = _STATE_LINE.search(content or "")
    try:
        return VhostState(found.group(1)) if found else None
    except ValueError:
        return None


def wanted_vhost(
    spec: SiteSpec, settings: Settings, state: VhostState | None = None
) -> tuple[VhostFiles, str, VhostState, bool]:
    """The files, the text they should hold, its state (`state`, else the one the vhost on
    disk has, else coming soon) and whether it has TLS (a certificate exists)."""
    files = VhostFiles.for_domain(host_name(spec.domain), settings)
    if state is None:
        current = files.read()["vhost"]
        state = state_of(file_content(current)) or VhostState.COMING_SOON
    tls = has_certificate(spec.domain, settings)
    return files, render_vhost(spec, settings, state, tls), state, tls


def install_vhost(
    spec: SiteSpec, settings: Settings, state: VhostState | None = None
) -> dict[str, Any]:
    """Render, write, test, reload, prove live; the undo record (what the files held before).

    The certificate step calls this after issuance (TLS is on once the files exist), and
    `restore_vhost(spec, settings, undo)` to undo it.
    """
    files, content, _, _ = wanted_vhost(spec, settings, state)
    mode = _keep_mode(files)
    return {"before": converge(Nginx(settings), spec.domain, files, files.wanted(content, mode))}


def restore_vhost(spec: SiteSpec, settings: Settings, undo: dict[str, Any]) -> None:
    """Put back what `install_vhost` replaced (a vhost that existed is restored, one it made is
    removed), test, reload and confirm."""
    before = undo.get("before")
    if before:
        files = VhostFiles.for_domain(host_name(spec.domain), settings)
        restore(Nginx(settings), spec.domain, files, before)


def _keep_mode(files: VhostFiles) -> int:
    """A vhost that exists keeps its mode (an operator's 0640 stays 0640)."""
    try:
        return files.vhost.stat().st_mode & 0o7777 if files.vhost.is_file() else 0o644
    except OSError:
        return 0o644


_STATE_WORDS = {
    VhostState.COMING_SOON: "coming soon",
    VhostState.LIVE: "live",
    VhostState.MAINTENANCE: "maintenance",
}


class NginxStep(Step):
    """`<nginx_vhost_dir>/<domain>.conf`, linked from `<nginx_enabled_dir>`, live in nginx."""

    name = "nginx"
    label = "Nginx"
    scope = Scope.HOST

    def __init__(self, spec: SiteSpec, settings: Settings, state: VhostState | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.state = state

    def preflight(self, ctx: RunContext) -> list[str]:
        problems: list[str] = []
        nginx = Nginx(self.settings)
        program = nginx.argv()[0]
        if shutil.which(program) is None and not os.access(program, os.X_OK):
            return [f"nginx: {program} not found; install nginx or set PROVISION_NGINX_CMD"]
        for label, folder in (
            ("PROVISION_NGINX_VHOST_DIR", self.settings.nginx_vhost_dir),
            ("PROVISION_NGINX_ENABLED_DIR", self.settings.nginx_enabled_dir),
        ):
            if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
                problems.append(
                    f"nginx: {label}={folder} is not a folder this user can write; create it "
                    "or point the setting at nginx's vhost folder"
                )
        try:
            vhost_values(self.spec, self.settings, VhostState.COMING_SOON, False)
        except VhostValueError as exc:
            problems.append(f"nginx: {exc}")
        if problems:
            return problems
        try:
            rejected = nginx.test_in_turn()
        except NginxError as exc:
            return [f"nginx: {exc}"]
        if rejected is not None:
            return [f"nginx: its config is already broken before this run ({rejected}); fix it"]
        answer = nginx.probe(self.spec.domain)
        if answer.status is None:
            problems.append(
                f"nginx: nothing answers at {nginx.url()} ({answer.text}); start nginx, or set "
                "PROVISION_NGINX_HTTP_PORT and PROVISION_NGINX_LISTEN to where it listens"
            )
        return problems

    def check(self, ctx: RunContext) -> Change | None:
        files, content, state, tls = wanted_vhost(self.spec, self.settings, self.state)
        before = files.read()
        wanted = files.wanted(content, _keep_mode(files))
        marker = marker_of(content)
        after = {"vhost": str(files.vhost), "state": str(state), "tls": tls, "marker": marker}
        diff = unified_diff(file_content(before["vhost"]), content, str(files.vhost))
        if before == wanted:
            answer = Nginx(self.settings).probe(self.spec.domain)
            if answer.marker == marker:
                return None
            summary = (
                f"{files.vhost} is written but nginx does not serve it yet (it answers "
                f"{answer.describe()}): test and reload"
            )
            return Change(summary, before=before, after=after, diff=None)
        kind = "HTTPS" if tls else "HTTP only"
        if before["vhost"]["kind"] == "absent":
            how = f"created ({_STATE_WORDS[state]}, {kind})"
        else:
            had_tls = "ssl_certificate " in (file_content(before["vhost"]) or "")
            how = f"updated ({_STATE_WORDS[state]}, {kind}{', TLS added' * (tls and not had_tls)})"
        link = f", linked from {files.enabled}" if files.enabled is not None else ""
        summary = f"{files.vhost} {how}{link}; nginx tested and reloaded"
        return Change(summary, before=before, after=after, diff=diff)

    def apply(self, ctx: RunContext) -> Undo:
        return install_vhost(self.spec, self.settings, self.state)

    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        restore_vhost(self.spec, self.settings, undo)


__all__ = [
    "NginxError",
    "NginxStep",
    "VhostState",
    "VhostValueError",
    "install_vhost",
    "render_vhost",
    "restore_vhost",
    "vhost_values",
]
