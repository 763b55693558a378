"""JSON -> PostgreSQL -> JSON gives every file back, for the real AEIMS files and the fixtures.

What comes back, and what does not (decided here, and why):
- Every record comes back with every field, value and JSON type, in its file, at its place,
  in its order; both operator files come back field by field (the agents copy's own values
  and missing fields included).
- Plaintext test passwords (`password_plaintext_for_testing`) never enter PostgreSQL, so the
  records that come back lack them.
- `replace_all` keeps the file-level keys of the file it writes into. The second copy starts
  from the original files emptied of their records, so `_CREDENTIALS_DOCUMENTATION` is still
  there: it was never migrated, and comes back only because it never left that file.
- `last_updated` is restamped by each write, as PHP's writers do: it keeps its format, not its
  value.
- data/test_operator_credentials.json is not an entity: never read, never written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from provisioner.storage import jsonvalues
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.phase import Phase
from provisioner.storage.model import (
    CREDENTIAL_DOC_KEYS,
    ENTITIES,
    PLAINTEXT_PASSWORD_FIELDS,
    strip_plaintext,
)
from provisioner.storage.pg import records as pg_records
from tests.datalayer_support import FIXTURE_AEIMS, SHARED_AEIMS, copy_root, layer_in, migrate

SOURCES = {"fixtures": FIXTURE_AEIMS, "real": SHARED_AEIMS}


@pytest.fixture(params=sorted(SOURCES))
def source(request: pytest.FixtureRequest) -> Path:
    path = SOURCES[request.param]
    if not (path / "data").is_dir():
        pytest.skip(f"{path} is not here")
    return path


@pytest.fixture
def dsn(fresh_pg_dsn: str) -> str:
    migrate(fresh_pg_dsn)
    return fresh_pg_dsn


def plaintext_fields(value: Any) -> int:
    if isinstance(value, dict):
        here = sum(1 for k in value if k in PLAINTEXT_PASSWORD_FIELDS)
        return here + sum(plaintext_fields(v) for v in value.values())
    if isinstance(value, list):
        return sum(plaintext_fields(v) for v in value)
    return 0


def first_difference(want: Any, got: Any, where: str = "") -> str | None:
    """Where two JSON values first differ, types and object key order included; None if equal."""
    if type(want) is not type(got):
        return f"{where or '/'}: {want!r} ({type(want).__name__}) != {got!r} ({type(got).__name__})"
    if isinstance(want, dict):
        if list(want) != list(got):
            return f"{where or '/'}: keys {list(want)} != {list(got)}"
        for key in want:
            found = first_difference(want[key], got[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(want, list):
        if len(want) != len(got):
            return f"{where or '/'}: {len(want)} items != {len(got)}"
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if want == got else f"{where or '/'}: {want!r} != {got!r}"


def same_format(a: Any, b: Any) -> bool:
    """Two timestamps written in one format (digits may differ)."""
    return type(a) is type(b) and re.sub(r"\d", "0", str(a)) == re.sub(r"\d", "0", str(b))


def test_every_file_comes_back_through_postgresql(source: Path, tmp_path: Path, dsn: str) -> None:
    original = copy_root(source, tmp_path / "original")
    back = copy_root(source, tmp_path / "back")
    from_json = AeimsJsonStore(original)
    into_json = AeimsJsonStore(back)
    records = [r for entity in ENTITIES for r in from_json.load(entity)]
    assert records
    for entity in ENTITIES:
        into_json.replace_all(entity, [])
        assert into_json.load(entity) == [], entity

    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_records.upsert_records(conn, records)
        for entity in ENTITIES:
            into_json.replace_all(entity, pg_records.list_records(conn, entity))

    files = sorted(p.relative_to(original) for p in original.rglob("*.json"))
    assert Path("agents/data/operators.json") in files and len(files) >= 20
    plaintexts = 0
    for relpath in files:
        want = json.loads((original / relpath).read_text(encoding="utf-8"))
        got = json.loads((back / relpath).read_text(encoding="utf-8"))
        if relpath.name != "test_operator_credentials.json":
            plaintexts += plaintext_fields(want)
            assert plaintext_fields(got) == 0, relpath
            want = strip_plaintext(want)
        if isinstance(want, dict) and "last_updated" in want:
            assert same_format(want.pop("last_updated"), got.pop("last_updated")), relpath
        if isinstance(want, dict):
            for doc_key in CREDENTIAL_DOC_KEYS & want.keys():
                assert got[doc_key] == want[doc_key]  # kept by the file, never migrated
        difference = first_difference(want, got)  # field order included, at every depth
        assert difference is None, f"{relpath}: {difference}"
    assert plaintexts > 0  # there was plaintext to leave behind
    assert_operator_files_equal_field_by_field(original, back)


def assert_operator_files_equal_field_by_field(original: Path, back: Path) -> None:
    """Operators are one entity in two files that disagree (missing usernames, other values,
    records only one file holds): each copy of each operator comes back as it was."""
    for relpath in ("data/operators.json", "agents/data/operators.json"):
        want = json.loads((original / relpath).read_text(encoding="utf-8"))
        got = json.loads((back / relpath).read_text(encoding="utf-8"))
        if relpath.startswith("data/"):
            want, got = want["operators"], got["operators"]
        assert list(got) == list(want), relpath  # the same file keys ("0", usernames...)
        for file_key, operator in want.items():
            came_back = got[file_key]
            assert list(came_back) == list(operator), (relpath, file_key)
            for name, value in operator.items():
                assert jsonvalues.json_equal(came_back[name], value), (relpath, file_key, name)


def canonical(records: list[dict[str, Any]]) -> list[str]:
    """Records as sorted JSON texts: the order of the records is free, but not the order of
    their fields (at any depth), and 0 != 0.0 != false."""
    return sorted(json.dumps(r, ensure_ascii=False) for r in records)


def test_pg_only_lists_what_json_holds(source: Path, tmp_path: Path, dsn: str) -> None:
    """After a backfill, the layer in pg_only (reading PostgreSQL alone) lists exactly the
    JSON side's records of every entity, minus the plaintext passwords."""
    with layer_in(copy_root(source, tmp_path / "aeims"), dsn, Phase.PG_ONLY) as layer:
        assert layer.phase().phase is Phase.PG_ONLY
        for entity in ENTITIES:
            in_json = [r.without_plaintext().data for r in layer.json.load(entity)]
            assert canonical(layer.list(entity)) == canonical(in_json), entity
