"""The engine's redaction: the one in provisioner/redact.py, which the data layer shares."""

from __future__ import annotations

from provisioner.redact import MASK, redact, redact_dsn, register_secret_keys

__all__ = ["MASK", "redact", "redact_dsn", "register_secret_keys"]
