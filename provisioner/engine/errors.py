"""The engine's errors, in two families the command line maps to exit codes.

`UsageError`: the request cannot be carried out as given and nothing was changed (exit 2).
`RunBlocked`: the run could not start or go on for a reason outside the input, such as
another run holding the target or a lock lost mid-run (exit 1).
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input or a request that does not fit the state of things; nothing was changed."""


class RunBlocked(RuntimeError):
    """The run could not start, or stopped before its next step, because of another party."""
