"""How the validation compares one record of each side, and how it shows a difference safely.

- Records are compared field by field as JSON values, types included (`0` is not `0.0`, `"1"`
  is not `1`), except timestamps, which are compared as instants: `2025-10-12 09:33:57` (naive,
  taken as UTC like the layer does) equals `2025-10-12T09:33:57+00:00`. Placement (where a
  record sits in its file) is not compared: it moves when an earlier record is deleted and is
  only a hint for writing files back.
- Secrets never reach the output: a value under a password/hash/pin/token/secret field, or any
  value shaped like a bcrypt or argon2 hash, is shown as a short fingerprint
  (`sha256:1a2b3c4d5e6f`), so two different hashes still show as different. Plaintext test
  passwords are removed before any comparison.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from provisioner.migration.storage_bridge import (
    PLAINTEXT_PASSWORD_FIELDS,
    json_equal,
    parse_timestamp,
)

ABSENT = "(absent)"
RECORD_FIELD = "(record)"
_SECRET_WORDS = ("password", "passwd", "hash", "token", "secret", "credential")
_SECRET_TOKENS = frozenset({"pin", "pass", "pwd"})
_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")
_HASH_SHAPE = re.compile(r"^\$(2[abxy]|argon2(id|i|d))\$")
_MISSING = object()


@dataclass(frozen=True)
class Mismatch:
    """One difference: `field` is a dotted path, `(record)` for a record one side lacks,
    `memberships.<domain>` for a site membership, `<column> -> <entity>` for an orphan."""

    entity: str
    key: str
    field: str
    json_value: Any
    pg_value: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "key": self.key,
            "field": self.field,
            "json": self.json_value,
            "postgresql": self.pg_value,
        }

    def line(self, width: int = 60) -> str:
        return (
            f"{self.entity} {self.key} {self.field}: JSON {_short(self.json_value, width)}, "
            f"PostgreSQL {_short(self.pg_value, width)}"
        )


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def fingerprint(value: Any) -> str:
    """A short, stable stand-in for a secret value (never the value)."""
    raw = json.dumps(value, ensure_ascii=True, sort_keys=True, default=str).encode("utf-8")
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:12]


def _secret_name(path: str) -> bool:
    last = path.rsplit(".", 1)[-1].lower()
    if any(word in last for word in _SECRET_WORDS):
        return True
    return not _SECRET_TOKENS.isdisjoint(_TOKEN_SPLIT.split(last))


def shown(path: str, value: Any) -> Any:
    """`value` as a mismatch may show it: secrets (by field name or shape) as fingerprints."""
    if value is _MISSING:
        return ABSENT
    if value is None:
        return None
    if _secret_name(path) or _has_hash(value):
        return fingerprint(value)
    return value


def _has_hash(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_HASH_SHAPE.match(value))
    if isinstance(value, dict):
        return any(_has_hash(v) or _secret_name(str(k)) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_hash(v) for v in value)
    return False


def same_instant(a: Any, b: Any) -> bool:
    """Whether two values are timestamps (at least one a string) naming the same instant."""
    if not (isinstance(a, str) or isinstance(b, str)):
        return False
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, str | int):
        return False
    if not isinstance(b, str | int):
        return False
    try:
        return parse_timestamp(a) == parse_timestamp(b)
    except (ValueError, TypeError, OverflowError):
        return False


def field_differences(json_data: Any, pg_data: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, JSON value, PostgreSQL value) for each field that differs; plaintext
    password fields are ignored on both sides, timestamps compared as instants."""
    if type(json_data) is dict and type(pg_data) is dict:
        out: list[tuple[str, Any, Any]] = []
        for name in list(json_data) + [n for n in pg_data if n not in json_data]:
            if name in PLAINTEXT_PASSWORD_FIELDS:
                continue
            child = f"{path}.{name}" if path else str(name)
            a, b = json_data.get(name, _MISSING), pg_data.get(name, _MISSING)
            if a is _MISSING or b is _MISSING:
                out.append((child, a, b))
            else:
                out.extend(field_differences(a, b, child))
        return out
    if json_equal(json_data, pg_data) or same_instant(json_data, pg_data):
        return []
    return [(path or RECORD_FIELD, json_data, pg_data)]


def record_mismatches(entity: str, key: str, json_data: Any, pg_data: Any) -> list[Mismatch]:
    """The field mismatches of one record present on both sides, values shown safely."""
    return [
        Mismatch(entity, key, path, shown(path, a), shown(path, b))
        for path, a, b in field_differences(json_data, pg_data)
    ]


def membership_text(row: tuple[Any, ...] | None) -> Any:
    """A membership row (without owner and domain) as a mismatch shows it."""
    if row is None:
        return ABSENT
    return [v.isoformat() if hasattr(v, "isoformat") else v for v in row[2:]]
