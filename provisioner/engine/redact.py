"""Masks secrets in anything that is about to be journaled, logged or printed."""

from __future__ import annotations

import re
from typing import Any

from provisioner.config import redact_dsn

MASK = "***"
# Keys whose values are secrets whatever they look like.
_SECRET_KEYS = re.compile(
    r"^(password_plaintext_for_testing|plaintext_password|new_password|token|api_token|"
    r"access_token|secret|secret_key|api_key|aws_secret_access_key|billing_token)$",
    re.IGNORECASE,
)
# A `password` field is kept only when it holds a hash (AEIMS's accounts.json stores bcrypt
# hashes under that name, and a rollback must be able to restore them).
_HASH = re.compile(r"^\$(2[aby]|argon2(id|i|d))\$")


def _is_secret(key: str, value: Any) -> bool:
    if _SECRET_KEYS.match(key):
        return True
    if key.lower() in {"password", "pass", "passwd", "pin"}:
        return not (isinstance(value, str) and _HASH.match(value)) and value is not None
    return False


def redact(value: Any) -> Any:
    """A copy of `value` with secret fields masked and DSN passwords hidden."""
    if isinstance(value, dict):
        return {k: (MASK if _is_secret(str(k), v) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and "password" in value.lower():
        return redact_dsn(value)
    return value
