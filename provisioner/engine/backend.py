"""Where runs are journaled and locked: PostgreSQL or local files, as the settings choose."""

from __future__ import annotations

from provisioner.config import Settings
from provisioner.engine.errors import UsageError
from provisioner.engine.journal import FileJournal, Journal
from provisioner.engine.locks import FileTargetLock, PgTargetLock, TargetLock
from provisioner.engine.runner import LockFactory, Reporter, Runner


def uses_postgres(settings: Settings) -> bool:
    """`journal = "auto"` follows pg_dsn; "files" keeps runs local even with a database."""
    if settings.journal == "files":
        return False
    if settings.journal == "postgres" and not settings.pg_dsn:
        raise UsageError("PROVISION_JOURNAL=postgres needs PROVISION_PG_DSN")
    return bool(settings.pg_dsn)


def open_journal(settings: Settings) -> Journal:
    if uses_postgres(settings):
        from provisioner.engine.pg_journal import PgJournal

        assert settings.pg_dsn
        return PgJournal(settings.pg_dsn, connect_timeout=max(5.0, settings.pg_connect_timeout))
    return FileJournal(settings.journal_dir)


def lock_factory(settings: Settings) -> LockFactory:
    if uses_postgres(settings):
        dsn = settings.pg_dsn or ""
        return lambda target: PgTargetLock(dsn, target)
    directory = settings.lock_dir
    return lambda target: FileTargetLock(directory, target)


def open_runner(
    settings: Settings, reporter: Reporter | None = None, lock_timeout: float | None = None
) -> Runner:
    """A Runner on the configured journal and locks; close it with `runner.journal.close()`."""
    return Runner(
        settings,
        open_journal(settings),
        lock_factory(settings),
        reporter,
        lock_timeout,
        host=settings.host_name or None,
    )


__all__ = ["TargetLock", "lock_factory", "open_journal", "open_runner", "uses_postgres"]
