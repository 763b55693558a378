"""The zero-downtime migration of AEIMS's storage from JSON files to PostgreSQL.

Phases are engine steps (one file each); the backfill, the validation gate, the sync of writers
outside the data layer and the shadow reads are the building blocks they use. The long story is
in docs/migration.md.
"""
