"""Where runs are journaled and locked: PostgreSQL when configured, local files otherwise."""

from __future__ import annotations

from provisioner.config import Settings
from provisioner.engine.journal import FileJournal, Journal, PgJournal
from provisioner.engine.locks import FileTargetLock, PgTargetLock, TargetLock
from provisioner.engine.runner import LockFactory, Reporter, Runner


def open_journal(settings: Settings) -> Journal:
    if settings.pg_dsn:
        return PgJournal(settings.pg_dsn)
    return FileJournal(settings.journal_dir)


def lock_factory(settings: Settings) -> LockFactory:
    if settings.pg_dsn:
        dsn = settings.pg_dsn
        return lambda target: PgTargetLock(dsn, target)
    directory = settings.lock_dir
    return lambda target: FileTargetLock(directory, target)


def open_runner(
    settings: Settings, reporter: Reporter | None = None, lock_timeout: float | None = None
) -> Runner:
    """A Runner on the configured journal and locks; close it with `runner.journal.close()`."""
    return Runner(settings, open_journal(settings), lock_factory(settings), reporter, lock_timeout)


__all__ = ["TargetLock", "lock_factory", "open_journal", "open_runner"]
