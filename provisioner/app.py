"""What the tool tells its engine before running anything: its pipelines and its secrets.

The engine knows nothing of AEIMS; this module is where the application registers the
modules that define its pipelines and the field names that hold its secrets.
"""

from __future__ import annotations

from provisioner.config import Settings
from provisioner.engine import pipeline as pipelines
from provisioner.secret_names import SECRET_KEYS

PIPELINE_MODULES: tuple[str, ...] = (
    "provisioner.demo.pipeline",
    "provisioner.site.pipelines",
    "provisioner.site.destroy",
    "provisioner.site.lifecycle",
    "provisioner.site.renewal",
)

__all__ = ["PIPELINE_MODULES", "SECRET_KEYS", "prepare"]


def prepare(settings: Settings) -> None:
    """Register the tool's pipelines, then any the settings add (operators' own, the tests')."""
    pipelines.load_modules((*PIPELINE_MODULES, *settings.pipeline_modules))
