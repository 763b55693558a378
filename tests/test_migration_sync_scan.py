"""The sync's incremental scan of a pretty-printed file gives exactly the spans a full scan
gives, whatever PHP changed in it: a record's field made longer or shorter, records added and
removed, the first and the last record, the wrapper's neighbours, a duplicate key."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from provisioner.devdata.aeims_generator import generate
from provisioner.migration.sync_scan import Scan, scan_spans, scan_spans_since
from provisioner.storage.aeims.catalog import CATALOG

FS = CATALOG["customers"].file


@pytest.fixture(scope="module")
def customers_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = generate(tmp_path_factory.mktemp("scan") / "aeims", 300, seed=3).root
    return (root / "data" / "customers.json").read_bytes()


def pretty(doc: object) -> bytes:
    """PHP's JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES spelling."""
    return json.dumps(doc, indent=4, ensure_ascii=False).encode()


def same_as_full(raw: bytes, last: Scan | None) -> Scan | None:
    scan = scan_spans_since(raw, FS, last)
    full = scan_spans(raw, FS)
    if full is None:
        assert scan is None
        return None
    assert scan is not None
    assert [(s.member, s.start, s.end, s.digest, s.position) for s in scan.spans] == [
        (s.member, s.start, s.end, s.digest, s.position) for s in full
    ]
    return scan


def test_edits_in_place_give_the_spans_of_a_full_scan(customers_file: bytes) -> None:
    doc = json.loads(customers_file)
    records = doc["customers"]
    keys = list(records)
    rng = random.Random(7)
    last = same_as_full(pretty(doc), None)
    for round_number in range(60):
        kind = rng.choice(["longer", "shorter", "same", "add", "remove", "first", "last"])
        if kind in ("longer", "shorter", "same"):
            key = rng.choice(keys)
            ip = {"longer": "172.16.200.250", "shorter": "1.1.1.1", "same": "10.0.0.9"}[kind]
            records[key]["registration_ip"] = ip
        elif kind == "add":
            key = f"cust_new_{round_number}"
            records[key] = {**records[keys[0]], "customer_id": key}
            keys.append(key)
        elif kind == "remove" and len(keys) > 5:
            del records[keys.pop(rng.randrange(len(keys)))]
        elif kind == "first":
            records[keys[0]]["username"] = f"first{round_number}"
        else:
            records[keys[-1]]["username"] = f"last{round_number}"
        last = same_as_full(pretty(doc), last)
        assert last is not None and len(last.spans) == len(keys)


def test_changes_outside_the_records_and_odd_files_fall_back_to_the_full_scan(
    customers_file: bytes, tmp_path: Path
) -> None:
    doc = json.loads(customers_file)
    last = same_as_full(pretty(doc), None)
    doc["last_updated"] = "2030-01-01 00:00:00"  # after the wrapper
    last = same_as_full(pretty(doc), last)
    first_key = next(iter(doc))
    doc[first_key] = {"NOTE": "changed"}  # before the wrapper
    last = same_as_full(pretty(doc), last)
    # A member key that repeats another: no spans (the layer's reader names the duplicate).
    raw = pretty(doc)
    members = list(doc["customers"])
    twice = raw.replace(
        b'"' + members[5].encode() + b'": {', b'"' + members[4].encode() + b'": {', 1
    )
    assert same_as_full(twice, last) is None
    # A record turned into a top-level member, compact files, an emptied wrapper.
    assert same_as_full(json.dumps(doc).encode(), last) is None
    doc["customers"] = {}
    assert same_as_full(pretty(doc), last) is not None
    same_as_full(raw, None)
    same_as_full(raw, same_as_full(raw, None))
