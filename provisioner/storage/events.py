"""Structured one-line JSON events for monitoring: breaker changes, fallbacks, outbox depth.

They go to the `provisioner.storage` logger; `provision data` commands print them to stderr,
and an application embedding the data layer routes them wherever its alerts come from.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import provisioner.secret_names  # noqa: F401 - registers the secret field names
from provisioner.redact import redact

logger = logging.getLogger("provisioner.storage")


def emit(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event as a single JSON line (secrets masked)."""
    if not logger.isEnabledFor(level):
        return
    payload = {"event": event, "at": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields}
    logger.log(level, json.dumps(redact(payload), ensure_ascii=False, default=str, sort_keys=True))
