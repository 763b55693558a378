"""The shared clients steps ask their run for: `ctx.client(PG)` and the like.

Each is opened on first use from the run's settings and closed by the runner at the end of
the run. Database sessions carry the run's lock timeout and a statement timeout, so a step
stuck behind a row lock gives up instead of outliving `--lock-timeout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provisioner.engine.step import Client, RunContext

if TYPE_CHECKING:
    import httpx
    import psycopg

    from provisioner.config import Settings
    from provisioner.storage import DataLayer


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


def route53_client(settings: Settings) -> Any:
    """A Route53 client on the AWS credential chain (or the local stack's endpoint)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5)
    return boto3.client("route53", endpoint_url=settings.aws_endpoint, config=config)


def open_route53(ctx: RunContext) -> Any:
    return route53_client(ctx.settings)


def open_http(ctx: RunContext) -> httpx.Client:
    """An HTTP client with bounded timeouts, verifying TLS with the system's trust store."""
    import httpx

    return httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)


def open_data_layer(ctx: RunContext) -> DataLayer:
    """The AEIMS data layer, in whatever migration phase the installation is in."""
    from provisioner.storage import DataLayer

    return DataLayer.from_settings(ctx.settings)


ROUTE53: Client[Any] = Client("route53", open_route53)
HTTP: Client[httpx.Client] = Client("http", open_http)
DATA_LAYER: Client[DataLayer] = Client("data layer", open_data_layer)
