"""Settings: `PROVISION_*` environment variables over an optional `provision.toml`.

Environment wins over the file so an operator (or Ansible) can override one value for one run.
Secrets (the DSN's password, tokens) come only from the environment or from files named by it;
`Settings.redacted()` is the only form that may be printed.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "PROVISION_"
REPO_ROOT = Path(__file__).resolve().parent.parent


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
    # The plan's emergency flags: None when unset, so the persisted phase decides.
    use_database: bool | None = None
    use_json: bool | None = None
    # Extra modules that register pipelines (for operators' own steps, and the tests).
    pipeline_modules: tuple[str, ...] = ()

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
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]+)(@)")


def redact_dsn(dsn: str) -> str:
    """Mask the password in a key=value or URL DSN so it can appear in logs and output."""
    dsn = _PASSWORD_KV.sub(r"\1***", dsn)
    return _PASSWORD_URL.sub(r"\1***\3", dsn)


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _parse_float(name: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or remove it") from None
    if "pg_dsn" in data and "password=" in str(data["pg_dsn"]).lower():
        raise ConfigError(
            f"{path}: pg_dsn holds a password; keep secrets out of files: set PROVISION_PG_DSN "
            "in the environment or use a ~/.pgpass file"
        )
    return data


def load_settings(env: dict[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Build Settings from provision.toml (if any) and then the environment."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    toml_path = config_file or Path(env.get(f"{ENV_PREFIX}CONFIG", "provision.toml"))
    if toml_path.is_file():
        values.update(_read_toml(toml_path))
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in env and env[key] != "":
            values[f.name] = env[key]
    # The plan's flags keep their historical names.
    for flag in ("USE_DATABASE", "USE_JSON"):
        if env.get(flag, "") != "":
            values[flag.lower()] = _parse_bool(flag, env[flag])
    return _coerce(values)


def _coerce(values: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    settings = Settings()
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        env_name = ENV_PREFIX + name.upper()
        if name in {"state_dir", "data_dir"}:
            kwargs[name] = Path(str(raw)).expanduser()
        elif name in {
            "lock_timeout",
            "pg_connect_timeout",
            "pg_statement_timeout",
            "breaker_retry_seconds",
        }:
            kwargs[name] = _parse_float(env_name, raw)
        elif name in {"use_database", "use_json"}:
            kwargs[name] = raw if isinstance(raw, bool) else _parse_bool(name.upper(), str(raw))
        elif name == "pipeline_modules":
            items = raw if isinstance(raw, list) else str(raw).replace(",", " ").split()
            kwargs[name] = tuple(str(i) for i in items)
        else:
            kwargs[name] = str(raw) if raw is not None else None
    return replace(settings, **kwargs)
