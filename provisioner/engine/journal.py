"""The journal: every run's steps, their before-states and undo records, written durably.

Events are appended and made durable (fsync, or a synchronously committed row) before the
runner goes on, so a run killed by SIGKILL at any point can be found, resumed or undone.
A run's state is the fold of its events (`RunRecord.apply_event`). The journal lives in
PostgreSQL when one is configured and chosen, so that several provisioner hosts see the same
runs, and in files otherwise.

What a rollback undoes is decided by the fold, per step:
- the step's Change is the first one the run journaled for it, never replaced: it holds the
  state found before the run touched the step;
- an attempt of a step that was journaled as planned but never as applied (the process died
  inside `apply`, or `apply` raised) was cut short; from then on the step is undone with
  `undo_from_change(first Change)`, whatever a later attempt returned, because only the first
  before-state is the world as it was;
- otherwise it is undone with the undo record of its first finished `apply`;
- a step found converged on resume after a cut-short attempt counts as applied by this run;
- a successful rollback of a step ends its attempts: a later resume starts afresh from the
  world the rollback restored.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from provisioner.engine.errors import UsageError
from provisioner.engine.redact import redact
from provisioner.fsutil import append_durably


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed and the run was rolled back
    FAILED_KEPT = "failed_kept"  # a step failed; what the run made was kept for inspection
    ROLLED_BACK = "rolled_back"  # undone on request
    ROLLBACK_FAILED = "rollback_failed"  # manual attention needed
    INTERRUPTED = "interrupted"  # the process died; resume or roll back
    UNREADABLE = "unreadable"  # the run's journal cannot be read


class StepState(StrEnum):
    PENDING = "pending"
    PLANNED = "planned"  # journaled before apply: apply may have run in part
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


# States in which this run may have changed the step's part of the world.
MAY_HAVE_CHANGED = frozenset(
    {StepState.APPLIED, StepState.PLANNED, StepState.FAILED, StepState.ROLLBACK_FAILED}
)
# States in which an attempt of the step is still open (not finished, not undone).
_OPEN_ATTEMPT = frozenset({StepState.PLANNED, StepState.FAILED, StepState.ROLLBACK_FAILED})


class JournalError(UsageError):
    """The journal cannot be read, or holds no such run."""


class JournalUnavailable(JournalError):
    """The journal cannot be written: the run must not go on without it."""


class UnjournalableValue(JournalError):
    """A value cannot be written to the journal (not JSON, NaN, a lone surrogate, NUL)."""


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_run_id() -> str:
    """Sortable to the millisecond, so two runs started in one second list in order."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}.{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id or ""):
        raise JournalError(
            f"{run_id[:40]!r} is not a run id; the list of runs shows them"
            if isinstance(run_id, str)
            else "a run id is required"
        )
    return run_id


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def encode_event(event: dict[str, Any]) -> str:
    """The event as one JSON line, secrets masked; refuses what either backend cannot store."""
    try:
        text = json.dumps(redact(event), ensure_ascii=False, sort_keys=True, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UnjournalableValue(f"cannot journal {event.get('event')}: {reason}") from None
    if "\\u0000" in text:
        raise UnjournalableValue(f"cannot journal {event.get('event')}: it holds a NUL character")
    return text


@dataclass
class StepRecord:
    index: int
    name: str
    state: StepState = StepState.PENDING
    change: dict[str, Any] | None = None  # the first Change journaled: the state before
    undo: dict[str, Any] | None = None  # the first finished apply's undo, this attempt series
    cut_short: bool = False  # an attempt was journaled as planned and never finished
    error: str | None = None

    @property
    def attempt_open(self) -> bool:
        """This run began changing the step and has neither finished nor undone it."""
        return self.change is not None and self.state in _OPEN_ATTEMPT

    @property
    def may_have_changed(self) -> bool:
        return self.change is not None and self.state in MAY_HAVE_CHANGED

    def _planned(self, change: dict[str, Any]) -> None:
        if self.state in _OPEN_ATTEMPT and self.change is not None:
            self.cut_short = True  # the previous attempt never reached step_applied
        if self.change is None:
            self.change = change
        self.state, self.error = StepState.PLANNED, None

    def _applied(self, undo: dict[str, Any] | None, recovered: bool) -> None:
        if recovered:
            self.cut_short = True
        if self.undo is None:
            self.undo = undo
        self.state, self.error = StepState.APPLIED, None

    def _unchanged(self) -> None:
        if self.attempt_open:
            # Journals written before this rule: a converged re-check after an attempt that
            # was cut short means that attempt finished its work.
            self._applied(None, recovered=True)
        else:
            self.state = StepState.UNCHANGED

    def _rolled_back(self) -> None:
        self.state, self.error = StepState.ROLLED_BACK, None
        self.undo, self.cut_short = None, False


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
    step_names: list[str] | None = None  # as journaled at the start (None: an older journal)
    scopes: list[str] | None = None
    locks: list[str] | None = None
    error: str | None = None  # why the journal of an unreadable run could not be read
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
            step._planned(event["change"])
        elif kind == "step_applied":
            step._applied(event.get("undo"), bool(event.get("recovered")))
        elif kind == "step_unchanged":
            step._unchanged()
        elif kind == "step_failed":
            if step.change is not None and step.state in _OPEN_ATTEMPT:
                step.cut_short = True
            step.state, step.error = StepState.FAILED, event["error"]
        elif kind == "step_rolled_back":
            step._rolled_back()
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


def start_event(
    run_id: str,
    pipeline: str,
    target: str,
    params: dict[str, Any],
    step_names: list[str] | None = None,
    scopes: list[str] | None = None,
    locks: list[str] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "run_started",
        "run_id": run_id,
        "pipeline": pipeline,
        "target": target,
        "params": params,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "at": now_iso(),
    }
    if step_names is not None:
        event.update(steps=step_names, scopes=scopes, locks=locks)
    return event


def record_from_events(events: list[dict[str, Any]]) -> RunRecord:
    first = events[0]
    if first.get("event") != "run_started":
        raise JournalError(
            f"journal of run {first.get('run_id')!r} does not start with run_started"
        )
    try:
        record = RunRecord(
            run_id=first["run_id"],
            pipeline=first["pipeline"],
            target=first["target"],
            params=first["params"],
            started_at=first["at"],
            host=first.get("host", ""),
            pid=first.get("pid", 0),
            step_names=first.get("steps"),
            scopes=first.get("scopes"),
            locks=first.get("locks"),
        )
        for event in events[1:]:
            record.apply_event(event)
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError(f"journal of run {first.get('run_id')!r} is malformed ({exc})") from None
    return record


def unreadable_record(run_id: str, error: str) -> RunRecord:
    """A placeholder that lets `runs list` show a broken run beside the good ones."""
    return RunRecord(
        run_id=run_id,
        pipeline="?",
        target="?",
        params={},
        started_at="",
        status=RunStatus.UNREADABLE,
        error=error,
    )


class Journal(ABC):
    """Durable, append-only record of runs."""

    def append(self, run_id: str, event: dict[str, Any]) -> None:
        """Write one event durably (secrets masked) before returning."""
        self._write(check_run_id(run_id), encode_event(event))

    @abstractmethod
    def _write(self, run_id: str, line: str) -> None:
        """Store one encoded event durably; JournalUnavailable when it cannot."""

    @abstractmethod
    def events(self, run_id: str) -> list[dict[str, Any]]:
        """All events of a run, oldest first; JournalError when the run is unknown."""

    @abstractmethod
    def run_ids(self) -> list[str]:
        """Every run id, oldest first."""

    def check_writable(self) -> None:  # noqa: B027 - a backend with nothing to check
        """JournalUnavailable when a run could not be journaled (checked before it starts)."""

    def get(self, run_id: str) -> RunRecord:
        return record_from_events(self.events(check_run_id(run_id)))

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """The most recent runs; one whose journal cannot be read is listed as unreadable."""
        ids = self.run_ids()
        if limit is not None:
            ids = ids[-limit:]
        records = []
        for run_id in ids:
            try:
                records.append(self.get(run_id))
            except JournalError as exc:
                records.append(unreadable_record(run_id, str(exc)))
        return records

    def close(self) -> None:  # noqa: B027 - a file journal holds nothing to release
        """Release connections."""


class FileJournal(Journal):
    """One JSON-lines file per run under `<state>/journal/`, fsync'ed after every event.

    Each event starts on its own line, so a line torn by a process killed mid-append is
    followed by whole events; readers skip a line that does not parse.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, run_id: str) -> Path:
        return self.directory / f"{check_run_id(run_id)}.jsonl"

    def check_writable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.directory.is_dir() or not os.access(self.directory, os.W_OK | os.X_OK):
                raise PermissionError(13, "not writable")
        except OSError as exc:
            raise JournalUnavailable(self._unwritable(exc)) from None

    def _unwritable(self, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        return (
            f"cannot write the journal in {self.directory} ({reason}); "
            "set PROVISION_STATE_DIR to a writable folder"
        )

    def _write(self, run_id: str, line: str) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            append_durably(self._path(run_id), (line + "\n").encode("utf-8"), own_line=True)
        except OSError as exc:
            raise JournalUnavailable(self._unwritable(exc)) from None

    def events(self, run_id: str) -> list[dict[str, Any]]:
        path = self._path(run_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise JournalError(f"no run {run_id!r} in {self.directory}") from None
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror or exc}") from None
        events = []
        for raw in data.splitlines():
            try:
                event = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                continue  # a line torn by a process killed mid-append
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                events.append(event)
        if not events:
            raise JournalError(f"journal file {path} holds no readable event")
        return events

    def run_ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.jsonl") if _RUN_ID.match(p.stem))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
