"""Contract cases of the migration's phase steps (provisioner/migration/*_step.py), each rung
entered and left, on a copy of the project's AEIMS fixture and a real database.

The World's runs get `data_dir = <root>/aeims-<n>` (a fresh copy per arrange, as the site
cases do). A snapshot reads what the phases touch: the bytes of every data file, the archive
folder, the phase and the rung, the schema version and every data row by key and content hash
(bookkeeping tables such as phase_state's timestamps and the validation history are left out).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from provisioner.config import Settings
from provisioner.engine.step import RunContext, Step
from provisioner.migration import pg_side
from provisioner.migration.archive_step import ArchiveStep
from provisioner.migration.backfill_step import BackfillStep
from provisioner.migration.dual_write_step import DualWriteStep
from provisioner.migration.pg_only_step import PgOnlyStep
from provisioner.migration.pipelines import step_classes
from provisioner.migration.read_switch_step import ReadSwitchStep
from provisioner.migration.reconcile_step import ReconcileStep
from provisioner.migration.schema_step import SchemaStep
from provisioner.migration.stage_step import Options, StageStep
from provisioner.migration.stages import ORDER, Stage, read_marker
from provisioner.migration.validation_gate_step import ValidationGateStep
from provisioner.storage.aeims.store import AeimsJsonStore
from provisioner.storage.layer.outbox import Outbox
from provisioner.storage.layer.phase import read_phase
from tests.contract.harness import StepCase, World, tree
from tests.datalayer_support import FIXTURE_AEIMS, copy_root

EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "migrate-advance": {"from": "json_only", "to": "archived"},
    "migrate-rollback": {"from": "archived", "to": "json_only", "force": True},
    "migrate-archive-json": {},
    "migrate-unarchive": {},
    "migrate-reconcile": {},
}


class MigrationWorld(World):
    """A World whose runs know the AEIMS data folder (a fresh copy per arrange)."""

    generation = 0

    @property
    def data_dir(self) -> Path:
        return self.root / f"aeims-{self.generation}"

    @property
    def settings(self) -> Settings:
        return replace(super().settings, data_dir=self.data_dir)


def migration_world(world: World) -> MigrationWorld:
    world.__class__ = MigrationWorld
    assert isinstance(world, MigrationWorld)
    return world


def at_stage(stage: Stage, then: Any = None) -> Any:
    """Arrange: a fresh fixture copy, climbed to `stage` with the phase steps themselves."""

    def arrange(world: World) -> None:
        mw = migration_world(world)
        MigrationWorld.generation += 1
        mw.generation = MigrationWorld.generation
        copy_root(FIXTURE_AEIMS, mw.data_dir)
        classes = step_classes()
        with world.run("arrange") as ctx:
            for rung in ORDER[1 : stage.index + 1]:
                classes[rung](mw.settings, True).apply(ctx)
        if then is not None:
            then(mw)

    return arrange


def snapshot(world: World) -> dict[str, Any]:
    mw = migration_world(world)
    root = mw.data_dir
    files = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.json"))
        if ".provision" not in p.parts
    }
    backups = tree(root / "backups") if (root / "backups").exists() else None
    marker = read_marker(root)
    found: dict[str, Any] = {
        "files": files,
        "backups": backups,
        "phase": read_phase(root).value,
        "stage": marker.get("stage"),
        "archive_state": (root / ".provision" / "archive.json").exists(),
        "tables": None,
    }
    if world.dsn is not None:
        tables, _ = pg_side.schema_objects()
        present = [
            t for (t,) in world.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        found["tables"] = sorted(t for t in present if t in tables or t == "schema_migrations")
        rows: dict[str, Any] = {}
        for table in found["tables"]:
            if table in pg_side.BOOKKEEPING:
                continue
            columns = [c for c, in world.sql(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                (table,),
            )]  # fmt: skip
            if "content_hash" in columns:
                rows[table] = sorted(world.sql(f"SELECT content_hash FROM {table}"))  # noqa: S608
            else:
                rows[table] = world.sql(f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608
        found["rows"] = rows
        if "phase_state" in present:
            found["phase_state"] = world.sql("SELECT phase FROM phase_state")
    return found


def step_for(kind: type[StageStep], advancing: bool, **options: Any) -> Any:
    def build(world: World) -> Step:
        return kind(migration_world(world).settings, advancing, Options(**options))

    return build


def case(name: str, kind: type[Step], build: Any, arrange: Any, **expect: Any) -> StepCase:
    return StepCase(
        id=f"migration/{name}",
        kind=kind,
        build=build,
        arrange=arrange,
        snapshot=snapshot,
        database=True,
        **expect,
    )


def rung_cases(kind: type[StageStep], stage: Stage, slug: str) -> list[StepCase]:
    """Entering the rung from the one below, and leaving it back down."""
    return [
        case(f"{slug}/enter", kind, step_for(kind, True), at_stage(stage.previous)),
        case(f"{slug}/leave", kind, step_for(kind, False, force=True), at_stage(stage)),
        case(
            f"{slug}/already-entered", kind, step_for(kind, True), at_stage(stage), converged=True
        ),
    ]


def customer_changed_in_pg_only(world: MigrationWorld) -> None:
    """A write made in pg_only: it exists only in PostgreSQL until leaving pg_only."""
    import psycopg

    from provisioner.storage.pg import records as pg_records

    with psycopg.connect(world.dsn or "", autocommit=True) as conn:
        record = pg_records.list_records(conn, "customers")[0]
        record.data["credits"] = 4242.5
        pg_records.upsert_records(conn, [record])


def pg_only_write_kept_in_json(world: World) -> None:
    store = AeimsJsonStore(migration_world(world).data_dir)
    assert any(r.data.get("credits") == 4242.5 for r in store.load("customers"))


def schema_left_with_rows_checkpointed(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the rows were kept and the tables dropped, before the marker moved."""
    assert isinstance(step, SchemaStep)
    step.leave(ctx)


FIRST_CUSTOMER = AeimsJsonStore(FIXTURE_AEIMS).load("customers")[0].key


def json_write_waiting_in_outbox(world: MigrationWorld) -> None:
    """A write JSON took while PostgreSQL was away: in the file and in the outbox."""
    store = AeimsJsonStore(world.data_dir)
    record = next(r for r in store.load("customers"))
    record.data["credits"] = 777.0
    store.upsert("customers", [record])
    Outbox(world.data_dir / ".provision").add([("customers", record.key, "upsert")])


def reconcile_snapshot(world: World) -> Any:
    mw = migration_world(world)
    depth = Outbox(mw.data_dir / ".provision").depth()
    import psycopg

    from provisioner.storage.pg import records as pg_records

    with psycopg.connect(world.dsn or "", autocommit=True) as conn:
        records = pg_records.list_records(conn, "customers")
    return {"outbox": depth, "credits": {r.key: r.data.get("credits") for r in records}}


CASES: list[StepCase] = [
    *rung_cases(SchemaStep, Stage.SCHEMA, "schema"),
    case(
        "schema/leave-forced-with-rows",
        SchemaStep,
        step_for(SchemaStep, False, force=True),
        at_stage(Stage.BACKFILL, lambda w: _mark(w, Stage.SCHEMA)),
        partial_apply=schema_left_with_rows_checkpointed,
    ),
    *rung_cases(BackfillStep, Stage.BACKFILL, "backfill"),
    *rung_cases(DualWriteStep, Stage.DUAL_WRITE_READ_JSON, "dual-write"),
    *rung_cases(ValidationGateStep, Stage.VALIDATED, "validation-gate"),
    *rung_cases(ReadSwitchStep, Stage.DUAL_WRITE_READ_PG, "read-switch"),
    *rung_cases(PgOnlyStep, Stage.PG_ONLY, "pg-only"),
    case(
        "pg-only/leave-keeps-writes-made-in-pg-only",
        PgOnlyStep,
        step_for(PgOnlyStep, False),
        at_stage(Stage.PG_ONLY, customer_changed_in_pg_only),
        after_apply=pg_only_write_kept_in_json,
    ),
    *rung_cases(ArchiveStep, Stage.ARCHIVED, "archive"),
    StepCase(
        id="migration/reconcile/outbox-replayed",
        kind=ReconcileStep,
        build=lambda world: ReconcileStep(migration_world(world).settings),
        arrange=at_stage(Stage.DUAL_WRITE_READ_JSON, json_write_waiting_in_outbox),
        snapshot=reconcile_snapshot,
        after_rollback=lambda arranged: {
            "outbox": 0,
            "credits": {**arranged["credits"], FIRST_CUSTOMER: 777.0},
        },
        database=True,
    ),
    StepCase(
        id="migration/reconcile/nothing-pending",
        kind=ReconcileStep,
        build=lambda world: ReconcileStep(migration_world(world).settings),
        arrange=at_stage(Stage.DUAL_WRITE_READ_JSON),
        snapshot=reconcile_snapshot,
        converged=True,
        database=True,
    ),
]


def _mark(world: MigrationWorld, stage: Stage) -> None:
    from provisioner.migration.stages import write_marker

    write_marker(world.data_dir, stage, "arrange")
