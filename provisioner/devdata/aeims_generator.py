"""AEIMS-shaped data at any scale, with the quirks of the real files, the same bytes for a seed.

`generate(root, customers=N, seed=S)` writes an application root holding every file the data
layer's catalog knows (22 entities in 23 files: both operator files, transactions.json too)
and data/test_operator_credentials.json, in the proportions of `Scale.for_customers(N)`, and
returns a `Dataset` saying what it wrote and which logins work with which password.

Quirks reproduced (REPORT.md section 1; tests/fixtures/aeims/README.md):
- shapes: wrapped files with and without `last_updated`, `_CREDENTIALS_DOCUMENTATION` beside the
  records (customers, accounts), flat files keyed by login, domain or `action:identifier`, plain
  lists (chat_rooms, room_invites), the hybrid customer_activity.json (an `activities` list plus
  records at top-level keys "0", "1", ... of another shape), favorites as a list or as PHP's
  list-turned-object `{"1": ...}`, `[]` where an object is meant (profile.preferences, data);
- spellings: PHP pretty print with escaped slashes (customers, operators, activity), unescaped
  (accounts), compact one-line files (messages, conversations and the DataLayer's files),
  hand-written files with inline lists and `10.00` (sites, domains, chat_rooms), raw emoji;
- operators in two files: data/operators.json keyed "0", "1"... (int usernames 0, 1... there),
  then usernames, then ids; agents/data/operators.json unwrapped with the same keys, without
  `username` where the key is not the id, fields in another order, slashes escaped only in the
  older records; a few operators only in the agents copy and a few with another status there;
  four generations of operator record, each with its own settings/profile layout;
- values: the five timestamp formats, numeric-string customer ids, int usernames, credits as
  int or float, `ip: "unknown"`, plaintext test passwords on some records
  (`password_plaintext_for_testing`) and in test_operator_credentials.json, usernames that
  differ from another only by case or a trailing space (ambiguous logins, refused by the
  layer), orphan references (the domain `demo.example.com`, operator domains missing from
  sites.json, reservations pointing to no user).

Passwords: account number n (customer or operator) has the password `password_for(n)`, one of
eight; each is hashed once per dataset (bcrypt, cost `bcrypt_rounds`, salt drawn from the
seed) and the hash reused, so a million accounts cost eight hashes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.devdata import aeims_activity as act
from provisioner.devdata import aeims_records as rec
from provisioner.devdata.aeims_records import ADMIN_PASSWORD, PASSWORDS, password_for
from provisioner.devdata.php_text import (
    Members,
    bcrypt_hash,
    hand_written,
    members_slot,
    write_streamed,
)
from provisioner.storage.phpjson.encode import dump_json
from provisioner.storage.phpjson.style import JsonStyle

__all__ = [
    "ADMIN_PASSWORD",
    "PASSWORDS",
    "Dataset",
    "Scale",
    "generate",
    "password_for",
]

LAST_UPDATED = "2025-10-31 12:00:00"

# How the PHP application spells each kind of file (see the module docstring).
PHP_PRETTY = JsonStyle(indent=4, escape_slashes=True)
PHP_PRETTY_RAW_SLASHES = JsonStyle(indent=4, trailing_newline=True)
PHP_COMPACT = JsonStyle(indent=None, escape_slashes=True, trailing_newline=True)
AGENTS_NEWER = JsonStyle(indent=4)  # the op_test records of the agents copy: raw slashes


@dataclass(frozen=True)
class Scale:
    """How many records of each entity; `for_customers` gives the platform's proportions."""

    customers: int
    operators: int
    sites: int
    domains: int
    accounts: int
    account_locks: int
    chat_rooms: int
    room_messages: int
    room_invites: int
    conversations: int
    messages: int
    content_items: int
    content_purchases: int
    favorites: int
    notifications: int
    transactions: int
    operator_requests: int
    customer_activity: int
    id_verifications: int
    verification_codes: int
    username_reservations: int
    rate_limits: int

    @classmethod
    def for_customers(cls, customers: int) -> Scale:
        """Operators 1 per 20 customers, sites 3 + 1 per 10,000, two messages per customer..."""
        if customers < 0:
            raise ValueError(f"customers must be 0 or more, not {customers}")
        operators = max(4, customers // 20)
        sites = 3 + customers // 10_000
        chat_rooms = max(3, operators // 5)
        verifications = max(5, operators // 10)
        return cls(
            customers=customers,
            operators=operators,
            sites=sites,
            domains=10 + (sites - 3) // 2,
            accounts=2 + sites,
            account_locks=max(2, customers // 200),
            chat_rooms=chat_rooms,
            room_messages=chat_rooms * 4,
            room_invites=chat_rooms,
            conversations=customers // 2,
            messages=customers * 2,
            content_items=operators // 2,
            content_purchases=customers // 20,
            favorites=customers // 10,
            notifications=customers // 5,
            transactions=customers // 2,
            operator_requests=operators // 5,
            customer_activity=max(13, customers // 2),
            id_verifications=verifications,
            verification_codes=verifications,
            username_reservations=max(5, operators // 10),
            rate_limits=customers // 200,
        )

    def counts(self) -> dict[str, int]:
        return dict(self.__dict__)

    @property
    def total(self) -> int:
        return sum(self.counts().values())


@dataclass
class Dataset:
    """What `generate` wrote: where, from which seed, how many records of each entity."""

    root: Path
    seed: int
    scale: Scale
    names: rec.Names
    counts: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def customer_logins(self, count: int, *, start: int = 0) -> list[tuple[str, str]]:
        """(username, password) of `count` customers that log in (unambiguous, not locked)."""
        return self._logins(self.names.customer_login, self.scale.customers, count, start)

    def operator_logins(self, count: int, *, start: int = 0) -> list[tuple[str, str]]:
        """(username, password) of `count` operators that log in through the layer."""
        return self._logins(self.names.operator_login, self.scale.operators, count, start)

    @staticmethod
    def _logins(login_of: Any, total: int, count: int, start: int) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for n in range(start, total):
            login = login_of(n)
            if login is not None:
                found.append((login, password_for(n)))
                if len(found) == count:
                    break
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "seed": self.seed,
            "counts": self.counts,
            "files": len(self.files),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            "passwords": "account number n has the password aeims-dev-<n mod 8>",
        }


class _Writer:
    """Writes each file of one dataset."""

    def __init__(self, root: Path, seed: int, scale: Scale, bcrypt_rounds: int) -> None:
        self.root = root
        self.seed = seed
        self.scale = scale
        salt = random.Random(f"{seed}:salt")
        self.hashes = [bcrypt_hash(p, bcrypt_rounds, salt.randbytes(16)) for p in PASSWORDS]
        self.admin_hash = bcrypt_hash(ADMIN_PASSWORD, bcrypt_rounds, salt.randbytes(16))
        self.names = rec.Names(seed, scale.counts())
        self.counts: dict[str, int] = {}
        self.files: list[Path] = []

    def rng(self, entity: str) -> random.Random:
        """One generator per entity, so that one entity's count never shifts another's data."""
        return random.Random(f"{self.seed}:{entity}")

    def path(self, relpath: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(path)
        return path

    def streamed(
        self, relpath: str, doc: Any, members: list[Members], style: JsonStyle
    ) -> list[int]:
        return write_streamed(self.path(relpath), doc, members, style)

    def whole(self, relpath: str, text: str) -> None:
        self.path(relpath).write_text(text, encoding="utf-8")

    def wrapped(
        self, entity: str, relpath: str, wrapper: str, items: Iterator[Any], style: JsonStyle
    ) -> None:
        """{wrapper: {id: rec}, last_updated}; an empty one as the real files hold it: `{}`."""
        doc = {wrapper: members_slot(0, keyed=True), "last_updated": LAST_UPDATED}
        (self.counts[entity],) = self.streamed(relpath, doc, [Members(items, keyed=True)], style)

    # ---------------------------------------------------------------------------- files
    def write_all(self) -> None:
        s, n = self.scale, self.names
        self.sites()
        self.whole("data/domains.json", hand_written(rec.domains(n, self.rng("domains")), 2))
        self.counts["domains"] = s.domains
        self.customers()
        self.operators()
        self.accounts()
        self.flat("account_locks", rec.account_locks(n, self.rng("account_locks")))
        rooms = list(act.chat_rooms(n, self.rng("chat_rooms"), self.hashes))
        self.whole("data/chat_rooms.json", hand_written(rooms, 4) + "\n")
        self.counts["chat_rooms"] = len(rooms)
        self.wrapped(
            "room_messages",
            "data/room_messages.json",
            "messages",
            act.room_messages(n, self.rng("room_messages")),
            PHP_COMPACT,
        )
        invites = Members(act.room_invites(n, self.rng("room_invites")), keyed=False)
        (self.counts["room_invites"],) = self.streamed(
            "data/room_invites.json", members_slot(0, keyed=False), [invites], PHP_PRETTY
        )
        for entity, wrapper, items in (
            ("conversations", "conversations", act.conversations(n, self.rng("conversations"))),
            ("messages", "messages", act.messages(n, self.rng("messages"))),
            ("content_items", "items", act.content_items(n, self.rng("content_items"))),
            (
                "content_purchases",
                "purchases",
                act.content_purchases(n, self.rng("content_purchases")),
            ),
            ("notifications", "notifications", act.notifications(n, self.rng("notifications"))),
            ("transactions", "transactions", act.transactions(n, self.rng("transactions"))),
            ("operator_requests", "requests", act.operator_requests(n, self.rng("requests"))),
        ):
            self.wrapped(entity, f"data/{entity}.json", wrapper, items, PHP_COMPACT)
        self.flat("favorites", act.favorites(n, self.rng("favorites")))
        self.customer_activity()
        for entity, wrapper, items in (
            ("id_verifications", "verifications", act.id_verifications(n, self.rng("idv"))),
            ("verification_codes", "codes", act.verification_codes(n, self.rng("codes"))),
        ):
            self.wrapped(entity, f"data/{entity}.json", wrapper, items, PHP_PRETTY)
        self.flat("username_reservations", act.username_reservations(n, self.rng("reserve")))
        self.flat("rate_limits", act.rate_limits(n, self.rng("rate_limits")))
        self.whole(
            "data/test_operator_credentials.json",
            dump_json(act.test_operator_credentials(n), PHP_PRETTY),
        )

    def flat(self, entity: str, items: Iterator[tuple[str, Any]]) -> None:
        (self.counts[entity],) = self.streamed(
            f"data/{entity}.json",
            members_slot(0, keyed=True),
            [Members(items, keyed=True)],
            PHP_PRETTY,
        )

    def sites(self) -> None:
        sites = rec.sites(self.names, self.rng("sites"))
        self.whole(
            "data/sites.json",
            hand_written({"sites": sites, "last_updated": LAST_UPDATED}, 4) + "\n",
        )
        self.counts["sites"] = len(sites)

    def customers(self) -> None:
        names, hashes = self.names, self.hashes
        documented = {"NOTE": "Test accounts listed here use the password shown"}
        for number in range(min(self.scale.customers, 2000)):
            if rec.has_plaintext(number) and len(documented) < 6:
                documented[str(names.customer_username(number))] = (
                    f"{password_for(number)} - Works on {names.home_site(number)}"
                )
        doc = {
            "_CREDENTIALS_DOCUMENTATION": documented,
            "customers": members_slot(0, keyed=True),
            "last_updated": LAST_UPDATED,
        }
        items = rec.customers(names, self.rng("customers"), hashes)
        (self.counts["customers"],) = self.streamed(
            "data/customers.json", doc, [Members(items, keyed=True)], PHP_PRETTY
        )

    def operators(self) -> None:
        names = self.names
        data_rng, agents_rng = self.rng("operators"), self.rng("operators")
        data_items = (
            (key, record)
            for key, record, _agents in rec.operators(names, data_rng, self.hashes)
            if record is not None
        )
        self.streamed(
            "data/operators.json",
            {"operators": members_slot(0, keyed=True)},
            [Members(data_items, keyed=True)],
            PHP_PRETTY,
        )
        agents_items = (
            (key, agents)
            for key, _record, agents in rec.operators(names, agents_rng, self.hashes)
            if agents is not None
        )
        self.streamed(
            "agents/data/operators.json",
            members_slot(0, keyed=True),
            [Members(agents_items, keyed=True, style_of=self._agents_style)],
            PHP_PRETTY,
        )
        self.counts["operators"] = self.scale.operators

    def _agents_style(self, key: str) -> JsonStyle:
        """The agents copy escapes slashes in its older records only (4 of 54 in AEIMS)."""
        return AGENTS_NEWER if key.startswith("op_test_") else PHP_PRETTY

    def accounts(self) -> None:
        accounts = rec.accounts(self.names, self.admin_hash, self.hashes)
        doc = {
            "_CREDENTIALS_DOCUMENTATION": {
                "admin": f"admin / {ADMIN_PASSWORD}",
                "site_admins": "admin@<domain> / aeims-dev-<site number mod 8>",
            },
            **accounts,
        }
        self.whole("data/accounts.json", dump_json(doc, PHP_PRETTY_RAW_SLASHES))
        self.counts["accounts"] = len(accounts)

    def customer_activity(self) -> None:
        """The hybrid file: old records (with ids) in `activities`, newer ones at "0", "1"..."""
        total = self.scale.customer_activity
        listed = max(3, total // 10)
        rng = self.rng("customer_activity")
        doc = {
            "activities": members_slot(0, keyed=False),
            "last_updated": LAST_UPDATED,
            **members_slot(1, keyed=True),
        }
        old = Members(act.activities_listed(self.names, rng, listed), keyed=False)
        new = Members(act.activities_keyed(self.names, rng, total - listed), keyed=True)
        counts = self.streamed("data/customer_activity.json", doc, [old, new], PHP_PRETTY)
        self.counts["customer_activity"] = sum(counts)


def generate(
    root: Path,
    customers: int,
    seed: int = 1,
    *,
    scale: Scale | None = None,
    bcrypt_rounds: int = 10,
) -> Dataset:
    """Write an AEIMS application root under `root` (data/, agents/data/); see the module doc.

    The same arguments write the same bytes. `scale` overrides the proportions; bcrypt cost
    10 keeps test logins quick (AEIMS uses 12; the cost is in the hash, so either verifies).
    """
    if not 4 <= bcrypt_rounds <= 31:
        raise ValueError(f"bcrypt cost must be between 4 and 31, not {bcrypt_rounds}")
    root = Path(root)
    taken = [p for p in (root / "data", root / "agents") if p.exists()]
    if taken:
        raise ValueError(
            f"{taken[0]} already exists: generate into a new or empty folder "
            "(existing AEIMS files are never overwritten)"
        )
    scale = scale or Scale.for_customers(customers)
    if scale.operators < 4:
        raise ValueError("a dataset needs at least 4 operators (one of each generation)")
    start = time.perf_counter()
    writer = _Writer(Path(root), seed, scale, bcrypt_rounds)
    writer.write_all()
    return Dataset(
        root=Path(root),
        seed=seed,
        scale=scale,
        names=writer.names,
        counts=writer.counts,
        files=writer.files,
        seconds=time.perf_counter() - start,
    )
