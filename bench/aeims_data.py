"""A generator of AEIMS-shaped data at any scale, written as the PHP application writes it."""

from __future__ import annotations

import json
import random
from pathlib import Path

from provisioner.storage.passwords import hash_password

SITES = ("flirts.nyc", "nycflirts.com", "bench.example.test")


def generate(root: Path, customers: int, operators: int, password: str, seed: int = 7) -> Path:
    """An application root with `customers` customers and `operators` operators.

    Every account shares one cheap (cost 4) hash of `password`, so that benchmarks measure
    the data layer, not bcrypt.
    """
    rng = random.Random(seed)
    hashed = hash_password(password, rounds=4)
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
    customer_records = {}
    for i in range(customers):
        cid = f"cust_{i:07d}"
        home = rng.choice(SITES)
        customer_records[cid] = {
            "customer_id": cid,
            "username": f"user{i}",
            "email": f"user{i}@example.test",
            "password_hash": hashed,
            "site_domain": home,
            "sites": [home],
            "registration_ip": "127.0.0.1",
            "active": True,
            "verified": True,
            "created_at": "2024-10-01 12:00:00",
            "profile": {
                "display_name": f"User {i}",
                "bio": "",
                "preferences": [],
                "avatar_url": "",
            },
            "billing": {"credits": rng.randint(0, 500), "total_spent": 0, "payment_methods": []},
            "stats": {"total_sessions": 0, "total_messages": 0, "total_calls": 0},
        }
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
        path.write_text(json.dumps(value, indent=4, ensure_ascii=False).replace("/", "\\/") + "\n")

    dump(data / "sites.json", {"sites": sites, "last_updated": "2025-10-01 12:00:00"})
    dump(
        data / "customers.json",
        {"customers": customer_records, "last_updated": "2025-10-01 12:00:00"},
    )
    dump(data / "operators.json", {"operators": operator_records})
    dump(agents / "operators.json", operator_records)
    dump(data / "messages.json", {"messages": {}, "last_updated": "2025-10-01 12:00:00"})
    dump(data / "accounts.json", {})
    dump(data / "account_locks.json", {})
    return root
