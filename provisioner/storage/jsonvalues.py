"""JSON values: private copies, the one type-exact equality, and the id helpers.

Both stores and the migration compare with `json_equal`: `1`, `1.0` and `true` differ, `"0"`
and `0` differ, dict key order does not count, and NaN equals NaN (neither store can hold one,
and a document compared with itself is unchanged).
"""

from __future__ import annotations

import copy
import itertools
import math
import secrets
import time
from typing import Any, Final

# The whitespace ids and logins are trimmed of (PostgreSQL: the btrim set of logins.LOGIN_SQL).
ASCII_WHITESPACE: Final = " \t\n\r\x0b\x0c"


def clone_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists, scalars); several times faster than deepcopy."""
    t = type(value)
    if t is dict:
        return {k: clone_json(v) for k, v in value.items()}
    if t is list:
        return [clone_json(v) for v in value]
    if t in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values that, unlike `==`, tells 1, 1.0 and true apart (and keeps dict
    key order out of it): a record whose `entry_fee` went from `0` to `0.0` has changed."""
    ta, tb = type(a), type(b)
    if ta is dict:
        if tb is not dict or len(a) != len(b):
            return False
        return all(key in b and json_equal(value, b[key]) for key, value in a.items())
    if ta is list:
        if tb is not list or len(a) != len(b):
            return False
        return all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is not tb:
        return False
    if ta is float and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def usable_id(value: object) -> str | None:
    """An id field's value as a record key: ints become their decimal string, a string that is
    not blank is kept as it is; anything else (booleans, null, blanks) is no id."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip(ASCII_WHITESPACE):
        return value
    return None


_PROCESS_TOKEN = secrets.token_hex(4)
_ID_COUNTER = itertools.count()


def new_id(prefix: str) -> str:
    """An AEIMS-style string id (`msg_…`), unique without coordination: the time, a random
    token drawn once per process, and a counter (cheap on the write hot path)."""
    return f"{prefix}_{time.time_ns() // 1_000_000:x}{_PROCESS_TOKEN}{next(_ID_COUNTER):x}"
