"""The field names that hold secrets in AEIMS records, settings and billing calls.

Importing this module registers them with the shared redaction, so they are masked in the
journal, logs and output whichever part of the tool writes them.
"""

from __future__ import annotations

from provisioner.redact import register_secret_keys

SECRET_KEYS: tuple[str, ...] = (
    "password_plaintext_for_testing",
    "plaintext_password",
    "billing_token",
)

register_secret_keys(*SECRET_KEYS)
