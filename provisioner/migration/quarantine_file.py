"""The backfill's quarantine: records PostgreSQL cannot take, kept for a human, never lost.

JSON lines, one record each: `{"entity", "key", "reason", "record"}`, the record as the file
holds it minus its plaintext test passwords (at any depth). The file is 0600 (records carry
password hashes) and written afresh by each backfill, so it always lists what the last run
could not load; a run with nothing to quarantine removes the previous file. Values JSON cannot
spell (NaN, a lone surrogate) are written in a form that still parses (`"NaN"`, `\\ud800`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from provisioner.migration.storage_bridge import strip_plaintext

QUARANTINE_NAME = "backfill-quarantine.jsonl"


def default_quarantine_path(data_dir: Path) -> Path:
    """`<data_dir>/.provision/backfill-quarantine.jsonl`, beside the layer's own state."""
    return data_dir / ".provision" / QUARANTINE_NAME


def _spellable(value: Any) -> Any:
    """`value` with what strict JSON has no form for turned into strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _spellable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_spellable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def quarantine_line(entity: str, key: Any, reason: str, record: Any) -> str:
    """One line of the quarantine file (no plaintext password in it)."""
    entry = {"entity": entity, "key": key, "reason": reason, "record": strip_plaintext(record)}
    try:
        return json.dumps(entry, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_spellable(entry), ensure_ascii=True, allow_nan=False)


class QuarantineFile:
    """Collects quarantine lines and writes them (0600) when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, entity: str, key: Any, reason: str, record: Any) -> None:
        self.lines.append(quarantine_line(entity, key, reason, record))

    def add_line(self, line: str) -> None:
        """Add a line made by quarantine_line (in a worker process, say)."""
        self.lines.append(line)

    def write(self) -> None:
        """Replace the file with this run's lines (remove it when there are none)."""
        if not self.lines:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(self.lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
