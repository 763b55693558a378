"""One contract test for every step, as pgroll's op_common_test and certbot's dns_test_common.

A step's behaviour is described by a table of `StepCase`s: how to build it, how to arrange the
world before it runs, how to read ("snapshot") the part of the world it touches, and what to
expect after `apply` and after `rollback`. `verify_step_contract` runs one case through the
whole contract, in the order the runner uses the step:

1. `check` is pure: the world is unchanged, and a second `check` gives the same Change;
2. the Change can be journaled (JSON) and says what it does (a non-empty summary);
3. `apply` converges: its undo can be journaled, `after_apply` holds, a second `check` finds
   nothing, and `apply` again changes nothing;
4. `rollback(undo)` restores the arranged world exactly, and rolling back twice is harmless;
5. from the same arranged world, an `apply` cut short (`partial_apply`) is undone by
   `rollback(undo_from_change(change))`, as `provision runs rollback` does after a SIGKILL;
6. `keep_before` returns a Change that can be journaled, leaves the world alone, and keeps
   its copies once.

Undo records and Changes go through JSON before they are used, and rollbacks run on a step
rebuilt from its parameters in a new RunContext: that is what another process has to work
with when it resumes or undoes a run from the journal.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from provisioner.config import Settings
from provisioner.engine.checkpoint import Checkpoints
from provisioner.engine.step import Change, RunContext, Step, Undo


@dataclass
class World:
    """The real things a case's step acts on: a folder of files, and maybe a database.

    `root` starts empty and holds every file a case's step touches; the run's own state
    (checkpoints) lives beside it in `state_dir`, so a snapshot of `root` sees only the world.
    """

    root: Path
    state_dir: Path
    dsn: str | None = None
    _conn: psycopg.Connection[Any] | None = field(default=None, repr=False)

    @classmethod
    @contextmanager
    def open(cls, tmp_path: Path, dsn: str | None) -> Iterator[World]:
        world = cls(root=tmp_path / "world", state_dir=tmp_path / "state", dsn=dsn)
        world.root.mkdir()
        try:
            yield world
        finally:
            if world._conn is not None:
                world._conn.close()

    @property
    def settings(self) -> Settings:
        return Settings(state_dir=self.state_dir, pg_dsn=self.dsn)

    def sql(
        self, query: str | sql.Composable, params: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement on the world's own connection (autocommit); its rows, if any."""
        if self.dsn is None:
            raise RuntimeError("this case has no database: give its StepCase database=True")
        if self._conn is None:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        cursor = self._conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []

    @contextmanager
    def run(self, run_id: str) -> Iterator[RunContext]:
        """A RunContext as the runner builds one for run `run_id`, its clients closed after."""
        ctx = RunContext(
            run_id=run_id,
            target="contract",
            params={},
            settings=self.settings,
            checkpoints=Checkpoints(self.state_dir / "checkpoints", run_id),
        )
        try:
            yield ctx
        finally:
            ctx.close_clients()

    def reset(self) -> None:
        """Back to nothing, to arrange a case again: an empty folder, an empty public schema."""
        shutil.rmtree(self.root)
        self.root.mkdir()
        if self.dsn is not None:
            self.sql("DROP SCHEMA public CASCADE")
            self.sql("CREATE SCHEMA public")


# --------------------------------------------------------------------------------------------
# Snapshots: reading the world a step touches
# --------------------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every folder, file and link under `root`: folders and their modes, files' bytes and modes.

    Hidden files count: a temp file left behind by a killed write is part of the world.
    """
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            found[name] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return found


def table(world: World, name: str) -> dict[str, Any] | None:
    """A table's columns and every row (all columns, timestamps included); None when absent."""
    if not world.sql("SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0]:
        return None
    columns = [
        row[0]
        for row in world.sql(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (name,),
        )
    ]
    rows = world.sql(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name)))
    return {"columns": columns, "rows": sorted(rows, key=repr)}


# --------------------------------------------------------------------------------------------
# The table of cases and the contract
# --------------------------------------------------------------------------------------------


def apply_and_lose_the_undo(step: Step, ctx: RunContext, world: World) -> None:
    """A process killed after `apply` finished but before its undo record was journaled."""
    step.apply(ctx)


@dataclass(frozen=True)
class StepCase:
    """One row of the contract table: a step, a world before it, and what to expect.

    - `kind`: the step class under test (the suite fails for a step class without a case);
    - `build(world)`: the step, built from plain parameters as a pipeline factory does;
    - `arrange(world)`: set up the world before the run (the folder and database start empty);
    - `snapshot(world)`: read everything the step may touch, as comparable plain values;
    - `after_apply(world)`: assertions on the world once `apply` is done (optional);
    - `after_rollback(arranged)`: the snapshot expected after a rollback, given the arranged
      one (default: the arranged snapshot itself, i.e. rollback restores the world exactly);
    - `partial_apply(step, ctx, world)`: an `apply` cut short, undone from the journaled Change
      (default: the whole `apply`, whose undo record is then lost);
    - `converged`: the arranged world already matches, so `check` must find nothing to do;
    - `database`: the case needs a PostgreSQL database (`world.dsn`, `world.sql`).
    """

    id: str
    kind: type[Step]
    build: Callable[[World], Step]
    arrange: Callable[[World], None]
    snapshot: Callable[[World], Any]
    after_apply: Callable[[World], None] | None = None
    after_rollback: Callable[[Any], Any] | None = None
    partial_apply: Callable[[Step, RunContext, World], None] = apply_and_lose_the_undo
    converged: bool = False
    database: bool = False

    def expected_after_rollback(self, arranged: Any) -> Any:
        return arranged if self.after_rollback is None else self.after_rollback(arranged)


def journaled(value: Any, what: str) -> Any:
    """`value` as another process reads it back from the journal (strict JSON)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{what} cannot be journaled as JSON: {exc}") from None


def journaled_change(change: Change, what: str) -> Change:
    return Change.from_json(journaled(change.as_json(), what))


def verify_step_contract(case: StepCase, world: World) -> None:
    """Run `case` through the whole step contract (see the module's docstring)."""

    def snapshot() -> Any:
        return case.snapshot(world)

    def keep_before(step: Step, ctx: RunContext, change: Change, arranged: Any) -> Change:
        """(6) `keep_before` as the runner calls it, just before journaling the Change."""
        kept = step.keep_before(ctx, change)
        assert isinstance(kept, Change), f"keep_before returned a {type(kept).__name__}"
        assert snapshot() == arranged, "keep_before changed the world"
        first = journaled_change(kept, "the Change from keep_before")
        again = journaled_change(step.keep_before(ctx, change), "the Change from keep_before")
        assert again == first, "keep_before kept another before-state the second time"
        return first

    case.arrange(world)
    arranged = snapshot()
    step = case.build(world)
    assert type(step) is case.kind, f"case builds a {type(step).__name__}, not a {case.kind}"

    # (1) check is pure, and says the same thing twice.
    with world.run("contract-apply") as ctx:
        change = step.check(ctx)
        assert snapshot() == arranged, "check changed the world"
        assert step.check(ctx) == change, "a second check on the same world gave another answer"

        if case.converged:
            assert change is None, f"the world is already converged, yet check says {change}"
            journaled(step.apply(ctx), "apply's undo record")
            assert snapshot() == arranged, "apply on a converged world changed it"
            return
        assert change is not None, "check found nothing to do in a world arranged to need it"

        # (2) the Change can be journaled and says what it does.
        assert isinstance(change.summary, str) and change.summary.strip(), "empty summary"
        journaled_change(change, "the Change from check")
        # (6) keep_before, called as the runner calls it: just before journaling.
        keep_before(step, ctx, change, arranged)

        # (3) apply converges.
        undo: Undo = journaled(step.apply(ctx), "apply's undo record")
        if case.after_apply is not None:
            case.after_apply(world)
        applied = snapshot()
        assert applied != arranged, "apply changed nothing, yet check said it would"
        assert step.check(ctx) is None, "check still finds work after apply"
        step.apply(ctx)
        assert snapshot() == applied, "apply again on a converged world changed it"

    # (4) rollback restores the arranged world; a second rollback is harmless. The step is
    # rebuilt from its parameters, as another process undoing the run from its journal does.
    expected = case.expected_after_rollback(arranged)
    with world.run("contract-apply") as ctx:
        case.build(world).rollback(ctx, undo)
    assert snapshot() == expected, "rollback did not restore the world as it was"
    with world.run("contract-apply") as ctx:
        case.build(world).rollback(ctx, undo)
    assert snapshot() == expected, "a second rollback changed the world"

    # (5) an apply cut short is undone from the Change journaled before it.
    world.reset()
    case.arrange(world)
    arranged = snapshot()
    step = case.build(world)
    with world.run("contract-partial") as ctx:
        planned = step.check(ctx)
        assert planned is not None, "check found nothing to do in the arranged world"
        planned = keep_before(step, ctx, planned, arranged)
        case.partial_apply(step, ctx, world)
    with world.run("contract-partial") as ctx:
        rebuilt = case.build(world)
        undo = journaled(rebuilt.undo_from_change(planned), "undo_from_change's undo record")
        rebuilt.rollback(ctx, undo)
    assert snapshot() == case.expected_after_rollback(arranged), (
        "rollback from the journaled Change did not undo an apply cut short"
    )
