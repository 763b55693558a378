"""The validation's first pass in SQL names exactly the keys the streamed comparison names:
rows changed, unproved, missing on either side, and records the mapping refuses."""

from __future__ import annotations

from pathlib import Path

import psycopg

from provisioner.devdata.aeims_generator import generate
from provisioner.migration.backfill import backfill
from provisioner.migration.staging import SESSION_SETTINGS, entity_sql
from provisioner.migration.storage_bridge import AeimsJsonStore, json_records, record_hash
from provisioner.migration.validation import EntityCheck
from provisioner.migration.validation_hashes import (
    HASH_STAGE_SQL,
    compare_hashes_in_sql,
    hashes_copy_text,
)


def streamed(conn: psycopg.Connection, entity: str, hashes: dict) -> tuple[set, set, int]:
    left = dict(hashes)
    candidates, rows = set(), 0
    with conn.cursor() as cur:
        for key, stored, proved in cur.execute(entity_sql(entity).scan_hashes):
            rows += 1
            if left.pop(key, None) != stored or not proved:
                candidates.add(key)
    return candidates | set(left), set(left), rows


def in_sql(conn: psycopg.Connection, entity: str, hashes: dict) -> tuple[set, set, int]:
    left = dict(hashes)
    copied = hashes_copy_text(left)
    assert copied is not None
    check = EntityCheck(entity)
    candidates = compare_hashes_in_sql(conn, entity, copied, left, check)
    return candidates | set(left), set(left), check.pg_records


def test_sql_and_streamed_comparisons_name_the_same_keys(tmp_path: Path, fresh_pg_dsn: str) -> None:
    root = generate(tmp_path / "aeims", 40, seed=2).root
    assert backfill(fresh_pg_dsn, root).ok
    store = AeimsJsonStore(root)
    hashes = {r.key: record_hash(r) for r in json_records(store, "customers")}
    keys = sorted(hashes)
    assert len(keys) >= 4
    hashes["cust_only_in_json"] = "0" * 64
    hashes[keys[0]] = None  # a record the mapping refuses
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE customers SET content_hash = 'x' WHERE customer_id = %s", [keys[1]])
        conn.execute("UPDATE customers SET email = 'e@x.org' WHERE customer_id = %s", [keys[2]])
        conn.execute(
            "DELETE FROM migration_row_digests WHERE entity = 'customers' AND key = %s", [keys[3]]
        )
        conn.execute("DELETE FROM customer_sites WHERE customer_id = %s", [keys[-1]])
        conn.execute("DELETE FROM customers WHERE customer_id = %s", [keys[-1]])
        conn.execute(HASH_STAGE_SQL)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(SESSION_SETTINGS)
            sql_side = in_sql(conn, "customers", hashes)
            streamed_side = streamed(conn, "customers", hashes)

    assert sql_side == streamed_side
    candidates, json_only, rows = sql_side
    assert candidates == {*keys[:4], keys[-1], "cust_only_in_json"}
    assert json_only == {keys[-1], "cust_only_in_json"}
    assert rows == len(keys) - 1


def test_keys_copy_cannot_carry_as_they_are_are_streamed() -> None:
    assert hashes_copy_text({"a\tb": "h"}) is None
    assert hashes_copy_text({"a\\b": "h"}) is None
    assert hashes_copy_text({"a\ud800": "h"}) is None
    assert hashes_copy_text({"a": None, "b": "h"}) == b"a\t\\N\nb\th\n"
