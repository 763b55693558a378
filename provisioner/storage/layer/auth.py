"""Logins: which account a login names (the PHP application's rule), and the lockout.

The login is trimmed; usernames and admin logins match exactly, type included (PHP's `===`);
an operator also matches its id; emails match ignoring ASCII case; a login that could name two
records is refused (`login_ambiguous`), never guessed. Five failures within 15 minutes lock a
login for 15 minutes, and hold under parallel guessing: attempts at one login take turns (a
striped file lock; an advisory lock in pg_only). docs/data-layer.md, "Logins".
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from provisioner.fsutil import file_lock
from provisioner.storage.events import emit
from provisioner.storage.logins import normalize_login, normalize_login_id
from provisioner.storage.model import StoredRecord
from provisioner.storage.passwords import verify_password
from provisioner.storage.pg import queries as pg_queries
from provisioner.storage.pg import records as pg_records
from provisioner.storage.phpjson.errors import JsonFileError

if TYPE_CHECKING:
    import psycopg

    from provisioner.storage.layer.datalayer import DataLayer

# Failed logins: this many within the window lock the login for the window.
MAX_FAILED_LOGINS = 5
LOCK_WINDOW_SECONDS = 15 * 60
# Verified against for unknown logins, so that they cost as much as known ones.
_DUMMY_HASH = "$2b$12$C6UzMDM.H6dfI/f/IKcEeO5Ftv6GKgmZzJUOnQOdK6qLeH8nHJuUO"
_INACTIVE_STATUSES = frozenset({"inactive", "suspended", "banned", "disabled", "deleted"})
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
# The kinds of account, in the order AuthResult reports them, and their entities.
LOGIN_KINDS = (("customer", "customers"), ("operator", "operators"), ("account", "accounts"))
LOGIN_ENTITIES = tuple(entity for _, entity in LOGIN_KINDS)
_KIND_OF = {entity: kind for kind, entity in LOGIN_KINDS}
# Lock stripes for the turns: attempts at logins of one stripe wait for each other.
_STRIPES = 256
_ADVISORY_CLASS = 0x4145494D  # "AEIM": the first key of pg_advisory_xact_lock(int, int)
_HASH_FIELDS = ("password_hash", "password", "pin_code")


class AmbiguousLogin(LookupError):
    """A login names several records; which one is meant is not guessed."""

    def __init__(self, login: str | int, matches: list[tuple[str, str]]) -> None:
        self.matches = matches  # (kind, key)
        super().__init__(f"{login!r} could name {len(matches)} accounts; refused")


@dataclass(frozen=True)
class AuthResult:
    """The outcome of a login: who it is, or why not. Never carries a password or hash."""

    ok: bool
    kind: str | None = None  # customer, operator or account
    key: str | None = None
    record: dict[str, Any] | None = None
    # invalid, locked, inactive, ambiguous, or unavailable (a file the answer needs is unreadable)
    reason: str | None = None


@dataclass
class LoginCandidates:
    """What a login could name, per entity; and the entities whose file could not be read."""

    found: dict[str, list[StoredRecord]]
    unreadable: tuple[str, ...] = ()


def public(data: dict[str, Any]) -> dict[str, Any]:
    """A record without its hashes and passwords, as logins hand it out."""
    return {k: v for k, v in data.items() if k not in _HASH_FIELDS and "password" not in k}


def file_error(exc: BaseException) -> str:
    """A file error for an event: the file and the reason, never the excerpt it may carry."""
    if isinstance(exc, JsonFileError):
        return f"{exc.path}: {exc.reason}"
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or type(exc).__name__}"
    return type(exc).__name__


def json_candidates(layer: DataLayer, login: str | int) -> LoginCandidates:
    """Candidates from the JSON files: a file that cannot be read leaves the others usable."""
    found: dict[str, list[StoredRecord]] = {}
    unreadable = []
    for entity in LOGIN_ENTITIES:
        try:
            found[entity] = layer.json.login_candidates(entity, login)
        except (JsonFileError, OSError) as exc:
            unreadable.append(entity)
            emit("login_file_unreadable", logging.WARNING, entity=entity, error=file_error(exc))
    return LoginCandidates(found, tuple(unreadable))


def _exact(entity: str, wanted: str | int, record: StoredRecord) -> bool:
    """Whether the one candidate is named by `wanted` under the rule (not only by its case)."""
    data = record.data
    if entity == "accounts":
        if record.key == wanted:
            return True
    else:
        username = data.get("username")
        if type(username) is type(wanted) and username == wanted:
            return True
    if entity == "operators":
        record_id = normalize_login_id(data.get("id"))
        if record_id is not None and record_id == normalize_login_id(wanted):
            return True
    email = data.get("email")
    return (
        type(email) is str
        and type(wanted) is str
        and normalize_login(email) == normalize_login(wanted)
    )


def resolve(login: str | int, candidates: LoginCandidates) -> tuple[str, StoredRecord] | None:
    """The (kind, record) `login` names; None for nobody; AmbiguousLogin for several."""
    matches = [
        (entity, record) for entity in LOGIN_ENTITIES for record in candidates.found.get(entity, ())
    ]
    if len(matches) > 1:
        raise AmbiguousLogin(login, [(_KIND_OF[e], r.key) for e, r in matches])
    if not matches:
        return None
    entity, record = matches[0]
    wanted = login.strip(_ASCII_WHITESPACE) if isinstance(login, str) else login
    if not _exact(entity, wanted, record):
        return None
    return _KIND_OF[entity], record


def find_login(layer: DataLayer, login: str | int) -> tuple[str, StoredRecord] | None:
    """The customer, operator or admin account `login` names (AmbiguousLogin for several)."""
    return resolve(login, layer._login_candidates(login))


# --------------------------------------------------------------------------------------------
# The lockout
# --------------------------------------------------------------------------------------------


def _epoch(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


class _Attempt:
    """One login attempt's view of its account_locks record, inside the login's turn."""

    def __init__(self, key: str, record: dict[str, Any] | None) -> None:
        self.key = key
        self.record = record
        self.change: dict[str, Any] | None = None  # the new record to write
        self.delete = False

    def locked(self, now: int) -> bool:
        locked_at = _epoch((self.record or {}).get("locked_at"))
        return locked_at is not None and now - locked_at < LOCK_WINDOW_SECONDS

    def failed(self, now: int) -> None:
        record = dict(self.record or {})
        first = _epoch(record.get("first_attempt"))
        if not self.record or first is None or now - first >= LOCK_WINDOW_SECONDS:
            record = {"attempts": 0, "first_attempt": now, "locked_at": None, "last_attempt": now}
        record["attempts"] = (_epoch(record.get("attempts")) or 0) + 1
        record["last_attempt"] = now
        if record["attempts"] >= MAX_FAILED_LOGINS:
            record["locked_at"] = now
            emit("login_locked", logging.WARNING, login=self.key, attempts=record["attempts"])
        self.change = record

    def succeeded(self) -> None:
        self.delete = self.record is not None


def _stripe_lock(layer: DataLayer, key: str) -> Any:
    stripe = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[0] % _STRIPES
    return file_lock(layer._locks_dir / "logins" / f"{stripe:02x}.lock")


@contextmanager
def _json_turn(layer: DataLayer, key: str) -> Iterator[_Attempt]:
    """The count from JSON (the truth while JSON is written), written through the layer."""
    found = layer.json.get("account_locks", key)
    attempt = _Attempt(key, None if found is None else found.data)
    yield attempt
    if attempt.change is not None:
        layer._write("account_locks", [StoredRecord("account_locks", key, attempt.change)])
    elif attempt.delete:
        layer._write("account_locks", [], deleted=[key])


@contextmanager
def _pg_turn(conn: psycopg.Connection[Any], key: str) -> Iterator[_Attempt]:
    """pg_only: the count read and written in one transaction holding the login's lock."""
    stripe = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:4])
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_ADVISORY_CLASS, stripe - 2**31))
        found = pg_records.get_record(conn, "account_locks", key)
        attempt = _Attempt(key, None if found is None else found.data)
        yield attempt
        if attempt.change is not None:
            pg_records.upsert_records(conn, [StoredRecord("account_locks", key, attempt.change)])
        elif attempt.delete:
            pg_records.delete_record(conn, "account_locks", key)


def authenticate(layer: DataLayer, login: str | int, password: str) -> AuthResult:
    """Check a login's password, counting failures in account_locks; see the module doc."""
    lock_key = normalize_login(login)
    if not lock_key or not isinstance(password, str):
        return AuthResult(False, reason="invalid")
    with _stripe_lock(layer, lock_key):
        if not layer.phase().phase.writes_json:
            with layer._pg_required() as conn, _pg_turn(conn, lock_key) as attempt:
                return _attempt(attempt, pg_candidates(conn, login), login, password)
        try:
            with _json_turn(layer, lock_key) as attempt:
                return _attempt(attempt, layer._login_candidates(login), login, password)
        except JsonFileError as exc:
            if exc.path.name != "account_locks.json":
                raise
            # No count can be read or written: refuse rather than let guesses go uncounted.
            emit("login_unavailable", logging.ERROR, login=lock_key, error=file_error(exc))
            return AuthResult(False, reason="unavailable")


def pg_candidates(conn: psycopg.Connection[Any], login: str | int) -> LoginCandidates:
    return LoginCandidates(pg_queries.login_candidates(conn, LOGIN_ENTITIES, login))


def _attempt(
    attempt: _Attempt, candidates: LoginCandidates, login: str | int, password: str
) -> AuthResult:
    """One attempt inside the login's turn: at most one password check."""
    now = int(time.time())
    key = attempt.key
    if attempt.locked(now):
        return AuthResult(False, reason="locked")
    try:
        found = resolve(login, candidates)
    except AmbiguousLogin as exc:
        verify_password(password, _DUMMY_HASH)  # same cost as a real check
        kinds = sorted({kind for kind, _ in exc.matches})
        emit("login_ambiguous", logging.WARNING, login=key, matches=len(exc.matches), kinds=kinds)
        return AuthResult(False, reason="ambiguous")
    if found is None:
        verify_password(password, _DUMMY_HASH)
        if candidates.unreadable:
            # The login may be in the file that cannot be read: not a failure of the person.
            emit("login_unavailable", logging.WARNING, login=key, unreadable=candidates.unreadable)
            return AuthResult(False, reason="unavailable")
        attempt.failed(now)
        return AuthResult(False, reason="invalid")
    kind, record = found
    stored_hash = record.data.get("password_hash") or record.data.get("password")
    if not verify_password(password, stored_hash):
        attempt.failed(now)
        return AuthResult(False, reason="invalid")
    if (
        record.data.get("active") is False
        or str(record.data.get("status", "")).lower() in _INACTIVE_STATUSES
    ):
        return AuthResult(False, kind, record.key, reason="inactive")
    attempt.succeeded()
    return AuthResult(True, kind, record.key, public(record.data))
