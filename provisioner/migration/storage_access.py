"""Everything the migration's phases use from the data layer, imported in this one place.

The storage package is the data layer's; the migration only drives it. Keeping every import
of it here means a reshape of that package changes one file of the migration, not ten.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg

from provisioner.storage import jsonvalues
from provisioner.storage.aeims.catalog import NOT_ENTITY_FILES
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.datalayer import DataLayer
from provisioner.storage.layer.errors import DataUnavailable
from provisioner.storage.layer.outbox import Outbox
from provisioner.storage.layer.phase import (
    EffectivePhase,
    Phase,
    PhaseError,
    effective_phase,
    phase_file,
    read_phase,
    write_phase,
)
from provisioner.storage.layer.quarantine import Quarantine
from provisioner.storage.model import ENTITIES, PLAINTEXT_PASSWORD_FIELDS, StoredRecord
from provisioner.storage.pg import maps as pg_maps
from provisioner.storage.pg import records as pg_records
from provisioner.storage.pg.schema_versions import (
    SCHEMA_DIR,
    MigrationError,
    apply_migrations,
    current_version,
    pending_migrations,
)

__all__ = [
    "ENTITIES",
    "NOT_ENTITY_FILES",
    "PLAINTEXT_PASSWORD_FIELDS",
    "SCHEMA_DIR",
    "AeimsJsonStore",
    "DataLayer",
    "DataUnavailable",
    "EffectivePhase",
    "MigrationError",
    "Outbox",
    "Phase",
    "PhaseError",
    "Quarantine",
    "StoredRecord",
    "apply_migrations",
    "copy_records",
    "count_records",
    "current_version",
    "data_files",
    "effective_phase",
    "entity_table",
    "entity_tables",
    "entity_turn",
    "iter_pg_records",
    "json_equal",
    "pending_migrations",
    "phase_file",
    "read_phase",
    "state_dir",
    "write_phase",
]

copy_records = pg_records.copy_records
json_equal = jsonvalues.json_equal
iter_pg_records = pg_records.iter_records
count_records = pg_records.count


def entity_table(entity: str) -> str:
    """The PostgreSQL table holding `entity`'s records."""
    return pg_maps.entity_map(entity).table


def entity_key_column(entity: str) -> str:
    return pg_maps.entity_map(entity).key_column


def entity_tables() -> list[str]:
    """Every table the data layer's records live in: each entity's, and the derived
    membership tables (customer_sites, operator_sites)."""
    tables = [entity_table(entity) for entity in ENTITIES]
    return [*tables, "customer_sites", "operator_sites"]


def state_dir(data_dir: Path) -> Path:
    """The data layer's own folder beside the data (phase, outbox, locks)."""
    return data_dir / ".provision"


def data_files(data_dir: Path) -> list[Path]:
    """Every AEIMS JSON file the layer knows of (each entity's, and the plaintext test
    credentials PHP owns), existing or not, in a stable order."""
    store = AeimsJsonStore(data_dir)
    found: list[Path] = []
    for entity in ENTITIES:
        for path in store.file_paths(entity):
            if path not in found:
                found.append(path)
    found.extend(data_dir / rel for rel in NOT_ENTITY_FILES)
    return found


def entity_turn(layer: DataLayer, entity: str) -> AbstractContextManager[int]:
    """The entity's write turn every writer of the layer takes (all processes of the host),
    so a bulk rewrite of the entity never interleaves with a write of the layer."""
    return layer._ordered(entity)


def open_layer(data_dir: Path, dsn: str | None) -> DataLayer:
    return DataLayer(data_dir, dsn)


def pg_keys(conn: psycopg.Connection[Any], entity: str) -> Iterator[str]:
    """Every key PostgreSQL holds for `entity` (streamed)."""
    from psycopg import sql

    mapping = pg_maps.entity_map(entity)
    query = sql.SQL("SELECT {key} FROM {table}").format(
        key=sql.Identifier(mapping.key_column), table=sql.Identifier(mapping.table)
    )
    with conn.cursor() as cur:
        for (key,) in cur.execute(query):
            yield str(key)


def delete_pg_record(conn: psycopg.Connection[Any], entity: str, key: str) -> bool:
    return pg_records.delete_record(conn, entity, key)
