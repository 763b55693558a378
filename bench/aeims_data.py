"""The data layer benchmarks' quick roots: customers and operators sharing one password, written
as the PHP application writes them, a million customers in seconds.

The full AEIMS-shaped dataset (every file of the catalog, both operator files, the real files'
quirks, documented passwords) is provisioner.devdata.aeims_generator; this module shares its
reproducible hashing, so the same seed writes the same bytes here too.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from provisioner.devdata.php_text import bcrypt_hash
from provisioner.storage.phpjson.encode import dump_json
from provisioner.storage.phpjson.style import JsonStyle

SITES = ("flirts.nyc", "nycflirts.com", "bench.example.test")
LAST_UPDATED = "2025-10-01 12:00:00"
# PHP's json_encode(JSON_PRETTY_PRINT) with escaped slashes, written with a trailing newline.
STYLE = JsonStyle(indent=4, escape_slashes=True, trailing_newline=True)
# Placeholders in the one customer record that is encoded (see `customers_text`).
_SLOT = re.compile(r"@@(\w+)@@")


def customer(cid: str, n: str, home: str, credits: Any, hashed: str) -> dict[str, Any]:
    """Customer number `n` as AEIMS's CustomerManager writes one."""
    return {
        "customer_id": cid,
        "username": f"user{n}",
        "email": f"user{n}@example.test",
        "password_hash": hashed,
        "site_domain": home,
        "sites": [home],
        "registration_ip": "127.0.0.1",
        "active": True,
        "verified": True,
        "created_at": "2024-10-01 12:00:00",
        "profile": {
            "display_name": f"User {n}",
            "bio": "",
            "preferences": [],
            "avatar_url": "",
        },
        "billing": {"credits": credits, "total_spent": 0, "payment_methods": []},
        "stats": {"total_sessions": 0, "total_messages": 0, "total_calls": 0},
    }


def customers_text(customers: int, hashed: str, rng: random.Random) -> str:
    """customers.json with `customers` records, exactly as `dump_json` writes it in STYLE.

    One record with placeholders is encoded by the layer's encoder and repeated with each
    customer's values: a million customers take seconds instead of a minute.
    """
    doc: dict[str, Any] = {"customers": {}, "last_updated": LAST_UPDATED}
    if customers == 0:
        return dump_json(doc, STYLE)
    proto = customer("@@cid@@", "@@n@@", "@@home@@", "@@credits@@", hashed)
    doc["customers"]["@@cid@@"] = proto
    text = dump_json(doc, STYLE).replace('"@@credits@@"', "@@credits@@")
    indent = "\n" + " " * 8  # before a record: two levels of STYLE's 4 spaces
    start = text.index(indent + '"@@cid@@"') + len(indent)
    end = text.index(indent + "}", start) + len(indent) + 1
    parts = _SLOT.split(text[start:end])  # literal, name, literal, name, ..., literal
    literals, names = parts[::2], parts[1::2]
    records = []
    for i in range(customers):
        home = rng.choice(SITES)
        values = {
            "cid": f"cust_{i:07d}",
            "n": str(i),
            "home": home,
            "credits": str(rng.randint(0, 500)),
        }
        pieces = [literals[0]]
        for name, literal in zip(names, literals[1:], strict=True):
            pieces.append(values[name])
            pieces.append(literal)
        records.append("".join(pieces))
    return text[:start] + ("," + indent).join(records) + text[end:]


def generate(root: Path, customers: int, operators: int, password: str, seed: int = 7) -> Path:
    """An application root with `customers` customers and `operators` operators.

    Every account shares one cheap (cost 4) hash of `password`, so that benchmarks measure
    the data layer, not bcrypt.
    """
    rng = random.Random(seed)
    hashed = bcrypt_hash(password, 4, random.Random(f"{seed}:salt").randbytes(16))
    data = root / "data"
    agents = root / "agents" / "data"
    data.mkdir(parents=True, exist_ok=True)
    agents.mkdir(parents=True, exist_ok=True)
    sites = {
        d.replace(".", "_"): {
            "site_id": d.replace(".", "_"),
            "domain": d,
            "name": d.split(".")[0].title(),
            "template": "default",
            "active": True,
            "created_at": "2024-10-01 12:00:00",
            "billing": {"per_minute_rate": 2.99, "minimum_purchase": 10.0, "currency": "USD"},
        }
        for d in SITES
    }
    (data / "customers.json").write_text(customers_text(customers, hashed, rng))
    operator_records = {}
    for i in range(operators):
        oid = f"op_{i:05d}"
        operator_records[oid] = {
            "id": oid,
            "username": f"operator{i}",
            "name": f"Operator {i}",
            "email": f"operator{i}@example.test",
            "password_hash": hashed,
            "created_at": "2025-10-01T12:00:00+00:00",
            "status": "active",
            "services": ["chat"],
            "domains": {rng.choice(SITES): {"role": "operator", "active": True}},
            "settings": {},
            "profile": {"display_names": {}, "bios": {}},
        }

    def dump(path: Path, value: object) -> None:
        path.write_text(dump_json(value, STYLE))

    dump(data / "sites.json", {"sites": sites, "last_updated": LAST_UPDATED})
    dump(data / "operators.json", {"operators": operator_records})
    dump(agents / "operators.json", operator_records)
    dump(data / "messages.json", {"messages": {}, "last_updated": LAST_UPDATED})
    dump(data / "accounts.json", {})
    dump(data / "account_locks.json", {})
    return root
