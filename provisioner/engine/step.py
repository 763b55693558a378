"""The step contract: check what would change, apply it idempotently, roll back exactly that.

A step reads the world in `check` (pure), changes it in `apply` and returns an undo record,
and undoes this run's change in `rollback`. Everything a step returns must be JSON-able,
because the runner writes it to the journal before moving on, so that a run killed at any
point can be resumed or undone by another process.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.checkpoint import Checkpoints

Undo = dict[str, Any]


class Scope(StrEnum):
    """Where a step acts: once per target (`global`) or on every web host (`host`)."""

    GLOBAL = "global"
    HOST = "host"


@dataclass(frozen=True)
class Change:
    """What `apply` would do: a human summary, and the state found and intended.

    `before` is what rollback restores when a process died inside `apply`, so it must say
    enough to put the world back (a file's previous content, a row's previous values).
    """

    summary: str
    before: Any = None
    after: Any = None
    diff: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "before": self.before,
            "after": self.after,
            "diff": self.diff,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(data["summary"], data.get("before"), data.get("after"), data.get("diff"))


def unified_diff(before: str | None, after: str | None, name: str) -> str:
    """A unified diff between two texts (None meaning absent), for plans and --json output."""
    old = [] if before is None else before.splitlines(keepends=True)
    new = [] if after is None else after.splitlines(keepends=True)
    from_name = "/dev/null" if before is None else f"a/{name}"
    to_name = "/dev/null" if after is None else f"b/{name}"
    return "".join(difflib.unified_diff(old, new, from_name, to_name))


class Progress:
    """A step's window on the output: short notes and progress for long operations."""

    def note(self, message: str) -> None:  # pragma: no cover - trivial default
        """Say what the step is doing now (shown beside the spinner, never journaled)."""

    def track(
        self, description: str, total: int | None
    ) -> AbstractContextManager[Callable[[int], None]]:
        """A context giving an `advance(n)` callable for a long operation of `total` units."""
        return nullcontext(lambda n: None)


T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Client(Generic[T]):
    """A kind of shared client steps may use (a database connection, an HTTP client).

    Declared once by the application, e.g. `PG = Client("postgresql", open_pg)`; a step asks
    `ctx.client(PG)` and gets a `T`, opened on first use and closed by the runner at the end
    of the run, so every step of a run shares one connection of each kind.
    """

    name: str
    open: Callable[[RunContext], T]
    close: Callable[[T], None] = field(default=lambda client: _close_quietly(client))


def _close_quietly(client: Any) -> None:
    close = getattr(client, "close", None)
    if callable(close):
        close()


@dataclass
class RunContext:
    """What a step may know about the run it is part of."""

    run_id: str
    target: str
    params: dict[str, Any]
    settings: Settings
    progress: Progress = field(default_factory=Progress)
    # Where big before-states are kept (a folder per run); None where the run keeps none.
    checkpoints: Checkpoints | None = None
    _clients: dict[Client[Any], Any] = field(default_factory=dict, repr=False)
    # Clients that outlive the run (opened into it, closed by its owner, never by the run).
    shared: dict[Client[Any], Any] | None = field(default=None, repr=False)

    def client(self, kind: Client[T]) -> T:
        """The run's shared client of this kind, opened on first use."""
        clients = self._clients if self.shared is None else self.shared
        if kind not in clients:
            clients[kind] = kind.open(self)
        return cast(T, clients[kind])

    def forget_client(self, kind: Client[Any]) -> None:
        """Close and drop a client (e.g. a connection that broke), so the next use reopens it."""
        client = self._clients.pop(kind, None)
        if client is None and self.shared is not None:
            client = self.shared.pop(kind, None)
        if client is not None:
            kind.close(client)

    def close_clients(self) -> None:
        """Close every client opened during the run (the runner calls this at the end)."""
        while self._clients:
            kind, client = self._clients.popitem()
            try:
                kind.close(client)
            except Exception:  # noqa: S112 - closing must not hide the run's own outcome
                continue

    def checkpoint(self) -> Checkpoints:
        if self.checkpoints is None:
            raise RuntimeError("this run keeps no checkpoints")
        return self.checkpoints


class Step(ABC):
    """One idempotent, reversible change. Subclasses set `name` and `scope`."""

    name: str = "step"
    scope: Scope = Scope.HOST
    # How the output names the step for people ("Database", "SSL"); the name when empty.
    label: str = ""

    @property
    def skipped(self) -> str | None:
        """Why this step does nothing in this configuration (no DNS provider set, say), or None.

        A skipped step is shown as such instead of "no change"; its check finds nothing to do.
        """
        return None

    def outcome(self, changed: bool) -> str | None:
        """The line the output shows once the step ran (what it did, or the state it found),
        read from the world after the fact; None shows the Change's summary or "no change"."""
        return None

    def preflight(self, ctx: RunContext) -> list[str]:
        """Problems that must stop the run before its first step (missing setting, service down).

        Each problem names what is wrong and how to fix it. Reads only.
        """
        return []

    @abstractmethod
    def check(self, ctx: RunContext) -> Change | None:
        """What `apply` would change, or None when the world already matches. Changes nothing."""

    @abstractmethod
    def apply(self, ctx: RunContext) -> Undo:
        """Make it so; return what `rollback` needs. Running it again changes nothing."""

    @abstractmethod
    def rollback(self, ctx: RunContext, undo: Undo) -> None:
        """Undo exactly what this run's `apply` did; restore, never delete, what existed before."""

    def keep_before(self, ctx: RunContext, change: Change) -> Change:
        """A Change whose before-state is safe to journal, called just before it is journaled.

        A step whose before-state is big (a folder, a large file) copies it into
        `ctx.checkpoint()` here and returns a Change whose `before` points at that copy, as
        certbot's reverter does. Keeping is idempotent: the first copy a run made wins.
        """
        return change

    def undo_from_change(self, change: Change) -> Undo:
        """The undo record for a step whose `apply` may have run only in part.

        The runner journals the Change before calling `apply`; when a process dies inside it,
        rolling back starts from the state found then. It must undo any part of `apply`,
        including all of it: the journal uses it whenever an attempt of this step was cut
        short, even if a later attempt finished. Steps whose undo is their before-state need
        not override this.
        """
        return {"before": change.before}
