"""The DataLayer and what it stands on: phases, writes, outbox, intents, breaker, auth, health.

The story is in docs/data-layer.md, "The data layer".
"""
