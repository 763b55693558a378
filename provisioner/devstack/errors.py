"""The one error the dev stack raises: it says what failed and how to fix it."""

from __future__ import annotations


class DevStackError(RuntimeError):
    """A component could not be started, stopped or found; the message names the fix."""
