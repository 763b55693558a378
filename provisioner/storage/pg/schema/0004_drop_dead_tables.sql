-- Two tables of 0001 that nothing reads or writes: `outbox` (the outbox is the layer's local
-- file, .provision/outbox.jsonl, and its mirror here was never filled) and `legacy_ids` (no
-- code resolves an old id through it). Dropped so the schema holds only what is used; neither
-- ever held AEIMS data.

DROP TABLE outbox;
DROP TABLE legacy_ids;
