"""Masks secrets in anything that is about to be journaled, logged or printed.

The usual secret names and connection-string passwords are masked; an application registers
its own secret field names with `register_secret_keys` before it runs anything. It sits outside
the engine so that the data layer can mask its events without importing the engine.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_secret_keys: set[str] = {
    "password",
    "passwd",
    "pass",
    "pin",
    "new_password",
    "token",
    "api_token",
    "access_token",
    "secret",
    "secret_key",
    "api_key",
    "aws_secret_access_key",
}
# Names under which a value is kept when it is a password *hash* (rollbacks must restore it).
_HASH_TOLERANT = {"password", "passwd", "pass", "pin"}
_HASH = re.compile(r"^\$(2[aby]|argon2(id|i|d))\$")


def register_secret_keys(*names: str) -> None:
    """Treat fields of these names as secrets wherever they appear (case-insensitive)."""
    _secret_keys.update(name.lower() for name in names)


def _is_secret(key: str, value: Any) -> bool:
    lowered = key.lower()
    if lowered not in _secret_keys:
        return False
    if lowered in _HASH_TOLERANT:
        return value is not None and not (isinstance(value, str) and _HASH.match(value))
    return True


# `password=` (also sslpassword=, and a percent-encoded URL query key), then its value: quoted
# with escapes (an unclosed quote runs to the end), or bare; then any stray words up to the
# next libpq keyword, since `password=a b` means the password was "a b" to whoever wrote it.
_PASSWORD_KV = re.compile(
    r"((?:password|[?&][^=&\s]*%[^=&\s]*)\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*(?:'|$)|\S*)"
    r"(?:[ \t]+(?!(?:service|user|password|passfile|channel_binding|connect_timeout|dbname|host"
    r"|hostaddr|port|client_encoding|options|application_name|fallback_application_name"
    r"|keepalives\w*|tcp_user_timeout|ssl\w+|requiressl|requirepeer|require_auth|gss\w+"
    r"|krbsrvname|replication|target_session_attrs|load_balance_hosts|\w*protocol_version"
    r"|scram_\w+|oauth_\w+)\s*=)\S+)*",
    re.IGNORECASE | re.DOTALL,
)
# scheme://[user]:password@host: the password runs to the last `@` (a raw `@`, `/` or `:` in
# it must not cut it short), across spaces only when no `@` comes before the next one.
_PASSWORD_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)(?:\S*@|[^\n]*@)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """Mask the password of a connection string in any form libpq reads, or a message quoting one.

    Masks more than the password rather than less: a value that cannot be parsed is masked
    up to where the next option could start.
    """
    dsn = _PASSWORD_URL.sub(r"\1***@", dsn)
    return _PASSWORD_KV.sub(r"\1***", dsn)


def redact(value: Any) -> Any:
    """A copy of `value` with secret fields masked and connection-string passwords hidden."""
    if isinstance(value, dict):
        return {k: (MASK if _is_secret(str(k), v) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and ("password" in value.lower() or "://" in value):
        return redact_dsn(value)
    return value
