"""JSON files as the PHP application writes them: reads, encoding, locked writes, group commit.

Nothing here knows AEIMS; the story is in docs/data-layer.md, "JSON files".
"""
