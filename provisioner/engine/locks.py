"""Locks on a run's target: one run per target at a time, waits bounded.

With PostgreSQL configured, session advisory locks let runs on several provisioner hosts
coordinate; without it, `flock` on a file per target does the same on one host. Both are
released by the operating system or the server when the holder dies, so a killed run never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

POLL_SECONDS = 0.1


class LockTimeout(RuntimeError):
    """Another run holds the target and did not release it within the wait."""


def _owner(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another run"
    return f"run {owner.get('run_id')} (pid {owner.get('pid')} on {owner.get('host')})"


class TargetLock(ABC):
    """An exclusive lock on one target, held for the whole run."""

    def __init__(self, target: str) -> None:
        self.target = target

    @abstractmethod
    def acquire(self, run_id: str, timeout: float) -> None:
        """Take the lock, waiting at most `timeout` seconds; LockTimeout names the holder."""

    @abstractmethod
    def release(self) -> None: ...

    @abstractmethod
    def is_held_elsewhere(self) -> bool:
        """True when some live process holds the lock (used to tell running from interrupted)."""


def _wait(try_once: Any, timeout: float) -> bool:
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
        self._fd: int | None = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self, run_id: str, timeout: float) -> None:
        fd = self._open()

        def try_once() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not _wait(try_once, timeout):
            holder = self._read_owner()
            os.close(fd)
            raise LockTimeout(
                f"target {self.target!r} is locked by {_describe(holder)}; waited {timeout:g} s. "
                "Wait for it to finish, or raise --lock-timeout / PROVISION_LOCK_TIMEOUT"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner(run_id)).encode(), 0)
        self._fd = fd

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def is_held_elsewhere(self) -> bool:
        if not self.path.exists():
            return False
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)


def advisory_key(target: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, the same on every host."""
    digest = hashlib.blake2b(f"provision:{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgTargetLock(TargetLock):
    """A session advisory lock held on a connection of its own for the run's duration."""

    def __init__(self, dsn: str, target: str) -> None:
        super().__init__(target)
        self.dsn = dsn
        self.key = advisory_key(target)
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def acquire(self, run_id: str, timeout: float) -> None:
        conn = self._connect()
        conn.execute(
            "SELECT set_config('application_name', %s, false)", (f"provision run {run_id}",)
        )

        def try_once() -> bool:
            return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0])

        if not _wait(try_once, timeout):
            holder = conn.execute(
                "SELECT a.application_name, a.client_addr::text, a.pid FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                "AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
                (self.key,),
            ).fetchone()
            conn.close()
            who = holder[0] if holder and holder[0] else "another run"
            raise LockTimeout(
                f"target {self.target!r} is locked by {who}; waited {timeout:g} s. "
                "Wait for it to finish, or raise --lock-timeout / PROVISION_LOCK_TIMEOUT"
            )
        self._conn = conn

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            finally:
                self._conn.close()
                self._conn = None

    def is_held_elsewhere(self) -> bool:
        conn = self._connect()
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
            if got:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            return not got
        finally:
            conn.close()
