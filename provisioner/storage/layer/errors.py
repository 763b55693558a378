"""Errors the data layer's modules share."""

from __future__ import annotations


class DataUnavailable(RuntimeError):
    """PostgreSQL is needed (pg_only) and unavailable; nothing was written."""


class PgDown(Exception):
    """Internal: the breaker is open (`attempted` False) or the connection failed."""

    def __init__(self, reason: str, attempted: bool) -> None:
        super().__init__(reason)
        self.attempted = attempted
