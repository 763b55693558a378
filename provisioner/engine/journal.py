"""The journal: every run's steps, their before-states and undo records, written durably.

Events are appended and made durable (fsync, or a synchronously committed row) before the
runner goes on, so a run killed by SIGKILL at any point can be found, resumed or undone.
A run's state is the fold of its events. The journal lives in PostgreSQL when one is
configured, so that several provisioner hosts see the same runs, and in files otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.engine.redact import redact


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed and the run was rolled back
    ROLLED_BACK = "rolled_back"  # undone on request
    ROLLBACK_FAILED = "rollback_failed"  # manual attention needed
    INTERRUPTED = "interrupted"  # the process died; resume or roll back


class StepState(StrEnum):
    PENDING = "pending"
    PLANNED = "planned"  # journaled before apply: apply may have run in part
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


class JournalError(RuntimeError):
    """The journal cannot be read or written (the run must not go on without it)."""


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class StepRecord:
    index: int
    name: str
    state: StepState = StepState.PENDING
    change: dict[str, Any] | None = None
    undo: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class RunRecord:
    """A run as the journal knows it."""

    run_id: str
    pipeline: str
    target: str
    params: dict[str, Any]
    started_at: str
    host: str = ""
    pid: int = 0
    status: RunStatus = RunStatus.RUNNING
    finished_at: str | None = None
    steps: dict[int, StepRecord] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def step(self, index: int, name: str) -> StepRecord:
        return self.steps.setdefault(index, StepRecord(index, name))

    def apply_event(self, event: dict[str, Any]) -> None:
        """Fold one event into the record."""
        self.events.append(event)
        kind = event["event"]
        if kind == "run_finished":
            self.status = RunStatus(event["status"])
            self.finished_at = event["at"]
            return
        if kind == "run_resumed":
            self.status = RunStatus.RUNNING
            self.finished_at = None
            self.pid = event.get("pid", self.pid)
            self.host = event.get("host", self.host)
            return
        if "index" not in event:
            return
        step = self.step(event["index"], event["step"])
        if kind == "step_planned":
            step.state, step.change, step.error = StepState.PLANNED, event["change"], None
        elif kind == "step_applied":
            step.state, step.undo = StepState.APPLIED, event["undo"]
        elif kind == "step_unchanged":
            step.state = StepState.UNCHANGED
        elif kind == "step_failed":
            step.state, step.error = StepState.FAILED, event["error"]
        elif kind == "step_rolled_back":
            step.state = StepState.ROLLED_BACK
        elif kind == "step_rollback_failed":
            step.state, step.error = StepState.ROLLBACK_FAILED, event["error"]

    def summary_line(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "target": self.target,
            "status": str(self.status),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "host": self.host,
            "pid": self.pid,
        }


def start_event(run_id: str, pipeline: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "run_started",
        "run_id": run_id,
        "pipeline": pipeline,
        "target": target,
        "params": params,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "at": now_iso(),
    }


def record_from_events(events: list[dict[str, Any]]) -> RunRecord:
    first = events[0]
    if first.get("event") != "run_started":
        raise JournalError(
            f"journal of run {first.get('run_id')!r} does not start with run_started"
        )
    record = RunRecord(
        run_id=first["run_id"],
        pipeline=first["pipeline"],
        target=first["target"],
        params=first["params"],
        started_at=first["at"],
        host=first.get("host", ""),
        pid=first.get("pid", 0),
    )
    for event in events[1:]:
        record.apply_event(event)
    return record


class Journal(ABC):
    """Durable, append-only record of runs."""

    @abstractmethod
    def append(self, run_id: str, event: dict[str, Any]) -> None:
        """Write one event durably (secrets masked) before returning."""

    @abstractmethod
    def events(self, run_id: str) -> list[dict[str, Any]]:
        """All events of a run, oldest first; JournalError when the run is unknown."""

    @abstractmethod
    def run_ids(self) -> list[str]:
        """Every run id, oldest first."""

    def get(self, run_id: str) -> RunRecord:
        return record_from_events(self.events(run_id))

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        ids = self.run_ids()
        if limit is not None:
            ids = ids[-limit:]
        return [self.get(run_id) for run_id in ids]

    def close(self) -> None:  # noqa: B027 - a file journal holds nothing to release
        """Release connections."""


class FileJournal(Journal):
    """One JSON-lines file per run under `<state>/journal/`, fsync'ed after every event."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise JournalError(f"invalid run id {run_id!r}")
        return self.directory / f"{run_id}.jsonl"

    def append(self, run_id: str, event: dict[str, Any]) -> None:
        path = self._path(run_id)
        creating = not path.exists()
        if creating:
            self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(redact(event), ensure_ascii=False, sort_keys=True) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if creating:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        path = self._path(run_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise JournalError(f"no run {run_id!r} in {self.directory}") from None
        events = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                # A torn last line (power loss mid-write) is ignored; fsync'ed lines are whole.
                break
        if not events:
            raise JournalError(f"journal file {path} is empty")
        return events

    def run_ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.jsonl"))


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS provision_run_events (
    run_id   text        NOT NULL,
    seq      bigserial   NOT NULL,
    event    jsonb       NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS provision_run_events_seq ON provision_run_events (seq);
"""


class PgJournal(Journal):
    """Events as rows in PostgreSQL, each committed synchronously before the runner goes on."""

    def __init__(self, dsn: str, connect_timeout: float = 5.0) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(
                dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            )
        except psycopg.OperationalError as exc:
            raise JournalError(
                f"cannot reach PostgreSQL for the journal: {_first_line(exc)}"
            ) from None
        # Durability of each event must not depend on the server's default.
        self.conn.execute("SET synchronous_commit = on")
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(7245031)")
            self.conn.execute(_PG_SCHEMA)

    def append(self, run_id: str, event: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        self.conn.execute(
            "INSERT INTO provision_run_events (run_id, event) VALUES (%s, %s)",
            (run_id, Jsonb(redact(event))),
        )

    def events(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT event FROM provision_run_events WHERE run_id = %s ORDER BY seq", (run_id,)
        ).fetchall()
        if not rows:
            raise JournalError(f"no run {run_id!r} in the PostgreSQL journal")
        return [row[0] for row in rows]

    def run_ids(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT run_id FROM provision_run_events GROUP BY run_id ORDER BY min(seq)"
        ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self.conn.close()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
