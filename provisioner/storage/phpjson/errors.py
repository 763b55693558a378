"""The errors of JSON file access and the sentinels its callers pass (NO_CHANGE, defaults).

A read never guesses: a malformed, empty or unreadable file is a `JsonFileError` naming the
file, where and what is wrong (docs/data-layer.md, "JSON files").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

# --------------------------------------------------------------------------------------------
# Errors and sentinels
# --------------------------------------------------------------------------------------------


class JsonFileError(Exception):
    """A JSON file could not be read or written; the message names the file and the position."""

    def __init__(
        self,
        path: Path | str,
        reason: str,
        *,
        line: int | None = None,
        column: int | None = None,
        excerpt: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.line = line
        self.column = column
        self.excerpt = excerpt
        where = str(self.path)
        if line is not None:
            where += f":{line}:{column}" if column is not None else f":{line}"
        message = f"{where}: {reason}"
        if line is not None:
            message += f" (line {line}" + (f", column {column})" if column is not None else ")")
        if excerpt is not None:
            message += f"; near: {excerpt}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class JsonFileMissingError(JsonFileError):
    """The file does not exist (and the caller gave no default)."""


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# Returned by an update function to say "nothing to change": then nothing is written.
NO_CHANGE: Final[Any] = _Sentinel("NO_CHANGE")
# Default for `default=`: a missing file is an error.
_RAISE: Final[Any] = _Sentinel("RAISE")
_UNPARSED: Final[Any] = _Sentinel("UNPARSED")
_ANY_ENTRY: Final[Any] = _Sentinel("ANY_ENTRY")

_FIX_HINT = "Nothing was changed; fix the file (or restore it from a backup) and run again"
