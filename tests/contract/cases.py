"""The contract table: every step class, in the worlds it must handle.

Adding a step is adding cases here (a helper per step class keeps each case to a few lines):
the harness then checks the whole contract for it, and `test_contract.py` fails for a step
class used by a pipeline, or defined in `provisioner.steps`, that has no case.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.engine.step import RunContext, Step
from provisioner.steps.database_row import DatabaseRowStep
from provisioner.steps.rendered_file import RenderedFileStep
from tests.contract.harness import StepCase, World, table, tree

Arrange = Callable[[World], None]
Expect = Callable[[World], None]

# Parameters to build each registered pipeline with, so its step classes can be listed.
EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "demo": {"name": "alpha", "message": "hello"},
}

# --------------------------------------------------------------------------------------------
# RenderedFileStep: a file rendered from a template, with its mode and folders
# --------------------------------------------------------------------------------------------

PAGE = Path("sites/alpha/index.html")
PAGE_VARIABLES = {"name": "alpha", "message": "hello from the contract"}


def page_step(world: World) -> RenderedFileStep:
    return RenderedFileStep("page", world.root / PAGE, "demo/greeting.html.j2", PAGE_VARIABLES)


def write_page(world: World, content: str, mode: int) -> None:
    path = world.root / PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)


def page_is_rendered_with_mode(mode: int) -> Expect:
    def after_apply(world: World) -> None:
        path = world.root / PAGE
        assert path.read_text(encoding="utf-8") == page_step(world).render()
        assert path.stat().st_mode & 0o7777 == mode

    return after_apply


def killed_mid_write(step: Step, ctx: RunContext, world: World) -> None:
    """Killed inside `write_atomically`: folders made, a torn temp file beside the page."""
    assert isinstance(step, RenderedFileStep)
    step.path.parent.mkdir(parents=True, exist_ok=True)
    torn = step.render()[:40]
    (step.path.parent / f".{step.path.name}.k1lled.tmp").write_text(torn, encoding="utf-8")


def file_case(name: str, arrange: Arrange, **expect: Any) -> StepCase:
    return StepCase(
        id=f"rendered-file/{name}",
        kind=RenderedFileStep,
        build=page_step,
        arrange=arrange,
        snapshot=lambda world: tree(world.root),
        **expect,
    )


def nothing(world: World) -> None:
    """The world as it starts: an empty folder, an empty database."""


def page_with_other_content_0600_and_a_sibling(world: World) -> None:
    write_page(world, "the operator's own page\n", 0o600)
    (world.root / PAGE).with_name("other.html").write_text("a neighbour\n")


FILE_CASES = [
    file_case(
        "create-with-missing-parents",
        nothing,
        after_apply=page_is_rendered_with_mode(0o644),
        partial_apply=killed_mid_write,
    ),
    file_case(
        "update-keeps-mode-and-siblings",
        page_with_other_content_0600_and_a_sibling,
        after_apply=page_is_rendered_with_mode(0o600),
        partial_apply=killed_mid_write,
    ),
    file_case(
        "update-after-apply-finished-unjournaled",
        page_with_other_content_0600_and_a_sibling,
        after_apply=page_is_rendered_with_mode(0o600),
    ),
    file_case(
        "already-converged",
        lambda world: write_page(world, page_step(world).render(), 0o640),
        converged=True,
    ),
]

# --------------------------------------------------------------------------------------------
# DatabaseRowStep: one row of a table, its neighbours untouched
# --------------------------------------------------------------------------------------------

GREETINGS = "demo_greetings"
KEY = "alpha"
MESSAGE = "hello from the contract"
# The table as the step creates it; rows are arranged with fixed timestamps, so a rollback
# that restores a row must restore its updated_at too.
GREETINGS_DDL = (
    "CREATE TABLE demo_greetings (name text PRIMARY KEY, message text NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now())"
)
COLUMNS = ["name", "message", "updated_at"]
LONG_AGO = "2020-01-02 03:04:05.123456+00"


def row_step(world: World) -> DatabaseRowStep:
    return DatabaseRowStep("record", GREETINGS, KEY, MESSAGE)


def greetings(*rows: tuple[str, str]) -> Arrange:
    def arrange(world: World) -> None:
        world.sql(GREETINGS_DDL)
        for name, message in rows:
            world.sql(
                "INSERT INTO demo_greetings (name, message, updated_at) VALUES (%s, %s, %s)",
                (name, message, LONG_AGO),
            )

    return arrange


def row_holds_the_message(world: World) -> None:
    found = world.sql("SELECT message FROM demo_greetings WHERE name = %s", (KEY,))
    assert found == [(MESSAGE,)]


def table_created_row_not_written(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the table was created, before the row's transaction committed."""
    world.sql(GREETINGS_DDL)


def row_case(name: str, arrange: Arrange, **expect: Any) -> StepCase:
    return StepCase(
        id=f"database-row/{name}",
        kind=DatabaseRowStep,
        build=row_step,
        arrange=arrange,
        snapshot=lambda world: table(world, GREETINGS),
        database=True,
        **expect,
    )


ROW_CASES = [
    row_case(
        "table-absent",
        nothing,
        after_apply=row_holds_the_message,
        # The table is left, empty: it is shared by every row (other runs, other targets).
        after_rollback=lambda arranged: {"columns": COLUMNS, "rows": []},
        partial_apply=table_created_row_not_written,
    ),
    row_case(
        "table-absent-apply-finished-unjournaled",
        nothing,
        after_apply=row_holds_the_message,
        after_rollback=lambda arranged: {"columns": COLUMNS, "rows": []},
    ),
    row_case("row-absent", greetings(), after_apply=row_holds_the_message),
    row_case(
        "row-with-another-message", greetings((KEY, "old")), after_apply=row_holds_the_message
    ),
    row_case(
        "neighbouring-rows-untouched",
        greetings(("alpha2", "next door"), ("Alpha", "other case"), ("beta", "other")),
        after_apply=row_holds_the_message,
    ),
    row_case("already-converged", greetings((KEY, MESSAGE)), converged=True),
]


def _step_family_cases() -> list[StepCase]:
    """The cases of each step family, from `tests/contract/cases_<family>.py` (each defines
    CASES, and EXAMPLE_PARAMS for the pipelines its steps appear in)."""
    found: list[StepCase] = []
    folder = Path(__file__).parent
    for path in sorted(folder.glob("cases_*.py")):
        module = importlib.import_module(f"tests.contract.{path.stem}")
        found.extend(module.CASES)
        EXAMPLE_PARAMS.update(getattr(module, "EXAMPLE_PARAMS", {}))
    return found


CASES: list[StepCase] = [*FILE_CASES, *ROW_CASES, *_step_family_cases()]
