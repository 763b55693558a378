"""The shared clients steps ask their run for: `ctx.client(PG)` and the like.

Each is opened on first use from the run's settings and closed by the runner at the end of
the run. Database sessions carry the run's lock timeout and a statement timeout, so a step
stuck behind a row lock gives up instead of outliving `--lock-timeout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provisioner.engine.step import Client, RunContext

if TYPE_CHECKING:
    import psycopg


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def open_pg(ctx: RunContext) -> psycopg.Connection[Any]:
    """An autocommit connection to PROVISION_PG_DSN with the run's timeouts set."""
    import psycopg

    settings = ctx.settings
    if not settings.pg_dsn:
        raise RuntimeError("no database configured: set PROVISION_PG_DSN")
    options = (
        f"-c lock_timeout={_milliseconds(settings.lock_timeout)} "
        f"-c statement_timeout={_milliseconds(settings.step_statement_timeout)}"
    )
    return psycopg.connect(
        settings.pg_dsn,
        autocommit=True,
        connect_timeout=max(2, int(settings.pg_connect_timeout + 0.999)),
        options=options,
        application_name=f"provision step {ctx.run_id}",
    )


PG: Client[psycopg.Connection[Any]] = Client("postgresql", open_pg)
