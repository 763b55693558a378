"""AEIMS records as PostgreSQL rows: column types, entity maps, statements, versioned schema.

The story is in docs/data-layer.md, "PostgreSQL".
"""
