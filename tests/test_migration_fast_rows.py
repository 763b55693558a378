"""The backfill's fast row of a parsed record is exactly the layer's mapping of it
(`from_record(record).params()`, jsonb as its JSON text), or it hands the record over to the
mapping; and it never changes the record it reads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from provisioner.devdata.aeims_generator import generate
from provisioner.migration.backfill_rows import build_batch
from provisioner.migration.fast_rows import fast_row
from provisioner.migration.storage_bridge import AeimsJsonStore, json_records
from provisioner.storage.model import ENTITIES, StoredRecord
from provisioner.storage.pg.columns import RecordMappingError
from provisioner.storage.pg.rows import from_record


def mapped(record: StoredRecord) -> tuple[list[Any], list[tuple[Any, ...]]]:
    image = from_record(record)
    params = [json.dumps(v.obj) if type(v) is Jsonb else v for v in image.params()]
    return params, image.memberships


def assert_same(entity: str, record: StoredRecord) -> bool:
    """Whether the fast path took the record; when it did, its row is the mapping's."""
    before = copy.deepcopy(record.data)
    fast = fast_row(entity, record)
    assert record.data == before  # the record is read, never changed
    if fast is None:
        return False
    params, memberships = mapped(record)
    assert fast[0] == params
    assert [type(v) for v in fast[0]] == [type(v) for v in params]
    assert fast[1] == memberships
    return True


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> AeimsJsonStore:
    root: Path = generate(tmp_path_factory.mktemp("fast") / "aeims", 400, seed=5).root
    return AeimsJsonStore(root)


def test_every_generated_record_maps_as_the_layer_maps_it(store: AeimsJsonStore) -> None:
    taken = 0
    for entity in ENTITIES:
        for record in json_records(store, entity):
            taken += assert_same(entity, record)
    assert taken > 1500  # nearly all of them take the fast path


CUSTOMER = {
    "customer_id": "cust_x",
    "username": "Someone",
    "email": "a@example.com",
    "sites": ["a.example", "B.example"],
    "active": True,
    "created_at": "2024-01-02 03:04:05",
    "profile": {"display_name": "S", "bio": "hi", "age_verified": False},
    "billing": {"credits": 10, "total_spent": 2.5},
    "stats": {"last_activity": "2024-01-02T03:04:05+00:00", "total_calls": 1},
}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"username": "nul\u0000inside"},
        {"username": "a literal \\u0000 is text"},
        {"username": "lone \ud800 surrogate"},
        {"username": "ünïcode ✓ 🎉"},
        {"profile": {"display_name": "x", "password_plaintext_for_testing": "pw"}},
        {"password_plaintext_for_testing": "pw"},
        {"billing": {"credits": 1e16}},
        {"billing": {"credits": 1e-7, "total_spent": "12.50"}},
        {"billing": {"credits": float("nan")}},
        {"billing": "not an object"},
        {"profile": None},
        {"customer_id": 7},
        {"customer_id": "someone else"},
        {"created_at": "2024-01-02T03:04:05Z"},
        {"created_at": "2024-02-30 03:04:05"},
        {"created_at": 1700000000},
        {"created_at": "2024-01-02"},
        {"created_at": "2024-01-02T03:04:05.5+02:00"},
        {"sites": ["a.example", 3]},
        {"active": 1},
        {"__orig__": {}},
        {"e+": "a field named like an exponent", "note": "NaN and Infinity as text"},
    ],
)
def test_edge_records_map_as_the_layer_maps_them(change: dict[str, Any]) -> None:
    data = {**copy.deepcopy(CUSTOMER), **copy.deepcopy(change)}
    for key in ("cust_x", "cüst", "c\u0000"):
        record = StoredRecord("customers", key, data, {"wrapper": "customers", "file_key": key})
        try:
            from_record(record)
        except RecordMappingError:
            assert fast_row("customers", record) is None
            continue
        assert_same("customers", record)


def test_a_batch_reports_plaintext_and_refusals_as_before() -> None:
    records = [
        StoredRecord("customers", "ok", {**CUSTOMER, "customer_id": "ok"}, {}),
        StoredRecord("customers", "pw", {**CUSTOMER, "password_plaintext_for_testing": "x"}, {}),
        StoredRecord("customers", "bad", {**CUSTOMER, "username": "x\u0000"}, {}),
    ]
    built = build_batch("customers", records)
    assert [row.key for row in built.rows] == ["ok", "pw"]
    assert built.plaintext_dropped == 1
    assert [key for key, _line in built.refused] == ["bad"]
    assert built.rows[1].params == mapped(records[1])[0]


def test_the_fast_paths_find_every_piece_of_the_mapping_they_reuse() -> None:
    """A storage rename would silently slow the backfill back down: it fails here instead."""
    from provisioner.migration import storage_bridge

    assert storage_bridge.mapping_internals() is not None
    assert storage_bridge._content_hash is not None
