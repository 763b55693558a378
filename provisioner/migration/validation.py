"""The validation gate: does PostgreSQL hold exactly what the JSON files hold?

Public API (used by `provision migrate validate`, `status` and the gate of `advance`):

    validate(target, data_dir, *, entities=None, store_result=True,
             recheck_waits=RECHECK_WAITS, batch_size=5000, workers=None) -> ValidationReport
    last_validation(target) -> ValidationSummary | None      (validation_store.py)

`target` is a DSN or an open psycopg connection with no transaction open. The report gives
the plan's lines (`report.lines()`: "145 customers validated", "0 mismatches found", "Data
integrity: 100%"), every mismatch (entity, key, field, both values with secrets as
fingerprints: `validation_compare.py`), counts per entity, orphan counts per reference
(`validation_refs.py`) and `ok`; `to_json(limit)` for `--json`. With `store_result`, the
result is stored in `migration_validations` (schema 0003) with `covered_until`, the instant
the run started: every write acknowledged before it was on both sides when they were read.

How it compares, per entity (one at a time in each process, so memory follows the biggest
JSON files, never the PostgreSQL table):
1. the JSON records are read through the data layer's store and hashed with the layer's own
   content hash (plaintext passwords left out), by worker processes a few entities ahead of
   the comparison (`validation_json.py`; `workers`: None, one per CPU, at most four; 0: here);
2. in one REPEATABLE READ, READ ONLY transaction, the JSON hashes are COPYed into a
   temporary table and PostgreSQL names the keys whose row is missing, absent from JSON, has
   another content hash, or no longer has the digest it had when a validation (or the
   backfill) last proved it (`migration_row_digests`): a row changed in any way since, even
   by hand in SQL, is not trusted on its hash (`validation_hashes.py`; keys COPY cannot carry
   as they are go the old way: every row streamed in key order through a server-side cursor
   and compared here); memberships are streamed and compared as sets;
3. every key that differs, is missing on one side, or is not proved is re-read on both sides
   and compared field by field (the row rebuilt through the layer's `to_record`; timestamps as
   instants, types otherwise exact). Rows found equal get their digest recorded;
4. a key still different is read again after a short wait, up to len(recheck_waits) times,
   inside the layer's write turn of the entity (`write_turn`): a record written while the
   validation ran (JSON first, PostgreSQL in the same turn) is then seen whole and not
   reported, however often it is written;
5. counts and orphan references of both sides are compared.

It writes nothing but its result and the row digests; it is safe against a live installation.
Raises ValidationInputError when it cannot start (no data folder, schema never applied) and
psycopg.OperationalError when PostgreSQL is down.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from provisioner.fsutil import LockBusy
from provisioner.migration.backfill import (
    BackfillInputError,
    connection,
    open_store,
    require_tables,
)
from provisioner.migration.staging import DIGESTS_TABLE, SESSION_SETTINGS, entity_sql
from provisioner.migration.storage_bridge import (
    ENTITIES,
    ENTITY_MAPS,
    AeimsJsonStore,
    JsonFileError,
    from_record,
    gc_paused,
    json_records,
    record_hash,
    strip_plaintext,
    to_record,
    write_turn,
)
from provisioner.migration.validation_compare import (
    ABSENT,
    RECORD_FIELD,
    Mismatch,
    membership_text,
    record_mismatches,
)
from provisioner.migration.validation_hashes import (
    HASH_STAGE_SQL,
    compare_hashes_in_sql,
    hashes_copy_text,
)
from provisioner.migration.validation_json import MAPPING_ERRORS, JsonSide, json_sides
from provisioner.migration.validation_refs import (
    REFERENCES,
    Reference,
    json_orphans,
    pg_orphans,
    target_values,
)
from provisioner.migration.validation_store import ValidationSummary, last_validation, save_result

__all__ = [
    "RECHECK_WAITS",
    "ValidationInputError",
    "ValidationReport",
    "ValidationSummary",
    "last_validation",
    "validate",
]

# Seconds to wait before each re-read of keys that still differ.
RECHECK_WAITS: tuple[float, ...] = (0.2, 0.5, 1.0)
_FETCH_KEYS = 1000
_TURN_SECONDS = 5.0
PRESENT = "(present)"
# The entities the plan's report always names.
_ALWAYS_REPORTED = ("customers", "operators")


class ValidationInputError(BackfillInputError):
    """The validation cannot start: the message says what is wrong and how to fix it."""


@dataclass
class EntityCheck:
    """What the validation found for one entity."""

    entity: str
    json_records: int = 0
    pg_records: int = 0
    checked: int = 0
    mismatched: int = 0
    rebuilt: int = 0
    rechecked: int = 0


@dataclass
class ValidationReport:
    data_dir: str
    started_at: datetime
    covered_until: datetime
    finished_at: datetime | None = None
    seconds: float = 0.0
    entities: dict[str, EntityCheck] = field(default_factory=dict)
    orphans: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    validation_id: int | None = None

    @property
    def records_checked(self) -> int:
        return sum(e.checked for e in self.entities.values())

    @property
    def mismatch_count(self) -> int:
        return len(self.mismatches) + len(self.errors)

    @property
    def mismatched_records(self) -> int:
        return len({(m.entity, m.key) for m in self.mismatches})

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.errors

    @property
    def integrity_percent(self) -> float:
        """Share of records with no mismatch, rounded down (never 100 with one mismatch)."""
        if self.errors:
            return 0.0
        checked = self.records_checked
        if not checked or not self.mismatches:
            return 100.0
        good = max(checked - self.mismatched_records, 0)
        return math.floor(10000 * good / checked) / 100

    def integrity_text(self) -> str:
        value = self.integrity_percent
        return "100%" if value == 100.0 else f"{value:.2f}%"

    def lines(self) -> list[str]:
        """The plan's report (cli/validate-migration.php), one line per entity with records."""
        out = []
        for name, check in self.entities.items():
            if check.checked or name in _ALWAYS_REPORTED:
                mark = "✗" if check.mismatched else "✓"
                out.append(f"{mark} {check.checked} {name} validated")
        for entity, error in self.errors.items():
            out.append(f"✗ {entity} not validated: {error}")
        count = len(self.mismatches)
        out.append(f"{'✓' if not count else '✗'} {count} mismatches found")
        out.append(f"{'✓' if self.ok else '✗'} Data integrity: {self.integrity_text()}")
        return out

    def counts_json(self) -> dict[str, Any]:
        return {
            "entities": {name: asdict(check) for name, check in self.entities.items()},
            "orphans": self.orphans,
            "errors": self.errors,
        }

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        shown = self.mismatches if limit is None else self.mismatches[:limit]
        return {
            "ok": self.ok,
            "validation_id": self.validation_id,
            "data_dir": self.data_dir,
            "started_at": self.started_at.isoformat(),
            "covered_until": self.covered_until.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": round(self.seconds, 3),
            "records_checked": self.records_checked,
            "records_per_second": round(self.records_checked / self.seconds)
            if self.seconds
            else None,
            "mismatch_count": len(self.mismatches),
            "integrity_percent": self.integrity_percent,
            **self.counts_json(),
            "mismatches": [m.to_json() for m in shown],
            "mismatches_shown": len(shown),
        }


def validate(
    target: str | psycopg.Connection,
    data_dir: Path | str,
    *,
    entities: list[str] | None = None,
    store_result: bool = True,
    recheck_waits: Iterable[float] = RECHECK_WAITS,
    batch_size: int = 5000,
    workers: int | None = None,
) -> ValidationReport:
    """Compare every record of both sides (see the module docstring)."""
    wanted = list(ENTITIES) if entities is None else [e for e in ENTITIES if e in entities]
    unknown = sorted(set(entities or ()) - set(ENTITIES))
    if unknown:
        raise ValidationInputError(
            f"unknown entity {unknown[0]!r}; known entities: {', '.join(ENTITIES)}"
        )
    store = open_store(data_dir)
    waits = tuple(recheck_waits)
    started = time.perf_counter()
    now = datetime.now(UTC)
    report = ValidationReport(str(store.data_dir), started_at=now, covered_until=now)
    with connection(target, "validate") as conn:
        require_tables(conn, "run `provision migrate backfill` (it applies the schema) first")
        run = _Run(conn, store, report, waits, batch_size)
        # The passes make millions of short-lived objects beside the parsed files' millions,
        # none in cycles: the cyclic collector would walk them all, over and over.
        with gc_paused():
            for side in json_sides(store, wanted, workers):
                run.entity(side)
        run.finish()
        report.finished_at = datetime.now(UTC)
        report.seconds = time.perf_counter() - started
        if store_result:
            run.save_digests()
            report.validation_id = save_result(conn, report)
    return report


class _Run:
    """One validation run: the per-entity passes and what they share."""

    def __init__(
        self,
        conn: psycopg.Connection,
        store: AeimsJsonStore,
        report: ValidationReport,
        waits: tuple[float, ...],
        batch_size: int,
    ) -> None:
        self.conn = conn
        self.store = store
        self.report = report
        self.waits = waits
        self.batch_size = batch_size
        self.targets: dict[str, set[str]] = {}
        self.digests: list[tuple[str, str, str, str]] = []
        self.pending_keys: dict[str, dict[str, list[Mismatch]]] = {}
        self.pending_orphans: dict[Reference, tuple[set[tuple[str, str]], set]] = {}
        self.hash_stage = False  # whether this connection has the hashes' staging table

    # -- one entity ---------------------------------------------------------------------

    def entity(self, side: JsonSide) -> None:
        entity = side.entity
        check = EntityCheck(entity)
        self.report.entities[entity] = check
        if side.error is not None:
            self.report.errors[entity] = side.error
            return
        check.json_records = side.records
        json_hashes, expected = side.hashes, side.memberships
        if side.targets is not None:
            self.targets[entity] = side.targets
        references = [r for r in REFERENCES if r.child == entity and r.target in self.targets]
        json_side = {ref: side.orphans(ref, self.targets[ref.target]) for ref in references}
        candidates, pg_side = self._scan(entity, json_hashes, expected, references, check)
        check.checked = check.pg_records + len(json_hashes)  # json_hashes: JSON-only keys now
        found = self._compare_keys(entity, sorted(candidates), check)
        if found:
            self.pending_keys[entity] = found
        for ref in references:
            self.report.orphans[ref.label] = len(json_side[ref])
            differing = json_side[ref] ^ pg_side[ref]
            if differing:
                self.pending_orphans[ref] = (differing, json_side[ref])

    def finish(self) -> None:
        """Read what still differs again after each wait (a write in flight settles), then
        report what is left."""
        for wait in self.waits:
            if not self.pending_keys and not self.pending_orphans:
                break
            time.sleep(wait)
            for entity, found in list(self.pending_keys.items()):
                check = self.report.entities[entity]
                with self._write_turn(entity):
                    again = self._compare_keys(entity, sorted(found), check)
                check.rechecked += len(found) - len(again)
                if again:
                    self.pending_keys[entity] = again
                else:
                    del self.pending_keys[entity]
            for ref, (differing, in_json) in list(self.pending_orphans.items()):
                still = self._orphans_now(ref) & differing
                if still:
                    self.pending_orphans[ref] = (still, in_json)
                else:
                    del self.pending_orphans[ref]
        for found in self.pending_keys.values():
            for key in sorted(found):
                self.report.mismatches.extend(found[key])
        for ref, (differing, in_json) in self.pending_orphans.items():
            reported = set(self.pending_keys.get(ref.child, ()))
            for key, value in sorted(differing):
                if key in reported:
                    continue  # the record's own mismatch says it already
                orphan_in_json = (key, value) in in_json
                self.report.mismatches.append(
                    Mismatch(
                        ref.child,
                        key,
                        ref.label,
                        f"{value} (orphan)" if orphan_in_json else f"{value} (resolves)",
                        f"{value} (resolves)" if orphan_in_json else f"{value} (orphan)",
                    )
                )
        order = {entity: i for i, entity in enumerate(ENTITIES)}
        self.report.mismatches.sort(key=lambda m: (order.get(m.entity, 99), m.key, m.field))
        for entity, check in self.report.entities.items():
            check.mismatched = len({m.key for m in self.report.mismatches if m.entity == entity})

    def _write_turn(self, entity: str) -> AbstractContextManager[Any]:
        """The layer's write turn of `entity`, so a write in flight is read whole on both
        sides (JSON first, PostgreSQL in the same turn). A turn not given within
        _TURN_SECONDS, or a lock file it cannot make (a read-only data folder), is read
        without: the waits between the re-reads then let the write settle."""
        stack = ExitStack()
        with suppress(LockBusy, OSError):
            stack.enter_context(write_turn(self.store.data_dir, entity, _TURN_SECONDS))
        return stack

    def _scan(
        self,
        entity: str,
        json_hashes: dict[str, str | None],
        expected: dict[str, set[tuple[Any, ...]]],
        references: list[Reference],
        check: EntityCheck,
    ) -> tuple[set[str], dict[Reference, set[tuple[str, str]]]]:
        """Stream the entity's rows and memberships; the keys that need a closer look."""
        candidates: set[str] = set()
        statements = entity_sql(entity)
        conn = self.conn
        copied = hashes_copy_text(json_hashes)
        if copied is not None and not self.hash_stage:
            with conn.transaction():
                conn.execute(HASH_STAGE_SQL)
            self.hash_stage = True
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(SESSION_SETTINGS)
            if copied is not None:
                candidates.update(compare_hashes_in_sql(conn, entity, copied, json_hashes, check))
            else:
                with conn.cursor(name=f"validate_{uuid.uuid4().hex[:12]}") as cur:
                    cur.itersize = self.batch_size
                    cur.execute(statements.scan_hashes)
                    pop = json_hashes.pop
                    rows = 0
                    for key, stored_hash, proved in cur:
                        rows += 1
                        if pop(key, None) != stored_hash or not proved:
                            candidates.add(key)
                    check.pg_records = rows
            candidates.update(json_hashes)
            mapping = ENTITY_MAPS[entity]
            if mapping.memberships is not None:
                candidates.update(self._scan_memberships(entity, expected))
            pg_side = {ref: pg_orphans(conn, ref) for ref in references}
        return candidates, pg_side

    def _scan_memberships(self, entity: str, expected: dict[str, set[tuple[Any, ...]]]) -> set:
        """Owners whose membership rows differ from what their JSON record derives."""
        mm = ENTITY_MAPS[entity].memberships
        assert mm is not None
        columns = [mm.owner_column, *(name for name, _ in mm.columns)]
        query = sql.SQL("SELECT {cols} FROM {table} ORDER BY {owner}").format(
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            table=sql.Identifier(mm.table),
            owner=sql.Identifier(mm.owner_column),
        )
        differing: set[str] = set()
        with self.conn.cursor(name=f"validate_m_{uuid.uuid4().hex[:12]}") as cur:
            cur.itersize = self.batch_size
            cur.execute(query)
            owner: str | None = None
            rows: set[tuple[Any, ...]] = set()
            for row in cur:
                if row[0] != owner:
                    if owner is not None and expected.pop(owner, set()) != rows:
                        differing.add(owner)
                    owner, rows = row[0], set()
                rows.add(tuple(row))
            if owner is not None and expected.pop(owner, set()) != rows:
                differing.add(owner)
        differing.update(key for key, rows in expected.items() if rows)
        return differing

    # -- keys read again on both sides ---------------------------------------------------

    def _compare_keys(
        self, entity: str, keys: list[str], check: EntityCheck
    ) -> dict[str, list[Mismatch]]:
        """Read `keys` now on both sides and compare them field by field."""
        found: dict[str, list[Mismatch]] = {}
        statements = entity_sql(entity)
        mm = ENTITY_MAPS[entity].memberships
        for start in range(0, len(keys), _FETCH_KEYS):
            chunk = keys[start : start + _FETCH_KEYS]
            try:
                json_now = {key: self.store.get(entity, key) for key in chunk}
            except (JsonFileError, OSError) as exc:
                self.report.errors[entity] = str(exc)
                return {}
            with self.conn.transaction():
                self.conn.execute(SESSION_SETTINGS)
                rows = self.conn.execute(statements.select_rows, [chunk]).fetchall()
                members: dict[str, set[tuple[Any, ...]]] = {}
                if mm is not None:
                    query = sql.SQL("SELECT {cols} FROM {table} WHERE {owner} = ANY(%s)").format(
                        cols=sql.SQL(", ").join(
                            sql.Identifier(c)
                            for c in [mm.owner_column, *(name for name, _ in mm.columns)]
                        ),
                        table=sql.Identifier(mm.table),
                        owner=sql.Identifier(mm.owner_column),
                    )
                    for row in self.conn.execute(query, [chunk]).fetchall():
                        members.setdefault(row[0], set()).add(tuple(row))
            pg_rows = {row[0]: row for row in rows}
            for key in chunk:
                differences = self._compare_one(
                    entity, key, json_now[key], pg_rows.get(key), members.get(key, set()), check
                )
                if differences:
                    found[key] = differences
        return found

    def _compare_one(
        self,
        entity: str,
        key: str,
        record: Any,
        row: tuple[Any, ...] | None,
        members: set[tuple[Any, ...]],
        check: EntityCheck,
    ) -> list[Mismatch]:
        if record is None and row is None:
            return []  # deleted on both sides meanwhile
        if row is None:
            return [Mismatch(entity, key, RECORD_FIELD, PRESENT, _absent_reason(record))]
        if record is None:
            return [Mismatch(entity, key, RECORD_FIELD, ABSENT, PRESENT)]
        check.rebuilt += 1
        content_hash, digest = row[-2], row[-1]
        stored = to_record(entity, row[:-2])
        out = record_mismatches(entity, key, strip_plaintext(record.data), stored.data)
        mm = ENTITY_MAPS[entity].memberships
        if mm is not None:
            wanted = {r[1]: tuple(r) for r in mm.derive(key, record.data)}
            have = {r[1]: r for r in members}
            for domain in sorted(wanted.keys() | have.keys()):
                a, b = wanted.get(domain), have.get(domain)
                if a != b:
                    out.append(
                        Mismatch(
                            entity,
                            key,
                            f"memberships.{domain}",
                            membership_text(a),
                            membership_text(b),
                        )
                    )
        try:
            holds_its_hash = record_hash(stored) == content_hash
        except MAPPING_ERRORS:
            holds_its_hash = False
        if not out and holds_its_hash:
            self.digests.append((entity, key, content_hash, digest))
        return out

    # -- orphans ---------------------------------------------------------------------------

    def _orphans_now(self, ref: Reference) -> set[tuple[str, str]]:
        """The orphans only one side has, both read again now."""
        try:
            targets = target_values(ref.target, json_records(self.store, ref.target))
            json_now = json_orphans(ref, json_records(self.store, ref.child), targets)
        except (JsonFileError, OSError):
            return set()
        with self.conn.transaction():
            conn_now = pg_orphans(self.conn, ref)
        return json_now ^ conn_now

    # -- results -----------------------------------------------------------------------------

    def save_digests(self) -> None:
        """Remember the rows proved equal, so the next validation need not rebuild them."""
        if not self.digests:
            return
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {t} (entity, key, content_hash, digest) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (entity, key) DO UPDATE "
                    "SET content_hash = EXCLUDED.content_hash, digest = EXCLUDED.digest"
                ).format(t=sql.Identifier(DIGESTS_TABLE)),
                self.digests,
            )
        self.digests = []


def _absent_reason(record: Any) -> str:
    """Why a JSON record has no row: the mapping's refusal when it has one."""
    try:
        from_record(record)
    except MAPPING_ERRORS as exc:
        return f"{ABSENT}: the record cannot be stored: {exc}"
    return ABSENT
