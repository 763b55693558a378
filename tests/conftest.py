"""Shared fixtures: the real local stack, started once per session, and throwaway databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The environment pointing at the real local stack (`provision dev up`), started once.

    PROVISION_TEST_PG_DSN, when set, points the database tests at an existing server instead.
    """
    from provisioner.devstack.stack import DevStack

    return DevStack.default().up()


@pytest.fixture(scope="session")
def pg_dsn(request: pytest.FixtureRequest) -> str:
    """DSN of the stack's `provision` database (or of PROVISION_TEST_PG_DSN's server)."""
    return (
        os.environ.get("PROVISION_TEST_PG_DSN")
        or request.getfixturevalue("stack_env")["PROVISION_PG_DSN"]
    )


@pytest.fixture
def fresh_pg_dsn(pg_dsn: str) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg.conninfo.make_conninfo(pg_dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(pg_dsn, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
