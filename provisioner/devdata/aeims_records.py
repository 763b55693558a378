"""The people of a generated AEIMS dataset (sites, domains, customers, operators, accounts,
account locks) in the real files' shapes, and the `Names` every record refers through.

Identities (ids, usernames, which site a customer belongs to, which records carry a quirk) are
functions of the seed and the record's number (`Names`), so benchmarks and tests can name a
record without reading the files; values are drawn from one random generator per entity.
Which numbers carry a quirk is fixed (`n % 1000 == 500`...), so a quirk's rate is the same at
any size and a record can be told to carry one without looking.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from provisioner.devdata.php_text import Money

PASSWORDS: tuple[str, ...] = tuple(f"aeims-dev-{i}" for i in range(8))
ADMIN_PASSWORD = "aeims-dev-admin"  # noqa: S105 (documented development data)

_M64 = (1 << 64) - 1
_BASE_EPOCH = 1_704_067_200  # 2024-01-01 00:00:00 UTC
_SPAN = 660 * 86_400  # records were made over about 22 months

REAL_SITES = (
    ("nycflirts.com", "NYC Flirts", "default"),
    ("flirts.nyc", "Flirts NYC", "default"),
    ("sexacomms.com", "SexaComms", "operator"),
)
# domains.json's hand-written list: only nycflirts.com is also in sites.json.
REAL_DOMAINS = (
    "beastybitches.com",
    "cavern.love",
    "nitetext.com",
    "nineinchesof.com",
    "holyflirts.com",
    "nycflirts.com",
    "gfecalls.com",
    "latenite.love",
    "fantasyflirts.live",
    "dommecats.com",
)
ORPHAN_DOMAIN = "demo.example.com"
_SITE_WORDS = ("velvet", "midnight", "flirt", "ember", "lush", "honey", "neon", "silk", "after")
_TLDS = ("com", "love", "live", "nyc", "chat")
_ADJ = ("sweet", "wild", "shy", "lucky", "sunny", "cozy", "brave", "witty", "calm", "bold")
_NOUN = ("tiger", "fox", "panda", "otter", "hawk", "wolf", "lynx", "raven", "koala", "bear")
_OP_FIRST = ("scarlet", "jade", "ruby", "luna", "nova", "ivy", "sasha", "mia", "dominic", "max")
_OP_SECOND = ("rose", "queen", "angel", "star", "vixen", "dream", "stud", "belle", "grace")
_BIOS = (
    "Looking for fun conversations!",
    "NYC native looking for connections",
    "Night owl 🌙 always up for a chat",
    "Coffee, books and late talks ☕",
    "",
)
_SERVICES = ("calls", "text", "chat", "video", "cam")


def _mix(a: int, b: int) -> int:
    """splitmix64 of two numbers: cheap, well spread, the same on every machine."""
    x = (a * 0x9E3779B97F4A7C15 + b * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def naive(epoch: int) -> str:
    """PHP's date('Y-m-d H:i:s') (the server ran in UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def iso_offset(epoch: int) -> str:
    """PHP's date('c')."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch))


def iso_z(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def day(epoch: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def password_for(number: int) -> str:
    """The password of customer or operator number `number` (documented, for tests)."""
    return PASSWORDS[number % len(PASSWORDS)]


def has_plaintext(n: int) -> bool:
    """Customers carrying `password_plaintext_for_testing` (1 in 100)."""
    return n % 100 == 3


class Names:
    """Ids, usernames and references of one dataset, computed from the seed and a number."""

    def __init__(self, seed: int, counts: dict[str, int]) -> None:
        self.seed = seed
        self.counts = counts
        self.customers = counts["customers"]
        self.operators = operators = counts["operators"]
        self.sites = counts["sites"]
        # Operator generations in blocks, oldest first, as in the real file.
        self._gen_a = max(1, operators // 10)
        self._gen_b = self._gen_a + max(1, operators // 5)
        self._gen_c = self._gen_b + max(1, operators * 3 // 10)
        self.customer_sites = [i for i in range(self.sites) if i != 2]  # sexacomms is for operators

    def h(self, kind: int, n: int) -> int:
        return _mix(self.seed * 131 + kind, n)

    # ------------------------------------------------------------------ sites
    def site_domain(self, i: int) -> str:
        if i < len(REAL_SITES):
            return REAL_SITES[i][0]
        h = self.h(1, i)
        first, second = _SITE_WORDS[h % 9], _SITE_WORDS[(h >> 8) % 9]
        return f"{first}{second}{i}.{_TLDS[(h >> 16) % len(_TLDS)]}"

    def site_id(self, i: int) -> str:
        return self.site_domain(i).replace(".", "_")

    def home_site(self, n: int) -> str:
        sites = self.customer_sites
        return self.site_domain(sites[self.h(2, n) % len(sites)])

    # ------------------------------------------------------------------ customers
    def customer_id(self, n: int) -> str:
        """`cust_0000042`; 1 in 100 a numeric string (`10000007`), as PHP ids from counters."""
        return str(10_000_000 + n) if n % 100 == 7 else f"cust_{n:07d}"

    def customer_username(self, n: int) -> str | int:
        """Unique, except 2 in 1000 that repeat the previous one by case or a trailing space;
        1 in 1000 an int (`12345` in the fixtures)."""
        rest = n % 1000
        if rest == 500 and n > 0:
            return str(self.customer_username(n - 1)).capitalize()
        if rest == 900 and n > 0:
            return f"{self.customer_username(n - 1)} "
        if rest == 77:
            return 90_000_000 + n
        h = self.h(3, n)
        return f"{_ADJ[h % 10]}{_NOUN[(h >> 8) % 10]}{n}"

    def customer_email(self, n: int) -> str:
        h = self.h(3, n)
        return f"{_ADJ[h % 10]}.{_NOUN[(h >> 8) % 10]}{n}@{self.home_site(n)}"

    def customer_locked(self, n: int) -> bool:
        """Customers with an (expired) account_locks entry."""
        return n % 200 == 199

    def customer_login(self, n: int) -> str | None:
        """The username customer `n` logs in with, or None: ambiguous, int or with a lock."""
        if n % 1000 in (499, 500, 899, 900, 77) or self.customer_locked(n):
            return None
        username = self.customer_username(n)
        return username if isinstance(username, str) else None

    # ------------------------------------------------------------------ operators
    def operator_generation(self, j: int) -> str:
        """A: keys "0", "1"... with int usernames; B: uniqid ids, keyed by username; C: named
        ids with settings and stats; D: op_test ids, keyed by id, username in both files."""
        if j < self._gen_a:
            return "A"
        if j < self._gen_b:
            return "B"
        return "C" if j < self._gen_c else "D"

    def operator_name(self, j: int) -> str:
        h = self.h(4, j)
        return f"{_OP_FIRST[h % 10]}{_OP_SECOND[(h >> 8) % 9]}"

    def operator_id(self, j: int) -> str:
        gen = self.operator_generation(j)
        if gen == "A":
            return f"op_{j + 1:03d}"
        if gen == "B":
            return f"op_68eb{self.h(5, j) % (1 << 36):09x}"
        if gen == "C":
            return f"op_{self.operator_name(j)}_{j:03d}"
        return f"op_test_{j:03d}"

    def operator_username(self, j: int) -> str | int:
        gen = self.operator_generation(j)
        if gen == "A":
            return j
        if gen == "D":
            return f"testop{j}"
        return f"{self.operator_name(j)}{j}"

    def operator_key(self, j: int) -> str:
        gen = self.operator_generation(j)
        if gen == "A":
            return str(j)
        return self.operator_id(j) if gen == "D" else str(self.operator_username(j))

    def operator_only_in_agents(self, j: int) -> bool:
        return self.operator_generation(j) in "BC" and j % 500 == 60

    def operator_login(self, j: int) -> str:
        """Int usernames and agents-only records (no username there) log in by id."""
        if self.operator_generation(j) == "A" or self.operator_only_in_agents(j):
            return self.operator_id(j)
        return str(self.operator_username(j))

    def operator_domains(self, j: int) -> list[str]:
        """1 to 3 domains; 1 in 10 operators also names a domain sites.json lacks."""
        h = self.h(6, j)
        count = 1 + h % 3
        found = [
            self.site_domain(self.customer_sites[(h >> (4 + 4 * k)) % len(self.customer_sites)])
            for k in range(count)
        ]
        if h % 10 == 0:
            found.append(REAL_DOMAINS[(h >> 20) % len(REAL_DOMAINS)])
        return list(dict.fromkeys(found))

    # ------------------------------------------------------------------ conversations
    def conversation_id(self, k: int) -> str:
        return f"conv_{k:07d}"

    def conversation_parties(self, k: int) -> tuple[int, int]:
        """(customer number, operator number) of conversation `k`."""
        h = self.h(7, k)
        return h % max(1, self.customers), (h >> 24) % self.operators


def when(rng: random.Random) -> int:
    return _BASE_EPOCH + rng.randrange(_SPAN)


def sites(names: Names, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(names.sites):
        domain = names.site_domain(i)
        real = REAL_SITES[i] if i < len(REAL_SITES) else None
        operator_site = real is not None and real[2] == "operator"
        record: dict[str, Any] = {
            "site_id": names.site_id(i),
            "domain": domain,
            "name": real[1] if real else domain.split(".")[0].title(),
            "description": "Premium dating and entertainment service",
            "template": "operator" if operator_site else "default",
            "active": i % 17 != 16,
            "created_at": naive(when(rng)),
            "categories": ["operator", "dashboard", "admin"]
            if operator_site
            else ["dating", "chat"],
            "theme": {
                "primary_color": f"#{rng.randrange(1 << 24):06x}",
                "secondary_color": f"#{rng.randrange(1 << 24):06x}",
                "accent_color": f"#{rng.randrange(1 << 24):06x}",
            },
            "features": {"video_chat": True, "voice_calls": True, "text_chat": True},
        }
        if operator_site:
            record["billing"] = {"operator_commission": 0.6, "currency": "USD"}
            record["stats"] = {"total_operators": names.operators, "total_revenue": Money(125000)}
        else:
            record["billing"] = {
                "per_minute_rate": 2.99,
                "minimum_purchase": Money(10),
                "currency": "USD",
            }
            record["stats"] = {
                "total_customers": rng.randrange(10_000),
                "active_operators": rng.randrange(100),
                "total_revenue": Money(rng.randrange(10_000_000) / 100),
            }
        out[names.site_id(i)] = record
    return out


def domains(names: Names, rng: random.Random) -> dict[str, Any]:
    """domains.json: the ten real names, then half of the generated sites."""
    generated = [names.site_domain(i) for i in range(3, names.sites, 2)]
    listed = (list(REAL_DOMAINS) + generated)[: names.counts["domains"]]
    out = {}
    for domain in listed:
        out[domain] = {
            "domain": domain,
            "theme": domain.split(".")[0].title(),
            "description": "Adult connection experiences",
            "services": ["Live Chat", "Video Calls", "Voice Calls"],
            "status": "active",
            "ssl_status": "valid",
            "ssl_expires": day(when(rng) + _SPAN),
            "created_at": iso_z(when(rng)),
            "last_updated": iso_z(when(rng)),
            "monthly_revenue": Money(rng.randrange(2_000_000) / 100),
            "monthly_calls": rng.randrange(5000),
            "monthly_messages": rng.randrange(20000),
            "uptime_percentage": 99.8,
            "operators_count": rng.randrange(40),
            "active_users": rng.randrange(1000),
        }
    return out


def customers(names: Names, rng: random.Random, hashes: list[str]) -> Iterator[tuple[str, Any]]:
    rand, randrange = rng.random, rng.randrange
    all_sites = [names.site_domain(i) for i in names.customer_sites]
    for n in range(names.customers):
        cid = names.customer_id(n)
        home = names.home_site(n)
        created = _BASE_EPOCH + randrange(_SPAN)
        r = rand()
        created_at = (
            naive(created) if r < 0.87 else iso_offset(created) if r < 0.97 else iso_z(created)
        )
        sites = [home]
        if r < 0.3:
            sites.append(all_sites[randrange(len(all_sites))])
        if n % 200 == 11:
            sites.append(ORPHAN_DOMAIN)
        record: dict[str, Any] = {
            "customer_id": cid,
            "username": names.customer_username(n),
            "email": names.customer_email(n),
            "password_hash": hashes[n % len(hashes)],
        }
        if has_plaintext(n):
            record["password_plaintext_for_testing"] = password_for(n)
        spent = randrange(500)
        record.update(
            site_domain=home,
            sites=list(dict.fromkeys(sites)),
            registration_ip=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
            active=r > 0.02,
            verified=r > 0.1,
            created_at=created_at,
            profile={
                "display_name": str(names.customer_username(n)).strip().title(),
                "bio": _BIOS[n % len(_BIOS)],
                "preferences": [] if r > 0.05 else {"notifications": True},
                "avatar_url": f"/uploads/avatars/{cid}.jpg" if r < 0.2 else "",
                "age_verified": r > 0.1,
            },
            billing={
                "credits": randrange(500) if r > 0.1 else randrange(50_000) / 100,
                "total_spent": spent,
                "payment_methods": [],
            },
            stats={
                "total_sessions": randrange(100),
                "total_messages": randrange(1000),
                "total_calls": randrange(20),
                "last_activity": naive(created + randrange(86_400 * 30)),
            },
        )
        if r > 0.9:
            del record["stats"]["last_activity"]  # never came back
        yield cid, record


def _services(rng: random.Random, domains: list[str]) -> dict[str, Any]:
    out = {}
    for domain in domains:
        offered = {}
        for service in _SERVICES[: 2 + rng.randrange(4)]:
            rate = "rate_per_message" if service == "text" else "rate_per_minute"
            offered[service] = {"enabled": True, rate: round(0.99 + rng.randrange(700) / 100, 2)}
        out[domain] = offered
    return out


def _profile(rng: random.Random, name: str, domains: list[str]) -> dict[str, Any]:
    return {
        "display_names": {d: name.title() for d in domains},
        "bios": {d: "Your dream girl next door - flirty, fun, and always online" for d in domains},
        "specialties": ["Flirty Chat", "Role Play"],
        "languages": ["English"] if rng.random() < 0.8 else ["English", "Spanish"],
        "physical_attributes": {
            "gender": "female",
            "bra_size": "34B",
            "body_type": ("slim", "athletic", "curvy")[rng.randrange(3)],
            "height": "5'5\"",
            "hair_color": "brown",
            "eye_color": "green",
            "ethnicity": "mixed",
        },
    }


def operators(
    names: Names, rng: random.Random, hashes: list[str]
) -> Iterator[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """(file key, data/ copy, agents copy) of every operator; None where a file lacks it."""
    for j in range(names.operators):
        gen = names.operator_generation(j)
        oid, name = names.operator_id(j), names.operator_name(j)
        domains = names.operator_domains(j)
        created = when(rng)
        record: dict[str, Any] = {
            "id": oid,
            "name": name.title(),
            "email": f"{name}{j}@operators.example.test",
            "password_hash": hashes[j % len(hashes)],
        }
        if gen == "A":
            record.update(
                created_at=iso_z(created),
                status="active",
                services=list(_SERVICES),
                domains={
                    d: {"role": "operator", "active": True, "joined": day(created)} for d in domains
                },
                settings={
                    "availability": {
                        "status": "online",
                        "auto_logout_minutes": 30,
                        "domains": {d: "online" for d in domains},
                    },
                    "services": _services(rng, domains),
                },
                profile=_profile(rng, name, domains),
                stats={"today": _today(rng)},
            )
        elif gen in "BC":
            record.update(
                phone=f"+1-555-{j % 10000:04d}",
                status="active",
                verified=True,
                created_at=iso_offset(created),
                domains={d: {"active": True} for d in domains},
                services=list(_SERVICES[:4]),
                profile={
                    **_profile(rng, name, domains),
                    "bio": "Premium NYC entertainer",
                    "age": 21 + rng.randrange(20),
                    "location": "New York, NY",
                },
                settings={
                    "calls_enabled": True,
                    "text_enabled": True,
                    "chat_enabled": True,
                    "video_enabled": rng.random() < 0.9,
                },
            )
            if gen == "C":
                record["settings"]["availability"] = {"status": "online"}
                record["settings"]["services"] = _services(rng, domains)
                record["stats"] = {"today": _today(rng)}
        else:
            record.update(
                username=names.operator_username(j),
                status="active",
                verified=True,
                created_at=iso_offset(created),
                domains={d: {"active": True, "role": "operator"} for d in domains},
                services=list(_SERVICES),
                profile={
                    **_profile(rng, name, domains),
                    "profile_picture": "/assets/images/operators/placeholder.jpg",
                },
                settings={
                    "availability": {"status": "online"},
                    "services": _services(rng, domains),
                },
            )
        key = names.operator_key(j)
        if gen == "D":
            agents = record
        else:
            agents = dict(record)  # the agents copy lacks username; data/ appended it last
            record = {**record, "username": names.operator_username(j)}
        if j % 500 == 100:
            agents = {**agents, "status": "inactive"}
        yield key, None if names.operator_only_in_agents(j) else record, agents


def _today(rng: random.Random) -> dict[str, Any]:
    return {
        "calls": rng.randrange(20),
        "messages": rng.randrange(60),
        "minutes": rng.randrange(200),
        "earnings": round(rng.randrange(20_000) / 100, 2),
        "rating": round(4 + rng.randrange(10) / 10, 1),
    }


def accounts(names: Names, admin_hash: str, hashes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "admin": {
            "id": "admin-001",
            "name": "AEIMS Administrator",
            "type": "admin",
            "password": admin_hash,
            "password_plaintext_for_testing": ADMIN_PASSWORD,
            "email": "admin@aeims.example.test",
            "created_at": "2025-10-08T20:00:00+00:00",
            "permissions": ["all"],
        },
        "demo@example.com": {
            "id": "cust-001",
            "name": "Demo Customer",
            "type": "customer",
            "password": hashes[1],
            "password_plaintext_for_testing": password_for(1),
            "email": "demo@example.com",
            "domains": [ORPHAN_DOMAIN],
            "status": "active",
            "created_at": "2025-10-08T20:00:00+00:00",
            "permissions": ["dashboard", "domains", "stats", "support"],
        },
    }
    for i in range(names.sites):
        domain = names.site_domain(i)
        out[f"admin@{domain}"] = {
            "id": f"admin-{i + 2:03d}",
            "name": f"{domain} administrator",
            "type": "admin",
            "password": hashes[i % len(hashes)],
            "email": f"admin@{domain}",
            "domains": [domain],
            "created_at": "2025-10-12T09:00:00+00:00",
            "permissions": ["dashboard", "stats"],
        }
    return out


def account_locks(names: Names, rng: random.Random) -> Iterator[tuple[str, Any]]:
    """Expired failed-login counters (epoch ints), by username; two by email as in AEIMS."""
    yield (
        "demo@example.com",
        {"attempts": 1, "first_attempt": 1760349850, "locked_at": None, "last_attempt": 1760349850},
    )
    yielded = 1
    for n in range(199, names.customers, 200):
        if yielded >= names.counts["account_locks"]:
            return
        first = when(rng)
        attempts = 1 + rng.randrange(6)
        yield (
            str(names.customer_username(n)),
            {
                "attempts": attempts,
                "first_attempt": first,
                "locked_at": first + 60 if attempts >= 5 else None,
                "last_attempt": first + rng.randrange(600),
            },
        )
        yielded += 1
    if yielded < names.counts["account_locks"]:
        yield (
            "nobody@example.com",
            {
                "attempts": 1,
                "first_attempt": 1760349999,
                "locked_at": None,
                "last_attempt": 1760349999,
            },
        )
