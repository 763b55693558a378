"""The AEIMS JSON files as records: the catalog of files, their shapes, operators, the store.

The story is in docs/data-layer.md, "The AEIMS files".
"""
