"""THE login rule, one copy for the JSON files and PostgreSQL: how a login names a record.

customers: username, then email; operators: id (exact), then username, then email; accounts:
the login (the record key), then email. Usernames, emails and logins compare after
`normalize_login`; ids after `normalize_login_id`. `LOGIN_SQL` and `LOGIN_ID_SQL` are the same
rules in SQL, and the schema indexes exactly those expressions (pg/schema/0001_core.sql).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from provisioner.storage.jsonvalues import ASCII_WHITESPACE

_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# The rules in SQL, `{}` standing for the column.
LOGIN_SQL: Final = "lower(btrim({}, E' \\t\\n\\r\\x0b\\x0c') COLLATE \"C\")"
LOGIN_ID_SQL: Final = "btrim({}, E' \\t\\n\\r\\x0b\\x0c')"

# In `LoginFields.fields`: the record's key (accounts are keyed by their login).
RECORD_KEY: Final = "#key"


@dataclass(frozen=True)
class LoginFields:
    """Where one entity's logins are, on both sides, in rule order."""

    fields: tuple[str, ...]  # record fields compared by normalize_login (RECORD_KEY: the key)
    columns: tuple[str, ...]  # the same fields as PostgreSQL columns
    id_field: str | None = None  # compared first, by normalize_login_id
    id_column: str | None = None


LOGINS: Final[dict[str, LoginFields]] = {
    "customers": LoginFields(("username", "email"), ("username", "email")),
    "operators": LoginFields(
        ("username", "email"), ("username", "email"), id_field="id", id_column="operator_id"
    ),
    "accounts": LoginFields((RECORD_KEY, "email"), ("login", "email")),
}


def _trimmed(login: Any) -> str | None:
    """Ints (operator usernames 0, 1, 2) as their decimal string, text as it is, trimmed of
    ASCII whitespace; booleans, null and other types are no login."""
    if login is None or isinstance(login, bool):
        return None
    if isinstance(login, int):
        return str(login)
    if not isinstance(login, str):
        return None
    return login.strip(ASCII_WHITESPACE)


def normalize_login(login: Any) -> str | None:
    """A username, email or login as find_by_login compares it; None matches nothing.

    Trimmed, then ASCII letters are lowercased and nothing else is (LOGIN_SQL); an empty
    result matches nothing.
    """
    text = _trimmed(login)
    return text.translate(_ASCII_LOWER) if text else None


def normalize_login_id(login: Any) -> str | None:
    """An id as find_by_login compares it: trimmed of ASCII whitespace, case-sensitive."""
    return _trimmed(login) or None
