"""Shared helpers for the data layer's tests: an AEIMS root to write into, a migrated database."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.phase import Phase
from provisioner.storage.model import ENTITIES
from provisioner.storage.pg import records as pg_records
from provisioner.storage.pg.schema_versions import apply_migrations

REPO = Path(__file__).resolve().parents[1]
SHARED_AEIMS = REPO.parent / "shared" / "aeims" / "data"
FIXTURE_AEIMS = REPO / "tests" / "fixtures" / "aeims"


def copy_root(source: Path, dest: Path) -> Path:
    """A writable copy of an AEIMS application root (the shared one is read-only)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("MANIFEST.txt", "README.md"))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return dest


def migrate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_migrations(conn)


def backfill(layer: DataLayer) -> None:
    """Copy every JSON record into PostgreSQL (the migration's backfill does this for real)."""
    assert layer.pg_dsn
    with psycopg.connect(layer.pg_dsn, autocommit=True) as conn:
        for entity in ENTITIES:
            records = layer.json.load(entity)
            if records:
                pg_records.upsert_records(conn, records)


def layer_in(root: Path, dsn: str | None, phase: Phase, **kwargs: object) -> DataLayer:
    layer = DataLayer(root, dsn, **kwargs)  # type: ignore[arg-type]
    if phase is not Phase.JSON_ONLY:
        backfill(layer)
    layer.set_phase(phase, "tests")
    return layer


def pg_record(dsn: str, entity: str, key: str) -> dict | None:
    with psycopg.connect(dsn) as conn:
        found = pg_records.get_record(conn, entity, key)
    return None if found is None else found.data


def closed_port_dsn() -> str:
    """A DSN whose port refuses connections (nothing listens there)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"host=127.0.0.1 port={port} user=postgres dbname=provision connect_timeout=1"


@contextmanager
def layers_closed_after(monkeypatch: Any) -> Iterator[None]:
    """Every DataLayer opened meanwhile is closed at the end (before a test's database is
    dropped: a pool left to the garbage collector outlives its database)."""
    opened: list[DataLayer] = []
    init = DataLayer.__init__

    def init_and_track(layer: DataLayer, *args: Any, **kwargs: Any) -> None:
        init(layer, *args, **kwargs)
        opened.append(layer)

    monkeypatch.setattr(DataLayer, "__init__", init_and_track)
    try:
        yield
    finally:
        for layer in opened:
            layer.close()
