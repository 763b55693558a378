"""What the tool tells its engine before running anything: its pipelines and its secrets.

The engine knows nothing of AEIMS; this module is where the application registers the
modules that define its pipelines and the field names that hold its secrets.
"""

from __future__ import annotations

from provisioner.config import Settings
from provisioner.engine import pipeline as pipelines
from provisioner.secret_names import SECRET_KEYS

# Each pipeline's name and the module whose import registers it (imported when first built).
PIPELINES: dict[str, str] = {
    "demo": "provisioner.demo.pipeline",
    "site-create": "provisioner.site.pipelines",
    "site-destroy": "provisioner.site.destroy",
    "site-enable": "provisioner.site.lifecycle",
    "site-disable": "provisioner.site.lifecycle",
    "site-add-operators": "provisioner.site.lifecycle",
    "site-remove-operators": "provisioner.site.lifecycle",
    "certs-renew": "provisioner.site.renewal",
    "migrate-advance": "provisioner.migration.pipelines",
    "migrate-rollback": "provisioner.migration.pipelines",
    "migrate-archive-json": "provisioner.migration.pipelines",
    "migrate-unarchive": "provisioner.migration.pipelines",
    "migrate-reconcile": "provisioner.migration.pipelines",
}
PIPELINE_MODULES: tuple[str, ...] = tuple(dict.fromkeys(PIPELINES.values()))

__all__ = ["PIPELINES", "PIPELINE_MODULES", "SECRET_KEYS", "prepare"]


def prepare(settings: Settings) -> None:
    """Register the tool's pipelines, then any the settings add (operators' own, the tests')."""
    for name, module in PIPELINES.items():
        pipelines.register_lazy(name, module)
    pipelines.load_modules(settings.pipeline_modules)
