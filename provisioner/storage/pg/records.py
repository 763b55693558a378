"""Records in PostgreSQL: upserts keyed by id with a content hash, deletes, reads, lookups.

Re-sending an unchanged record changes nothing (not even the row's xmin); the rows of a write
travel as one JSON parameter to one statement per entity (docs/data-layer.md).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from provisioner.storage.logins import normalize_login, normalize_login_id
from provisioner.storage.model import ENTITIES, StoredRecord
from provisioner.storage.pg.columns import RecordMappingError
from provisioner.storage.pg.maps import _MAPS, ENTITY_MAPS, entity_map
from provisioner.storage.pg.rows import RowImage, _rows_json, from_record, to_record
from provisioner.storage.pg.statements import _ids, _statements

# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------


def _images_by_entity(records: Iterable[StoredRecord]) -> dict[str, list[RowImage]]:
    """Every record converted first, so one bad record fails the call before any write."""
    groups: dict[str, list[RowImage]] = {}
    for record in records:
        image = from_record(record)
        groups.setdefault(record.entity, []).append(image)
    return {entity: groups[entity] for entity in ENTITIES if entity in groups}


def _rewrite_memberships(
    cur: psycopg.Cursor[Any], entity: str, images: dict[str, RowImage], changed: list[str]
) -> None:
    """Replace the derived membership rows of the records whose row changed."""
    stmts = _statements(entity)
    if not changed or stmts.membership_delete is None or stmts.membership_insert is None:
        return
    cur.execute(stmts.membership_delete, [changed])
    rows = [row for key in changed for row in images[key].memberships]
    if rows:
        cur.executemany(stmts.membership_insert, rows)


@functools.cache
def _row_layout(
    entity: str,
) -> tuple[tuple[str, ...], tuple[tuple[int, Callable[[Any], Any]], ...]]:
    """The written columns of `entity`, and the positions (in a written row) of the values that
    need a JSON form (timestamps, numerics) with its converter."""
    mapping = ENTITY_MAPS[entity]
    converted = tuple(
        (index, column.type.to_json)
        for index, column in enumerate(mapping.columns, start=1)
        if column.type.to_json is not None
    )
    return tuple(mapping.written_columns), converted


def _rows_param(entity: str, images: Iterable[RowImage]) -> str:
    """The rows of `images` as the JSON array of objects json_to_recordset reads."""
    names, converted = _row_layout(entity)
    rows = []
    for image in images:
        values = [image.key, *image.values, image.stored_extra, image.placement, image.content_hash]
        for index, to_json in converted:
            value = values[index]
            if value is not None:
                values[index] = to_json(value)
        rows.append(dict(zip(names, values, strict=True)))
    return _rows_json(rows)


def _latest_by_key(images: list[RowImage]) -> list[RowImage]:
    """One image per key, the last one given (what a batch means), in key order."""
    latest = {image.key: image for image in images}
    return [latest[key] for key in sorted(latest)]


def _write_group(cur: psycopg.Cursor[Any], entity: str, images: list[RowImage]) -> int:
    """Upsert the rows of one entity in one statement; rewrite memberships of changed rows."""
    stmts = _statements(entity)
    images = _latest_by_key(images)
    param = [_rows_param(entity, images)]
    if stmts.membership_delete is None:
        # No memberships: the number of rows inserted or updated is all the caller needs.
        cur.execute(stmts.upsert_rows_count, param)
        return cur.rowcount
    cur.execute(stmts.upsert_rows, param)
    changed = [row[0] for row in cur.fetchall()]
    _rewrite_memberships(cur, entity, {image.key: image for image in images}, changed)
    return len(changed)


def _statement_is_atomic(conn: psycopg.Connection) -> bool:
    """Whether one statement sent now is atomic with no BEGIN/COMMIT of ours: it commits alone
    on an autocommit connection, and is part of the caller's transaction when one is open."""
    return conn.autocommit or conn.info.transaction_status == TransactionStatus.INTRANS


def upsert_records(conn: psycopg.Connection, records: Iterable[StoredRecord]) -> int:
    """Insert or update `records` (any entities) atomically; return the rows written.

    Idempotent: a record whose content hash and field order match its row is not written at
    all (the count excludes it, and the row keeps its xmin); with one key several times, the
    last record is the one stored. Memberships are rewritten, in the same transaction, only for
    the records whose row changed. One statement per entity: records of one entity without
    memberships (messages, the hot path) are a single statement, run without a transaction of
    its own when the connection is in autocommit or already in a transaction; anything else
    runs in one transaction (a savepoint within the caller's).
    """
    groups = _images_by_entity(records)
    if not groups:
        return 0
    if len(groups) == 1 and _statement_is_atomic(conn):
        ((entity, images),) = groups.items()
        if _statements(entity).membership_delete is None:
            with conn.cursor() as cur:
                return _write_group(cur, entity, images)
    written = 0
    with conn.transaction(), conn.cursor() as cur:
        for entity, images in groups.items():
            written += _write_group(cur, entity, images)
    return written


def upsert_record(conn: psycopg.Connection, record: StoredRecord) -> bool:
    """Write one record with as few round trips as possible; True when its row changed.

    For entities without memberships (messages, the hot path) this is a single statement, so
    on an autocommit connection it commits on its own with no extra BEGIN/COMMIT.
    """
    image = from_record(record)
    stmts = _statements(record.entity)
    param = [_rows_param(record.entity, (image,))]
    if stmts.membership_delete is None:
        return conn.execute(stmts.upsert_rows_count, param).rowcount == 1
    with conn.transaction(), conn.cursor() as cur:
        changed = cur.execute(stmts.upsert_rows_count, param).rowcount == 1
        if changed:
            _rewrite_memberships(cur, record.entity, {image.key: image}, [image.key])
    return changed


def copy_records(conn: psycopg.Connection, records: Iterable[StoredRecord]) -> int:
    """Bulk form of upsert_records for backfills: COPY into a temporary table, then one upsert.

    Same result and same idempotence as upsert_records (the last record wins when a key repeats);
    returns the rows inserted or changed.
    """
    groups = _images_by_entity(records)
    written = 0
    with conn.transaction(), conn.cursor() as cur:
        for entity, images in groups.items():
            mapping, stmts = ENTITY_MAPS[entity], _statements(entity)
            stage = sql.Identifier(f"stage_{mapping.table}_{uuid.uuid4().hex[:12]}")
            cur.execute(
                sql.SQL(
                    "CREATE TEMPORARY TABLE {stage} (LIKE {table} INCLUDING DEFAULTS, _seq bigint) "
                    "ON COMMIT DROP"
                ).format(stage=stage, table=sql.Identifier(mapping.table))
            )
            columns = [*mapping.written_columns, "_seq"]
            copy_stmt = sql.SQL("COPY {stage} ({cols}) FROM STDIN").format(
                stage=stage, cols=_ids(columns)
            )
            with cur.copy(copy_stmt) as copy:
                copy.set_types(
                    [
                        "text",
                        *(c.type.copy_type for c in mapping.columns),
                        "jsonb",
                        "jsonb",
                        "text",
                        "int8",
                    ]
                )
                for seq, image in enumerate(images):
                    copy.write_row([*image.params(), seq])
            cur.execute(
                sql.SQL(
                    "INSERT INTO {table} ({cols}) SELECT DISTINCT ON ({pk}) {cols} FROM {stage} "
                    "ORDER BY {pk}, _seq DESC {tail}"
                ).format(
                    table=sql.Identifier(mapping.table),
                    cols=_ids(mapping.written_columns),
                    pk=sql.Identifier(mapping.key_column),
                    stage=stage,
                    tail=stmts.on_conflict,
                )
            )
            changed = [row[0] for row in cur.fetchall()]
            last = {image.key: image for image in images}
            _rewrite_memberships(cur, entity, last, changed)
            cur.execute(sql.SQL("DROP TABLE {stage}").format(stage=stage))
            written += len(changed)
    return written


def delete_record(conn: psycopg.Connection, entity: str, key: str) -> bool:
    """Delete one record (its memberships go with it); True when it existed."""
    entity_map(entity)
    return conn.execute(_statements(entity).delete, [str(key)]).rowcount == 1


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


def get_record(conn: psycopg.Connection, entity: str, key: str) -> StoredRecord | None:
    """The record stored under `key`, exactly as it was given (minus plaintext), or None."""
    entity_map(entity)
    row = conn.execute(_statements(entity).select_one, [str(key)]).fetchone()
    return None if row is None else to_record(entity, row)


def iter_records(
    conn: psycopg.Connection, entity: str, batch_size: int = 1000
) -> Iterator[StoredRecord]:
    """Every record of `entity` in key order, streamed through a server-side cursor.

    The cursor lives in a transaction (a savepoint inside one already open) that ends when the
    iteration does: consume it fully or close it.
    """
    entity_map(entity)
    with (
        conn.transaction(),
        conn.cursor(name=f"records_{entity}_{uuid.uuid4().hex[:8]}") as cur,
    ):
        cur.itersize = batch_size
        cur.execute(_statements(entity).select_all)
        for row in cur:
            yield to_record(entity, row)


def list_records(conn: psycopg.Connection, entity: str) -> list[StoredRecord]:
    """Every record of `entity`, in key order."""
    return list(iter_records(conn, entity))


def count(conn: psycopg.Connection, entity: str) -> int:
    """How many records `entity` holds."""
    entity_map(entity)
    row = conn.execute(_statements(entity).count).fetchone()
    return int(row[0]) if row else 0


def find_by_login(conn: psycopg.Connection, entity: str, login: Any) -> StoredRecord | None:
    """The record a login names, by THE lookup rule shared with the JSON side.

    customers: username, then email; operators: id (exact), then username, then email;
    accounts: the login (the key), then email. Usernames, emails and logins compare after
    normalize_login (case-insensitive for ASCII, trimmed; an int username matches its string
    form). One indexed statement. When several records share a login, the JSON side returns the
    first in file order and this side the lowest key; the files hold no such duplicates.
    """
    mapping = entity_map(entity)
    stmts = _statements(entity)
    if stmts.find is None:
        raise RecordMappingError(
            f"{entity} has no logins; find_by_login works on "
            f"{', '.join(m.entity for m in _MAPS if m.login_columns)}"
        )
    wanted = normalize_login(login)
    wanted_id = normalize_login_id(login) if mapping.login_id_column else None
    if wanted is None and wanted_id is None:
        return None
    params = {"login": wanted, "login_id": wanted_id}
    row = conn.execute(stmts.find, params).fetchone()
    return None if row is None else to_record(mapping.entity, row)
