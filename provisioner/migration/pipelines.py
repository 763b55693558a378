"""The migration's pipelines, registered with the engine (provisioner/app.py lists them).

Each is rebuilt from its journaled parameters alone (`from`, `to`, `force`, `quiet_period`), so
`provision runs resume` and `runs rollback` act on the same rungs even after the installation
moved. The target is the data folder: two migrations of one installation never interleave.

- `migrate-advance`: the steps entering each rung above `from` up to `to` (the validation gate
  again when starting on `validated`, so a stale validation is redone before the read switch);
- `migrate-rollback`: the steps leaving each rung from `from` down to above `to`;
- `migrate-archive-json` / `migrate-unarchive`: the archive rung alone, up or down;
- `migrate-reconcile`: replay the outbox and the quarantine into PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from provisioner.config import Settings
from provisioner.engine.pipeline import Pipeline, PipelineError, register
from provisioner.engine.step import Step
from provisioner.migration.stage_step import Options, StageStep
from provisioner.migration.stages import DESCRIPTIONS, ORDER, Stage, StageError, parse_stage


def step_classes() -> dict[Stage, type[StageStep]]:
    from provisioner.migration.archive_step import ArchiveStep
    from provisioner.migration.backfill_step import BackfillStep
    from provisioner.migration.dual_write_step import DualWriteStep
    from provisioner.migration.pg_only_step import PgOnlyStep
    from provisioner.migration.read_switch_step import ReadSwitchStep
    from provisioner.migration.schema_step import SchemaStep
    from provisioner.migration.validation_gate_step import ValidationGateStep

    return {
        Stage.SCHEMA: SchemaStep,
        Stage.BACKFILL: BackfillStep,
        Stage.DUAL_WRITE_READ_JSON: DualWriteStep,
        Stage.VALIDATED: ValidationGateStep,
        Stage.DUAL_WRITE_READ_PG: ReadSwitchStep,
        Stage.PG_ONLY: PgOnlyStep,
        Stage.ARCHIVED: ArchiveStep,
    }


def migration_target(settings: Settings) -> str:
    """One lock per data folder (steps refuse to run without one: see their preflight)."""
    return f"migration:{settings.data_dir or '-'}"


def _stages(params: dict[str, Any]) -> tuple[Stage, Stage]:
    try:
        return parse_stage(str(params["from"])), parse_stage(str(params["to"]))
    except StageError as exc:
        raise PipelineError(str(exc)) from None


def advance_steps(settings: Settings, source: Stage, target: Stage, options: Options) -> list[Step]:
    classes = step_classes()
    if target.index < source.index:
        raise PipelineError(
            f"--to {target.value} is behind the current phase {source.value}: "
            f"`provision migrate rollback --to {target.value}` goes back"
        )
    stages = list(ORDER[source.index + 1 : target.index + 1])
    if source == Stage.VALIDATED and target.index > source.index:
        stages.insert(0, Stage.VALIDATED)  # the gate again: a validation may have gone stale
    if not stages and source != Stage.JSON_ONLY:
        stages = [source]  # already there: the rung's own check finds nothing to do
    return [classes[stage](settings, True, options) for stage in stages]


def rollback_steps(
    settings: Settings, source: Stage, target: Stage, options: Options
) -> list[Step]:
    classes = step_classes()
    if target.index > source.index:
        raise PipelineError(
            f"--to {target.value} is ahead of the current phase {source.value}: "
            f"`provision migrate advance --to {target.value}` goes there"
        )
    stages = list(reversed(ORDER[target.index + 1 : source.index + 1]))
    return [classes[stage](settings, False, options) for stage in stages]


def _pipeline(
    name: str, params: dict[str, Any], settings: Settings, steps: list[Step], title: str
) -> Pipeline:
    _, target = _stages(params)
    return Pipeline(
        name=name,
        target=migration_target(settings),
        params=params,
        steps=steps,
        title=title,
        next_steps=[
            f"Now at {target.value}: {DESCRIPTIONS[target]}",
            "See where it stands: provision migrate status",
        ],
    )


@register("migrate-advance")
def migrate_advance(params: dict[str, Any], settings: Settings) -> Pipeline:
    source, target = _stages(params)
    options = Options.from_params(params)
    steps = advance_steps(settings, source, target, options)
    return _pipeline("migrate-advance", params, settings, steps,
                     f"Migrating AEIMS storage: {source.value} -> {target.value}")  # fmt: skip


@register("migrate-rollback")
def migrate_rollback(params: dict[str, Any], settings: Settings) -> Pipeline:
    source, target = _stages(params)
    options = Options.from_params(params)
    steps = rollback_steps(settings, source, target, options)
    return _pipeline("migrate-rollback", params, settings, steps,
                     f"Rolling AEIMS storage back: {source.value} -> {target.value}")  # fmt: skip


@register("migrate-archive-json")
def migrate_archive(params: dict[str, Any], settings: Settings) -> Pipeline:
    params = {**params, "from": Stage.PG_ONLY.value, "to": Stage.ARCHIVED.value}
    steps = advance_steps(settings, Stage.PG_ONLY, Stage.ARCHIVED, Options.from_params(params))
    return _pipeline("migrate-archive-json", params, settings, steps, "Archiving the JSON files")


@register("migrate-unarchive")
def migrate_unarchive(params: dict[str, Any], settings: Settings) -> Pipeline:
    params = {**params, "from": Stage.ARCHIVED.value, "to": Stage.PG_ONLY.value}
    steps = rollback_steps(settings, Stage.ARCHIVED, Stage.PG_ONLY, Options.from_params(params))
    return _pipeline("migrate-unarchive", params, settings, steps, "Restoring the JSON files")


@register("migrate-reconcile")
def migrate_reconcile(params: dict[str, Any], settings: Settings) -> Pipeline:
    from provisioner.migration.reconcile_step import ReconcileStep

    return Pipeline(
        name="migrate-reconcile",
        target=migration_target(settings),
        params=params,
        steps=[ReconcileStep(settings)],
        title="Replaying the outbox and the quarantine into PostgreSQL",
        next_steps=["See what is left: provision data health"],
    )
