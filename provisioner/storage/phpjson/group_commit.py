"""Group commit: many threads' changes committed in batches, one commit (and fsync) per batch.

`GroupCommit` is the one mechanism: the first waiting thread leads, takes every queued item (up
to `max_batch`), commits them together and hands out the outcomes; items that arrive meanwhile
form the next batch. No background thread, nothing to shut down. `GroupCommitter` applies it to
one JSON file; the data layer applies it to each entity's records (layer/writes.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from provisioner.storage.phpjson.errors import _RAISE
from provisioner.storage.phpjson.files import BatchOutcome, locked_update_many
from provisioner.storage.phpjson.style import DEFAULT_STYLE, JsonStyle

T = TypeVar("T")


@dataclass
class _Ticket(Generic[T]):
    item: T
    done: bool = False
    outcome: BatchOutcome = field(default_factory=BatchOutcome)


class GroupCommit(Generic[T]):
    """Items from many threads, committed in batches by `commit` (one outcome per item, in
    order). `submit(item)` blocks until its batch is committed and returns the item's value (or
    raises its error)."""

    def __init__(
        self, commit: Callable[[list[T]], list[BatchOutcome]], *, max_batch: int | None = None
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._commit_fn = commit
        self._max_batch = max_batch
        self._queue: list[_Ticket[T]] = []
        self._leading = False
        self._cond = threading.Condition()
        self.batches = 0  # committed batches, for benchmarks and tests

    def submit(self, item: T) -> Any:
        ticket = _Ticket(item)
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._cond.release()
                try:
                    outcomes = self._commit(batch)
                finally:
                    self._cond.acquire()
                for queued, outcome in zip(batch, outcomes, strict=True):
                    queued.outcome = outcome
                    queued.done = True
                self._leading = False
                self.batches += 1
                self._cond.notify_all()
        if ticket.outcome.error is not None:
            raise ticket.outcome.error
        return ticket.outcome.value

    def _commit(self, batch: list[_Ticket[T]]) -> list[BatchOutcome]:
        try:
            return self._commit_fn([t.item for t in batch])
        except BaseException as exc:  # every waiter must wake up, whatever happened
            return [BatchOutcome(error=exc) for _ in batch]


class GroupCommitter(GroupCommit[Callable[[Any], Any]]):
    """Many threads' changes to one file, committed in batches: one read-modify-write (and one
    fsync) per batch instead of per change. `submit(fn)` blocks until `fn` is on disk and
    returns its result (or raises its error); each batch is one `locked_update_many`."""

    def __init__(
        self,
        path: Path | str,
        *,
        default: Any = _RAISE,
        new_file_style: JsonStyle = DEFAULT_STYLE,
        max_batch: int = 1000,
    ) -> None:
        super().__init__(self._update, max_batch=max_batch)
        self.path = Path(path)
        self._default = default
        self._style = new_file_style

    def _update(self, fns: list[Callable[[Any], Any]]) -> list[BatchOutcome]:
        return locked_update_many(self.path, fns, default=self._default, new_file_style=self._style)
