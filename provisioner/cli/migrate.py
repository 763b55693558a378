"""`provision migrate`: move a live AEIMS installation from JSON files to PostgreSQL and back.

The group only gathers its commands; each family lives in its own module:
phases (status, advance, rollback, archive-json, unarchive, reconcile) in migrate_phases,
backfill and validate in migrate_data, sync in migrate_sync.
"""

from __future__ import annotations

import click

from provisioner.cli import migrate_data, migrate_phases, migrate_sync


@click.group("migrate")
def migrate() -> None:
    """Move AEIMS's storage from JSON files to PostgreSQL, phase by reversible phase."""


for _module in (migrate_phases, migrate_data, migrate_sync):
    for _command in _module.COMMANDS:
        migrate.add_command(_command)
