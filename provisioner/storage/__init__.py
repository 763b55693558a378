"""The AEIMS data layer: `from provisioner.storage import DataLayer`."""

from __future__ import annotations

from typing import Any

__all__ = ["DataLayer", "DataUnavailable"]


def __getattr__(name: str) -> Any:
    """Import the layer (and psycopg with it) only when it is asked for."""
    if name in __all__:
        from provisioner.storage.layer import datalayer

        return getattr(datalayer, name)
    raise AttributeError(name)
