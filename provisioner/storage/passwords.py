"""Password hash checks for the hashes AEIMS holds: PHP's `$2y$` bcrypt, `$2b$`, `$argon2id$`."""

from __future__ import annotations

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_ARGON2 = PasswordHasher()


def verify_password(password: str, stored_hash: str | None) -> bool:
    """True when `password` matches `stored_hash`; False for any unknown or malformed hash."""
    if not stored_hash or not isinstance(stored_hash, str) or not isinstance(password, str):
        return False
    if stored_hash.startswith(("$2y$", "$2a$", "$2b$")):
        # PHP's $2y$ is the same algorithm as $2b$; the bcrypt package knows only the latter.
        normalized = "$2b$" + stored_hash[4:]
        try:
            return bcrypt.checkpw(password.encode("utf-8"), normalized.encode("ascii"))
        except ValueError:
            return False
    if stored_hash.startswith("$argon2"):
        try:
            return _ARGON2.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False
    return False


def hash_password(password: str, rounds: int = 12) -> str:
    """A new `$2y$` hash, the form the PHP application writes and reads."""
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")
    return "$2y$" + hashed[4:]
