"""The PostgreSQL schema and its migration runner, on a real PostgreSQL."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from provisioner.storage.pg import schema_versions as migrations
from provisioner.storage.pg.maps import ENTITY_MAPS
from provisioner.storage.pg.schema_versions import (
    MigrationChecksumError,
    MigrationError,
    apply_migrations,
    current_version,
    pending_migrations,
)


@pytest.fixture
def conn(fresh_pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def migrated(conn: psycopg.Connection) -> psycopg.Connection:
    apply_migrations(conn)
    return conn


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    ).fetchall()
    return {r[0] for r in rows}


# --- the runner ----------------------------------------------------------------------------------


def test_migrations_apply_in_order_and_are_recorded(conn: psycopg.Connection) -> None:
    assert current_version(conn) == 0
    assert pending_migrations(conn) == [
        "0001_core",
        "0002_views",
        "0003_migration_state",
        "0004_drop_dead_tables",
    ]

    applied = apply_migrations(conn)

    assert applied == ["0001_core", "0002_views", "0003_migration_state", "0004_drop_dead_tables"]
    rows = conn.execute(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    ).fetchall()
    assert [(v, n) for v, n, _, _ in rows] == [
        (1, "0001_core"),
        (2, "0002_views"),
        (3, "0003_migration_state"),
        (4, "0004_drop_dead_tables"),
    ]
    for version, name, checksum, applied_at in rows:
        on_disk = (migrations.SCHEMA_DIR / f"{name}.sql").read_bytes()
        assert checksum == hashlib.sha256(on_disk).hexdigest(), version
        assert applied_at is not None
    assert current_version(conn) == 4


def test_rerunning_applies_nothing(migrated: psycopg.Connection) -> None:
    before = migrated.execute("SELECT version, applied_at FROM schema_migrations").fetchall()

    assert apply_migrations(migrated) == []
    assert pending_migrations(migrated) == []
    assert (
        migrated.execute("SELECT version, applied_at FROM schema_migrations").fetchall() == before
    )


def test_a_failing_migration_rolls_back_is_reported_and_can_be_fixed(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE first_table (id int);")
    broken = _write(
        tmp_path,
        "0002_broken.sql",
        "CREATE TABLE half_done (id int);\nINSERT INTO half_done VALUES (1);\nSELECT 1/0;",
    )
    _write(tmp_path, "0003_after.sql", "CREATE TABLE after_table (id int);")

    with pytest.raises(MigrationError) as failure:
        apply_migrations(conn, tmp_path)

    message = str(failure.value)
    assert (
        "0002_broken.sql" in message and "rolled back" in message and "division by zero" in message
    )
    assert failure.value.applied == ["0001_first"]
    # The good one before it stays; the broken one left nothing; the one after never ran.
    assert {"first_table"} <= _tables(conn)
    assert not {"half_done", "after_table"} & _tables(conn)
    assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
    assert current_version(conn) == 1

    broken.write_text("CREATE TABLE half_done (id int);")
    assert apply_migrations(conn, tmp_path) == ["0002_broken", "0003_after"]
    assert {"half_done", "after_table"} <= _tables(conn)


def test_an_edited_applied_migration_is_refused_before_anything_runs(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    first = _write(tmp_path, "0001_first.sql", "CREATE TABLE first_table (id int);")
    apply_migrations(conn, tmp_path)
    first.write_text("CREATE TABLE first_table (id bigint);")
    _write(tmp_path, "0002_second.sql", "CREATE TABLE second_table (id int);")

    with pytest.raises(MigrationChecksumError, match=r"0001_first\.sql was changed"):
        apply_migrations(conn, tmp_path)
    with pytest.raises(MigrationChecksumError):
        pending_migrations(conn, tmp_path)

    assert "second_table" not in _tables(conn)
    assert current_version(conn) == 1


def test_a_database_newer_than_the_files_is_refused(
    conn: psycopg.Connection, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE first_table (id int);")
    second = _write(tmp_path, "0002_second.sql", "CREATE TABLE second_table (id int);")
    apply_migrations(conn, tmp_path)
    second.unlink()

    with pytest.raises(MigrationError, match=r"0002_second.*does not know"):
        apply_migrations(conn, tmp_path)


@pytest.mark.parametrize(
    ("names", "complaint"),
    [
        (["1_short.sql"], "not a migration file name"),
        (["0001_Upper.sql"], "not a migration file name"),
        (["0000_zero.sql"], "start at 0001"),
        (["0001_one.sql", "0001_two.sql"], "share version 0001"),
    ],
)
def test_badly_named_migration_files_are_refused(
    conn: psycopg.Connection, tmp_path: Path, names: list[str], complaint: str
) -> None:
    for name in names:
        _write(tmp_path, name, "SELECT 1;")

    with pytest.raises(MigrationError, match=complaint):
        apply_migrations(conn, tmp_path)
    assert current_version(conn) == 0


def test_a_connection_inside_a_transaction_is_refused(fresh_pg_dsn: str) -> None:
    with psycopg.connect(fresh_pg_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(MigrationError, match="no open transaction"):
            apply_migrations(conn)


def test_concurrent_appliers_apply_each_migration_once(fresh_pg_dsn: str, tmp_path: Path) -> None:
    for name in ("0001_core.sql", "0002_views.sql"):
        shutil.copy(migrations.SCHEMA_DIR / name, tmp_path / name)
    # A slow third migration keeps the first applier holding the lock while the others wait.
    _write(tmp_path, "0003_slow.sql", "SELECT pg_sleep(0.2); CREATE TABLE slow_done (id int);")
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def applier() -> None:
        try:
            with psycopg.connect(fresh_pg_dsn, autocommit=True) as own:
                start.wait()
                results.append(apply_migrations(own, tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=applier) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    applied = [name for result in results for name in result]
    assert sorted(applied) == ["0001_core", "0002_views", "0003_slow"]
    with psycopg.connect(fresh_pg_dsn) as check:
        assert check.execute("SELECT count(*) FROM schema_migrations").fetchone() == (3,)


def test_a_migration_waiting_on_a_busy_table_gives_up_instead_of_queueing_traffic(
    conn: psycopg.Connection, fresh_pg_dsn: str, tmp_path: Path
) -> None:
    _write(tmp_path, "0001_table.sql", "CREATE TABLE busy (id int);")
    apply_migrations(conn, tmp_path)
    _write(tmp_path, "0002_alter.sql", "ALTER TABLE busy ADD COLUMN note text;")

    with psycopg.connect(fresh_pg_dsn) as reader:
        reader.execute("SELECT * FROM busy")  # an open transaction holding a lock on the table
        with pytest.raises(MigrationError, match="lock timeout"):
            apply_migrations(conn, tmp_path, lock_timeout=0.2)
        reader.rollback()

    assert current_version(conn) == 1
    assert apply_migrations(conn, tmp_path) == ["0002_alter"]


# --- the schema ----------------------------------------------------------------------------------

LAYER_TABLES = {"phase_state"}
DEAD_TABLES = {"outbox", "legacy_ids"}  # created by 0001, dropped by 0004
MEMBERSHIP_TABLES = {"customer_sites", "operator_sites"}
MIGRATION_TABLES = {"migration_validations", "migration_row_digests"}  # 0003


def test_there_are_25_tables_one_per_entity_plus_memberships_and_the_layers_own(
    migrated: psycopg.Connection,
) -> None:
    entity_tables = {m.table for m in ENTITY_MAPS.values()}
    expected = entity_tables | MEMBERSHIP_TABLES | LAYER_TABLES

    assert len(expected) == 25
    assert _tables(migrated) == expected | MIGRATION_TABLES | {"schema_migrations"}


@pytest.fixture
def before_0004(conn: psycopg.Connection, tmp_path: Path) -> psycopg.Connection:
    """The schema as it was before 0004 dropped the dead tables."""
    for path in sorted(migrations.SCHEMA_DIR.glob("*.sql")):
        if path.name < "0004":
            shutil.copy(path, tmp_path / path.name)
    apply_migrations(conn, tmp_path)
    return conn


def test_0004_drops_the_dead_tables_and_nothing_else(before_0004: psycopg.Connection) -> None:
    before = _tables(before_0004)
    assert before >= DEAD_TABLES

    assert apply_migrations(before_0004) == ["0004_drop_dead_tables"]

    assert _tables(before_0004) == before - DEAD_TABLES


def test_every_mapped_column_exists_with_the_mapped_type(migrated: psycopg.Connection) -> None:
    for mapping in ENTITY_MAPS.values():
        rows = migrated.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            [mapping.table],
        ).fetchall()
        actual = dict(rows)
        expected = dict(zip(mapping.written_columns, mapping.written_types, strict=True))
        expected["stored_at"] = "timestamp with time zone"
        assert actual == expected, mapping.entity


def test_every_entity_table_keeps_extra_and_placement_as_non_null_objects(
    migrated: psycopg.Connection,
) -> None:
    for mapping in ENTITY_MAPS.values():
        for column in ("extra", "placement"):
            row = migrated.execute(
                "SELECT is_nullable, column_default FROM information_schema.columns "
                "WHERE table_name = %s AND column_name = %s",
                [mapping.table, column],
            ).fetchone()
            assert row == ("NO", "'{}'::jsonb"), (mapping.table, column)
        with pytest.raises(psycopg.errors.CheckViolation):
            migrated.execute(
                f"INSERT INTO {mapping.table} ({mapping.key_column}, extra, content_hash) "  # noqa: S608
                "VALUES ('k', '[]', 'h')"
            )


def test_primary_keys_are_the_aeims_text_ids_and_no_column_is_a_uuid(
    migrated: psycopg.Connection,
) -> None:
    uuid_columns = migrated.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type = 'uuid'"
    ).fetchall()
    assert uuid_columns == []
    for mapping in ENTITY_MAPS.values():
        row = migrated.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary",
            [mapping.table],
        ).fetchall()
        assert row == [(mapping.key_column, "text")], mapping.table


def test_ip_columns_are_text_because_the_files_hold_unknown(migrated: psycopg.Connection) -> None:
    inet = migrated.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type = 'inet'"
    ).fetchall()
    assert inet == []
    migrated.execute(
        "INSERT INTO customer_activity (activity_id, ip, content_hash) VALUES ('a', 'unknown', 'h')"
    )


def test_lookup_indexes_are_on_the_login_rule_expressions(migrated: psycopg.Connection) -> None:
    rows = migrated.execute(
        "SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename IN ('customers', 'operators', 'accounts')"
    ).fetchall()
    definitions = dict(rows)
    folded = "lower((btrim({}, ' \t\n\r\x0b\x0c'::text) COLLATE \"C\"))"
    for table in ("customers", "operators"):
        assert folded.format("username") in definitions[f"{table}_login_username_idx"]
        assert folded.format("email") in definitions[f"{table}_login_email_idx"]
    assert folded.format("login") in definitions["accounts_login_login_idx"]
    assert folded.format("email") in definitions["accounts_login_email_idx"]
    assert "btrim(operator_id, " in definitions["operators_login_id_idx"]


def test_memberships_reference_their_owner_but_not_sites(migrated: psycopg.Connection) -> None:
    for table, owner in (("customer_sites", "customers"), ("operator_sites", "operators")):
        targets = migrated.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'f'",
            [table],
        ).fetchall()
        assert targets == [(owner,)]
    # A membership to a domain no site has is accepted.
    migrated.execute("INSERT INTO customers (customer_id, content_hash) VALUES ('c1', 'h')")
    migrated.execute("INSERT INTO customer_sites VALUES ('c1', 'demo.example.com', false, true)")


def test_phase_state_is_one_row_with_a_known_phase(migrated: psycopg.Connection) -> None:
    assert migrated.execute("SELECT phase FROM phase_state").fetchall() == [("json_only",)]
    migrated.execute("UPDATE phase_state SET phase = 'dual_write_read_json', changed_by = 'test'")

    with pytest.raises(psycopg.errors.CheckViolation):
        migrated.execute("UPDATE phase_state SET phase = 'postgres_mostly'")
    with pytest.raises(psycopg.errors.UniqueViolation):
        migrated.execute("INSERT INTO phase_state (phase, changed_by) VALUES ('pg_only', 'test')")
    with pytest.raises(psycopg.errors.CheckViolation):
        migrated.execute(
            "INSERT INTO phase_state (singleton, phase, changed_by) VALUES (false, 'pg_only', 't')"
        )


def test_outbox_accepted_upserts_and_deletes_only(before_0004: psycopg.Connection) -> None:
    migrated = before_0004
    migrated.execute(
        "INSERT INTO outbox (entity, key, op, payload) VALUES ('customers', 'c1', 'upsert', '{}')"
    )
    migrated.execute("INSERT INTO outbox (entity, key, op) VALUES ('customers', 'c1', 'delete')")
    row = migrated.execute(
        "SELECT id, attempts, last_error, created_at IS NOT NULL FROM outbox ORDER BY id LIMIT 1"
    ).fetchone()
    assert row is not None and row[1:] == (0, None, True)

    with pytest.raises(psycopg.errors.CheckViolation):
        migrated.execute(
            "INSERT INTO outbox (entity, key, op, payload) VALUES ('c', 'k', 'merge', '{}')"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        migrated.execute(
            "INSERT INTO outbox (entity, key, op) VALUES ('customers', 'c1', 'upsert')"
        )


def test_legacy_ids_mapped_one_legacy_id_to_one_key(before_0004: psycopg.Connection) -> None:
    migrated = before_0004
    migrated.execute(
        "INSERT INTO legacy_ids VALUES ('operators', 'nycdiamond', 'op_68eb76056f6e9')"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        migrated.execute("INSERT INTO legacy_ids VALUES ('operators', 'nycdiamond', 'op_other')")
