"""What the engine's in-process tests share: a runner on either backend, the test pipeline,
and a look at the row the pipeline writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tests.engine_pipelines  # noqa: F401 - registers the engine-test pipeline
from provisioner.config import Settings
from provisioner.engine.journal import FileJournal
from provisioner.engine.locks import FileTargetLock, PgTargetLock
from provisioner.engine.pg_journal import PgJournal
from provisioner.engine.pipeline import Pipeline, build
from provisioner.engine.runner import Runner


@pytest.fixture(params=["files", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_pg_dsn: str
) -> Iterator[dict[str, Any]]:
    """Settings plus a runner factory for one backend; steps always use the fresh database."""
    settings = Settings(state_dir=tmp_path / "state", pg_dsn=fresh_pg_dsn, lock_timeout=0.3)
    journals: list[Any] = []

    def make_runner(timeout: float | None = None, host: str | None = None) -> Runner:
        if request.param == "files":
            journal = FileJournal(settings.journal_dir)
            locks = lambda t: FileTargetLock(settings.lock_dir, t)  # noqa: E731
        else:
            journal = PgJournal(fresh_pg_dsn)
            locks = lambda t: PgTargetLock(fresh_pg_dsn, t)  # noqa: E731
        journals.append(journal)
        return Runner(settings, journal, locks, lock_timeout=timeout, host=host)

    yield {"settings": settings, "runner": make_runner, "dsn": fresh_pg_dsn, "kind": request.param}
    for journal in journals:
        journal.close()


def pipeline(work: Path, **params: Any) -> Pipeline:
    settings = Settings(state_dir=work.parent / "state")
    return build(
        "engine-test", {"dir": str(work), "name": "alpha", "message": "hello", **params}, settings
    )


def row(dsn: str, name: str = "alpha") -> str | None:
    with psycopg.connect(dsn) as conn:
        if not conn.execute("SELECT to_regclass('engine_rows')").fetchone()[0]:
            return None
        found = conn.execute("SELECT message FROM engine_rows WHERE name = %s", (name,)).fetchone()
        return found[0] if found else None
