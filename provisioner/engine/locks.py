"""Locks on a run's target: one run per target at a time, waits bounded, loss detected.

With PostgreSQL configured, session advisory locks let runs on several provisioner hosts
coordinate; without it, `flock` on a file per target does the same on one host. Both are
released by the operating system or the server when the holder dies, so a killed run never
leaves a stale lock behind. A lock can also be lost while held (its connection killed, its
file removed): the runner calls `verify` before every step and journal write, and stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.engine.errors import RunBlocked, UsageError
from provisioner.engine.redact import redact_dsn
from provisioner.fsutil import FileLock, LockBusy

POLL_SECONDS = 0.1


class LockTimeout(RunBlocked):
    """Another run holds the target and did not release it within the wait."""


class LockLost(RunBlocked):
    """The run's lock was lost while held; another run may hold the target now."""


class LockUnavailable(UsageError):
    """The lock cannot be taken at all (its database unreachable, its folder unwritable)."""


def _owner(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another run"
    return f"run {owner.get('run_id')} (pid {owner.get('pid')} on {owner.get('host')})"


def _check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout < 0:
        raise UsageError(f"a lock timeout must be a finite number of seconds >= 0, not {timeout}")
    return float(timeout)


class TargetLock(ABC):
    """An exclusive lock on one target, held for the whole run."""

    def __init__(self, target: str) -> None:
        self.target = target

    @abstractmethod
    def acquire(self, run_id: str, timeout: float) -> None:
        """Take the lock, waiting at most `timeout` seconds; LockTimeout names the holder."""

    @abstractmethod
    def verify(self) -> None:
        """LockLost unless this process still holds the lock."""

    @abstractmethod
    def release(self) -> None:
        """Let go of the lock; never raises (a lost lock is already let go)."""

    @abstractmethod
    def is_held_elsewhere(self) -> bool:
        """True when some live process holds the lock (used to tell running from interrupted)."""

    def _timed_out(self, holder: str, timeout: float) -> LockTimeout:
        return LockTimeout(f"target {self.target!r} is locked by {holder}; waited {timeout:g} s")

    def _lost(self, how: str) -> LockLost:
        return LockLost(
            f"lost the lock on target {self.target!r} ({how}); the run stopped before its "
            "next step, and another run may hold the target now"
        )


def _wait(try_once: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if try_once():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class FileTargetLock(TargetLock):
    """flock on `<state>/locks/<target>.lock`; the file also names the holder."""

    def __init__(self, directory: Path, target: str) -> None:
        super().__init__(target)
        digest = hashlib.sha256(target.encode()).hexdigest()[:8]
        self.path = directory / f"{_SAFE.sub('_', target)[:80]}-{digest}.lock"
        self._lock = FileLock(self.path)

    def _unusable(self, exc: OSError) -> LockUnavailable:
        return LockUnavailable(
            f"cannot use the lock file {self.path} ({exc.strerror or exc}); "
            "set PROVISION_STATE_DIR to a writable folder"
        )

    def acquire(self, run_id: str, timeout: float) -> None:
        timeout = _check_timeout(timeout)
        try:
            self._lock.acquire(timeout)
        except LockBusy:
            raise self._timed_out(_describe(self._read_owner()), timeout) from None
        except OSError as exc:
            raise self._unusable(exc) from None
        fd = self._lock.fd
        assert fd is not None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner(run_id)).encode(), 0)

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def verify(self) -> None:
        fd = self._lock.fd
        if fd is None:
            raise self._lost("it was never taken or already released")
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            raise self._lost(f"its file {self.path} was removed or replaced")

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._lock.release()

    def is_held_elsewhere(self) -> bool:
        try:
            return self._lock.held_elsewhere()
        except OSError as exc:
            raise self._unusable(exc) from None


def advisory_key(target: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, the same on every host."""
    digest = hashlib.blake2b(f"provision:{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_HOLDS_KEY = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = %s"
)


class PgTargetLock(TargetLock):
    """A session advisory lock held on a connection of its own for the run's duration."""

    def __init__(self, dsn: str, target: str, connect_timeout: float = 5.0) -> None:
        super().__init__(target)
        self.dsn = dsn
        self.key = advisory_key(target)
        self.connect_timeout = connect_timeout
        self._conn: Any = None

    def _connect(self, run_id: str = "") -> Any:
        import psycopg

        from provisioner.engine.pg_journal import connect_error

        try:
            return psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, int(self.connect_timeout)),
                application_name=f"provision run {run_id}" if run_id else "provision",
            )
        except psycopg.Error as exc:
            raise LockUnavailable(connect_error(exc, self.dsn, "the target lock")) from None

    def acquire(self, run_id: str, timeout: float) -> None:
        import psycopg

        timeout = _check_timeout(timeout)
        conn = self._connect(run_id)

        def try_once() -> bool:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            return bool(row and row[0])

        try:
            got = _wait(try_once, timeout)
            if not got:
                holder = conn.execute(
                    "SELECT a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                    (self.key,),
                ).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise LockUnavailable(
                f"cannot take the lock on target {self.target!r}: {redact_dsn(str(exc))}"
            ) from None
        if not got:
            conn.close()
            raise self._timed_out(holder[0] if holder and holder[0] else "another run", timeout)
        self._conn = conn

    def verify(self) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            raise self._lost("its connection is closed")
        try:
            row = self._conn.execute(_HOLDS_KEY, (self.key,)).fetchone()
        except psycopg.Error:
            raise self._lost("its connection to PostgreSQL died") from None
        if not row or not row[0]:
            raise self._lost("PostgreSQL no longer holds it for this run")

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except Exception:  # noqa: S110 - a dead connection has released the lock already
            pass
        finally:
            conn.close()

    def is_held_elsewhere(self) -> bool:
        conn = self._connect()
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
            if got:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            return not got
        finally:
            conn.close()
