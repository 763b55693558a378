"""Settings: `PROVISION_*` environment variables over an optional `provision.toml`.

Environment wins over the file so an operator (or Ansible) can override one value for one run.
Secrets (the DSN's password, tokens) come only from the environment or from files named by it;
`Settings.redacted()` is the only form that may be printed.

Every value is checked when loaded (type, finite range, path kind, connection-string syntax), so
a command with a bad setting stops before its first step with one line naming the setting; a
message never quotes a connection string, since the parser's own messages carry its password.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from provisioner.redact import redact_dsn

ENV_PREFIX = "PROVISION_"
REPO_ROOT = Path(__file__).resolve().parent.parent
JOURNAL_CHOICES = ("auto", "files", "postgres")
CONNINFO_DOCS = "https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING"

__all__ = [
    "ENV_PREFIX",
    "JOURNAL_CHOICES",
    "REPO_ROOT",
    "SECONDS_BOUNDS",
    "ConfigError",
    "Settings",
    "check_seconds",
    "load_settings",
    "redact_dsn",
]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _default_state_dir() -> Path:
    """A checkout keeps its state in its git-ignored var/; an installed tool in /var/lib."""
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "var"
    return Path("/var/lib/provision")


@dataclass(frozen=True)
class Settings:
    """Everything the tool reads from its environment, typed and validated once."""

    state_dir: Path = field(default_factory=_default_state_dir)
    # AEIMS application root holding data/*.json and agents/data/operators.json.
    data_dir: Path | None = None
    # PostgreSQL connection string; None means JSON only (and a local journal and locks).
    pg_dsn: str | None = None
    # How long a run waits for another run on the same target before giving up (seconds).
    lock_timeout: float = 30.0
    # Connect timeout for PostgreSQL in the data layer's request path (seconds).
    pg_connect_timeout: float = 1.0
    # Longest a data-layer statement may run; a write stuck behind a lock ends in the outbox
    # instead of holding up every writer of its entity.
    pg_statement_timeout: float = 5.0
    # While the circuit breaker is open, one request per window may try PostgreSQL again.
    breaker_retry_seconds: float = 5.0
    # In dual_write_read_json, the fraction of the layer's reads also made on PostgreSQL in
    # the background and compared (shadow reads, migration/shadow.py); 0 turns them off.
    shadow_read_fraction: float = 0.01
    # The plan's emergency flags: None when unset, so the persisted phase decides.
    use_database: bool | None = None
    use_json: bool | None = None
    # Longest one database statement of a step may run (a step stuck behind a row lock also
    # gives up after the run's lock timeout).
    step_statement_timeout: float = 120.0
    # Where runs are journaled and locked: "auto" (PostgreSQL when pg_dsn is set, else files),
    # "files" (always local: a migration must roll back while its database is down), "postgres".
    journal: str = "auto"
    # This web host's name in host-scoped locks and runs (default: the machine's hostname).
    host_name: str = ""
    # Extra modules that register pipelines (for operators' own steps, and the tests).
    pipeline_modules: tuple[str, ...] = ()

    # ---- sites (production defaults; `provision dev env` points them at the local stack)
    # Where each site's folder is rendered: <sites_root>/<domain>/.
    sites_root: Path = Path("/var/www/aeims/sites")
    # nginx: vhosts are written to the first folder and linked from the second.
    nginx_vhost_dir: Path = Path("/etc/nginx/sites-available")
    nginx_enabled_dir: Path = Path("/etc/nginx/sites-enabled")
    # The nginx command line (split like a shell would, never run through one).
    nginx_cmd: str = "nginx"
    nginx_http_port: int = 80
    nginx_https_port: int = 443
    # Addresses the vhosts listen on (empty: every IPv4 and IPv6 address). nginx matches a
    # vhost only against servers on the same address, so it must be the default server's.
    nginx_listen: tuple[str, ...] = ()
    # PHP pages are handed to php-fpm only when its socket is set; otherwise never served.
    php_fpm_socket: Path | None = None
    # ACME: the CA's directory, the CA bundle its own TLS is verified with (None: the system's),
    # the webroot nginx serves /.well-known/acme-challenge/ from, and where certificates live.
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: Path | None = None
    acme_webroot: Path = Path("/var/www/acme")
    acme_profile: str = "classic"
    acme_email: str = ""
    acme_challenge: str = "http-01"
    cert_dir: Path = Path("/etc/letsencrypt")
    # The roots a site's HTTPS answer is verified against (None: the system's trust store).
    acme_issuer_root: Path | None = None
    # DNS-01 in the local stack: pebble asks challtestsrv, which plays the DNS provider.
    challtestsrv_url: str | None = None
    # The DNS server CAA (and DNS-01 TXT) records are read from: "IP" or "IP:port"; empty
    # means the system's resolver. The local stack points it at challtestsrv.
    dns_resolver: str = ""
    # The CA's CAA identities (RFC 8659 issuer domain names); empty means the ones the ACME
    # directory advertises in meta.caaIdentities (Let's Encrypt: letsencrypt.org).
    acme_caa_identities: tuple[str, ...] = ()
    # DNS: "route53" or "none" (skipped); the AWS endpoint is set only for a local Route53.
    dns_provider: str = "none"
    aws_endpoint: str | None = None
    public_ipv4: str | None = None
    public_ipv6: str | None = None
    # The billing system (docs/billing-api.md); its token comes only from the environment.
    billing_url: str | None = None
    # Kept out of repr: a Settings shown in a traceback or a test failure must not leak it.
    billing_token: str | None = field(default=None, repr=False)
    # How long a new site may take to answer over HTTPS before its health check fails.
    health_timeout: float = 60.0

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / "journal"

    @property
    def lock_dir(self) -> Path:
        return self.state_dir / "locks"

    def redacted(self) -> dict[str, Any]:
        """The settings as printable values, with every secret masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "pg_dsn" and value:
                value = redact_dsn(value)
            if f.name in SECRET_SETTINGS and value:
                value = "***"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


# (lowest, highest, whether 0 itself is allowed): a NaN or an infinite wait never ends, and a
# zero connect or statement timeout means "no timeout" to PostgreSQL.
SECONDS_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "lock_timeout": (0.0, 86_400.0, True),
    "pg_connect_timeout": (0.0, 300.0, False),
    "pg_statement_timeout": (0.0, 3_600.0, False),
    "breaker_retry_seconds": (0.0, 3_600.0, False),
    "step_statement_timeout": (0.0, 86_400.0, False),
    "health_timeout": (0.0, 3_600.0, False),
}
# Settings that are secrets: accepted from the environment only, never printed.
SECRET_SETTINGS = frozenset({"billing_token"})
CHOICES: dict[str, tuple[str, ...]] = {
    "acme_challenge": ("http-01", "dns-01"),
    "dns_provider": ("route53", "none"),
}
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _shown(value: Any) -> str:
    """A value as it may appear in a one-line message: quoted, escaped, and cut short."""
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= 60 else text[:57] + "...'"


def _kind(value: Any) -> str:
    """What a TOML value is, in the words a message uses."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _text(label: str, raw: Any, wanted: str = "a string") -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"{label} must be {wanted}, not {_kind(raw)}; fix its value")
    if "\x00" in raw:
        raise ConfigError(f"{label} holds a NUL character; remove it")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{label} is not valid UTF-8 text; set it again as text") from None
    return raw


def check_seconds(name: str, raw: Any, label: str | None = None) -> float:
    """A duration setting (or option) as a finite number within its bounds."""
    label = label or ENV_PREFIX + name.upper()
    low, high, zero_ok = SECONDS_BOUNDS[name]
    example = f"; use a number such as {getattr(Settings, name):g}"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{label} must be a number of seconds, not {_kind(raw)}{example}")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{label}={_shown(raw)} is not a number of seconds{example}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{label}={_shown(raw)} is not a finite number of seconds{example}")
    if value < low or (value == low and not zero_ok) or value > high:
        lowest = "from 0" if zero_ok else "more than 0"
        raise ConfigError(
            f"{label}={_shown(raw)} is out of range: use {lowest} up to {high:g} seconds"
        )
    return value


def _parse_fraction(label: str, raw: Any) -> float:
    """A share from 0 to 1 (NaN, infinities and anything outside are refused)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(f"{label} must be a number from 0 to 1, not {_kind(raw)}")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{label}={_shown(raw)} is not a number; use one from 0 to 1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"{label}={_shown(raw)} is out of range: use a number from 0 to 1 (e.g. 0.01)"
        )
    return value


def _parse_bool(label: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    lowered = _text(label, raw, "true or false").strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{label}={_shown(raw)} is not a boolean; use true or false")


def _parse_path(label: str, raw: Any) -> Path:
    text = _text(label, raw, "a path (a string)")
    if not text.strip():
        raise ConfigError(f"{label} is empty; set it to a folder or leave it unset")
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # ~user that does not exist, or no HOME
        reason = str(exc).rstrip(".")
        raise ConfigError(f"{label}={_shown(raw)}: {reason}; use an absolute path") from None


def _check_folder(label: str, path: Path, writable: bool) -> None:
    """A folder, or a path one could create as a folder; nothing is created here."""
    probe = path
    while True:
        try:
            is_dir = probe.is_dir()
            exists = is_dir or probe.exists()
        except OSError as exc:
            raise ConfigError(
                f"{label}={_shown(str(path))}: cannot inspect {probe} ({exc.strerror or exc}); "
                "point it at a folder this user can reach"
            ) from None
        if exists and not is_dir:
            where = "is" if probe == path else f"cannot be created: {probe} is"
            raise ConfigError(
                f"{label}={_shown(str(path))} {where} a file, not a folder; point it at a folder"
            )
        if exists:
            break
        parent = probe.parent if probe.is_absolute() else (Path.cwd() / probe).parent
        if parent == probe:
            break
        probe = parent
    if writable and not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created in {probe}"
        raise ConfigError(
            f"{label}={_shown(str(path))} {what} by this user; "
            "point it at a folder this user can write, or fix its permissions"
        )


def _parse_journal(label: str, raw: Any) -> str:
    value = _text(label, raw).strip().lower()
    if value not in JOURNAL_CHOICES:
        raise ConfigError(
            f"{label}={_shown(raw)} is not known; use one of {', '.join(JOURNAL_CHOICES)}"
        )
    return value


def _parse_host_name(label: str, raw: Any) -> str:
    value = _text(label, raw).strip()
    if value and not _HOST_NAME.match(value):
        raise ConfigError(
            f"{label}={_shown(raw)} is not a host name; use letters, digits, '.', '-' and '_'"
        )
    return value


def _parse_modules(label: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, list):
        items = [_text(label, item, "an array of module names") for item in raw]
    else:
        items = _text(label, raw, "module names").replace(",", " ").split()
    for item in items:
        if not _MODULE.match(item):
            raise ConfigError(
                f"{label}: {_shown(item)} is not a module name; use dotted names like "
                "mypackage.pipelines"
            )
    return tuple(items)


def _dsn_reason(message: str, keywords: list[str]) -> str:
    """What is wrong with a connection string, without any part of its value.

    libpq's messages quote the offending text, which may be the password (`password=a b`
    leaves `b` as a stray word); only an option name that is a near miss of a real one is
    named, since that is a typo and not a secret.
    """
    first = message.strip().splitlines()[0] if message.strip() else ""
    if first.startswith('missing "="'):
        return "a word without '=' (write key=value, and quote a value with spaces: key='a b')"
    if first.startswith("unterminated quoted string"):
        return "a quote that is never closed"
    if first.startswith(("invalid connection option", "invalid URI query parameter")):
        name = first.split('"')[1] if first.count('"') >= 2 else ""
        near = difflib.get_close_matches(name, keywords, n=1, cutoff=0.6)
        if near and re.fullmatch(r"[a-z_]{1,40}", name):
            return f"unknown option {name} (did you mean {near[0]}?)"
        return "an unknown option"
    if first.startswith("invalid percent-encoded token"):
        return "a bad percent-escape (write %XX with two hex digits)"
    if first.startswith("unexpected spaces found"):
        return "a space inside the URL (write it as %20)"
    if "IPv6" in first:
        return "an IPv6 address without its closing ']'"
    return "it does not parse"


def _parse_dsn(label: str, raw: Any) -> tuple[str, dict[str, str]]:
    """The connection string and its options, parsed as libpq will (psycopg is imported only
    when one is set, so commands without a database do not pay for it)."""
    text = _text(label, raw)
    from psycopg import conninfo, pq

    keywords = [d.keyword.decode() for d in pq.Conninfo.get_defaults()]
    try:
        parsed = conninfo.conninfo_to_dict(text)
    except Exception as exc:  # psycopg.ProgrammingError, or anything libpq rejects
        raise ConfigError(
            f"{label} is not a valid connection string: {_dsn_reason(str(exc), keywords)}; "
            f"see {CONNINFO_DOCS}"
        ) from None
    for key in ("port", "connect_timeout"):
        value = str(parsed.get(key, "0"))
        if not all(part.strip().isdigit() for part in value.split(",")):
            raise ConfigError(
                f"{label} is not a valid connection string: {key} must be a whole number; "
                f"see {CONNINFO_DOCS}"
            )
    return text, {k: str(v) for k, v in parsed.items()}


def _parse_port(label: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ConfigError(f"{label} must be a port number, not {_kind(raw)}")
    text = str(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{label}={_shown(raw)} is not a port; use a number from 1 to 65535")
    return int(text)


def _parse_url(label: str, raw: Any) -> str:
    from urllib.parse import urlsplit

    text = _text(label, raw).strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in {"http", "https"}
        or not parts.hostname
        or any(c.isspace() or ord(c) < 32 for c in text)
    ):
        raise ConfigError(f"{label}={_shown(raw)} is not an http(s) URL; use https://host/path")
    if parts.password:
        raise ConfigError(f"{label} holds a password; pass credentials in their own settings")
    return text


def _parse_ip(version: int) -> Callable[[str, Any], str]:
    def parse(label: str, raw: Any) -> str:
        import ipaddress

        text = _text(label, raw).strip()
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise ConfigError(f"{label}={_shown(raw)} is not an IPv{version} address")
        return str(address)

    return parse


def _parse_addresses(label: str, raw: Any) -> tuple[str, ...]:
    """IP addresses, separated by commas or spaces (they reach nginx's `listen` lines)."""
    import ipaddress

    items = raw if isinstance(raw, list) else _text(label, raw).replace(",", " ").split()
    found = []
    for item in items:
        try:
            found.append(str(ipaddress.ip_address(_text(label, item).strip())))
        except ValueError:
            raise ConfigError(
                f"{label}: {_shown(item)} is not an IP address; use e.g. 127.0.0.1 or ::1"
            ) from None
    return tuple(found)


def _parse_choice(name: str) -> Callable[[str, Any], str]:
    def parse(label: str, raw: Any) -> str:
        value = _text(label, raw).strip().lower()
        if value not in CHOICES[name]:
            raise ConfigError(
                f"{label}={_shown(raw)} is not known; use one of {', '.join(CHOICES[name])}"
            )
        return value

    return parse


def _parse_word(label: str, raw: Any) -> str:
    """A short token that may reach a protocol message (an ACME profile, an email)."""
    value = _text(label, raw).strip()
    if not re.fullmatch(r"[A-Za-z0-9._@+-]{0,254}", value):
        raise ConfigError(f"{label}={_shown(raw)} holds characters it may not; use a-z, 0-9, ._@+-")
    return value


def _parse_profile(label: str, raw: Any) -> str:
    """An ACME profile name (RFC draft-aaron-acme-profiles): a short lower-case token such as
    classic, tlsserver or shortlived; empty asks for none (the CA's default)."""
    value = _text(label, raw).strip()
    if not re.fullmatch(r"([a-z0-9][a-z0-9._-]{0,63})?", value):
        raise ConfigError(
            f"{label}={_shown(raw)} is not an ACME profile name; use a short token of a-z, "
            "0-9, ._- such as classic, tlsserver or shortlived (empty: the CA's default)"
        )
    return value


def _parse_command(label: str, raw: Any) -> str:
    import shlex

    text = _text(label, raw).strip()
    try:
        argv = shlex.split(text)
    except ValueError:
        argv = []
    if not argv:
        raise ConfigError(f"{label}={_shown(raw)} is not a command line; use e.g. /usr/sbin/nginx")
    return text


def _parse_secret(label: str, raw: Any) -> str:
    value = _text(label, raw)
    if not value.strip() or any(ord(c) < 32 for c in value):
        raise ConfigError(f"{label} is empty or holds control characters; set it again")
    return value


def _parse_resolver(label: str, raw: Any) -> str:
    """A DNS server as IP or IP:port ([v6]:port for IPv6); empty means the system's."""
    import ipaddress

    text = _text(label, raw).strip()
    if not text:
        return ""
    host, _, port = text.rpartition(":") if text.count(":") == 1 or "]" in text else (text, "", "")
    host = host.strip("[]") if host else text
    try:
        ipaddress.ip_address(host)
        ok = not port or (port.isdigit() and 1 <= int(port) <= 65535)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{label}={_shown(raw)} is not a DNS server; use e.g. 127.0.0.1:53")
    return text


def _parse_domain_names(label: str, raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else _text(label, raw).replace(",", " ").split()
    names = tuple(_text(label, item).strip().lower() for item in items)
    for name in names:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", name):
            raise ConfigError(
                f"{label}: {_shown(name)} is not a domain name; use e.g. letsencrypt.org"
            )
    return names


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "state_dir": _parse_path,
    "data_dir": _parse_path,
    "pg_dsn": lambda label, raw: _parse_dsn(label, raw)[0],
    "use_database": _parse_bool,
    "use_json": _parse_bool,
    "journal": _parse_journal,
    "host_name": _parse_host_name,
    "pipeline_modules": _parse_modules,
    "sites_root": _parse_path,
    "nginx_vhost_dir": _parse_path,
    "nginx_enabled_dir": _parse_path,
    "nginx_cmd": _parse_command,
    "nginx_http_port": _parse_port,
    "nginx_https_port": _parse_port,
    "nginx_listen": _parse_addresses,
    "php_fpm_socket": _parse_path,
    "acme_directory": _parse_url,
    "acme_ca_bundle": _parse_path,
    "acme_webroot": _parse_path,
    "acme_profile": _parse_profile,
    "acme_email": _parse_word,
    "acme_challenge": _parse_choice("acme_challenge"),
    "cert_dir": _parse_path,
    "acme_issuer_root": _parse_path,
    "challtestsrv_url": _parse_url,
    "dns_resolver": _parse_resolver,
    "acme_caa_identities": _parse_domain_names,
    "dns_provider": _parse_choice("dns_provider"),
    "aws_endpoint": _parse_url,
    "public_ipv4": _parse_ip(4),
    "public_ipv6": _parse_ip(6),
    "billing_url": _parse_url,
    "billing_token": _parse_secret,
    "shadow_read_fraction": _parse_fraction,
    **{
        name: (lambda n: lambda label, raw: check_seconds(n, raw, label))(name)
        for name in SECONDS_BOUNDS
    },
}


def _read_toml(path: Path) -> dict[str, tuple[str, Any]]:
    """The file's settings, parsed and labelled, or a ConfigError naming what is wrong.

    The whole file is checked, values the environment overrides included: a broken file is
    reported before it bites on the day the override is removed.
    """
    fix = "fix the file, or point PROVISION_CONFIG at another one"
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a settings file; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; {fix}") from None
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ConfigError(f"{path}: not valid TOML ({reason}); {fix}") from None
    unknown = sorted(_shown(k) for k in set(data) - set(_PARSERS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_PARSERS))}"
        )
    values: dict[str, tuple[str, Any]] = {}
    for name, raw in data.items():
        label = f"{path}: {name}"
        if name in SECRET_SETTINGS:
            raise ConfigError(
                f"{path}: {name} is a secret; keep it out of files: set "
                f"{ENV_PREFIX}{name.upper()} in the environment"
            )
        if name == "pg_dsn":
            text, parsed = _parse_dsn(label, raw)
            if parsed.get("password") or parsed.get("sslpassword"):
                raise ConfigError(
                    f"{path}: pg_dsn holds a password; keep secrets out of files: set "
                    "PROVISION_PG_DSN in the environment or use a ~/.pgpass file"
                )
            values[name] = (label, text)
        else:
            values[name] = (label, _PARSERS[name](label, raw))
    return values


def _config_path(env: dict[str, str], config_file: Path | None) -> Path | None:
    """The settings file to read: one named explicitly must exist; ./provision.toml may not."""
    if config_file is not None:
        return config_file if config_file.exists() else None
    named = env.get(f"{ENV_PREFIX}CONFIG", "")
    if named:
        path = Path(_text(f"{ENV_PREFIX}CONFIG", named)).expanduser()
        if not path.exists():
            raise ConfigError(
                f"{ENV_PREFIX}CONFIG={_shown(named)} does not exist; create it, fix the path, "
                "or unset PROVISION_CONFIG"
            )
        return path
    default = Path("provision.toml")
    return default if default.exists() else None


def load_settings(env: dict[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Build Settings from provision.toml (if any) and then the environment, all checked.

    `config_file` stands in for ./provision.toml (it may be missing); PROVISION_CONFIG must name
    a file that exists.
    """
    env = dict(os.environ if env is None else env)
    toml_path = _config_path(env, config_file)
    values = _read_toml(toml_path) if toml_path is not None else {}
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if env.get(key, "") != "":
            values[f.name] = (key, _PARSERS[f.name](key, env[key]))
    # The plan's flags keep their historical names.
    for flag in ("USE_DATABASE", "USE_JSON"):
        if env.get(flag, "") != "":
            values[flag.lower()] = (flag, _parse_bool(flag, env[flag]))
    return _checked(values)


def _checked(values: dict[str, tuple[str, Any]]) -> Settings:
    """Settings from parsed values, once what spans several values or the disk holds."""
    settings = replace(Settings(), **{name: value for name, (_, value) in values.items()})
    label = {name: label for name, (label, _) in values.items()}
    _check_folder(label.get("state_dir", f"{ENV_PREFIX}STATE_DIR"), settings.state_dir, True)
    if settings.data_dir is not None:
        _check_folder(label["data_dir"], settings.data_dir, False)
    if settings.journal == "postgres" and not settings.pg_dsn:
        raise ConfigError(
            f"{label['journal']}=postgres needs PROVISION_PG_DSN; set it, or use "
            "PROVISION_JOURNAL=files"
        )
    return settings
