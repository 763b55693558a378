"""A circuit breaker for PostgreSQL, so an outage does not cost every request a timeout.

Closed: requests use the database. A connection failure opens it: for `retry_seconds`
every request falls back at once. Then one request (and only one) is let through to try;
success closes the breaker, failure opens it for another window.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum

from provisioner.storage.events import emit


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # one trial request is in flight


class CircuitBreaker:
    def __init__(self, retry_seconds: float, clock: object = time.monotonic) -> None:
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._fallbacks = 0
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May this request use the database? At most one per window while open."""
        if self._state == BreakerState.CLOSED:
            return True
        with self._lock:
            if self._state == BreakerState.CLOSED:
                return True
            if (
                self._state == BreakerState.OPEN
                and self._clock() - self._opened_at >= self.retry_seconds
            ):
                self._state = BreakerState.HALF_OPEN
                return True
            self._fallbacks += 1
            return False

    def succeeded(self) -> bool:
        """Record a working database; True when this closed an open breaker."""
        if self._state == BreakerState.CLOSED:
            return False
        with self._lock:
            if self._state == BreakerState.CLOSED:
                return False
            outage = self._clock() - self._opened_at
            fallbacks, self._fallbacks = self._fallbacks, 0
            self._state = BreakerState.CLOSED
            self.last_error = None
        emit("breaker_closed", outage_seconds=round(outage, 3), fallbacks_while_open=fallbacks)
        return True

    def failed(self, error: str) -> None:
        """Record a connection failure: open (again) for one retry window."""
        with self._lock:
            was = self._state
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self.last_error = error
        if was == BreakerState.CLOSED:
            emit("breaker_open", logging.WARNING, error=error, retry_seconds=self.retry_seconds)
        else:
            emit("breaker_reopened", logging.WARNING, error=error)
