-- The migration's own bookkeeping (provisioner/migration): validation results for the gate of
-- `provision migrate advance`, and the row digests that let a validation skip rebuilding rows
-- it already proved. Neither holds AEIMS data: dropping them loses no record (the next
-- validation is slower, and the gate waits for a new one).

CREATE TABLE migration_validations (
    validation_id   bigserial   PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    -- Every write acknowledged before this instant was on both sides when they were read.
    covered_until   timestamptz NOT NULL,
    records_checked bigint      NOT NULL CHECK (records_checked >= 0),
    mismatch_count  bigint      NOT NULL CHECK (mismatch_count >= 0),
    -- Per entity: records in JSON and in PostgreSQL, checked, mismatched; orphans per reference.
    counts          jsonb       NOT NULL CHECK (jsonb_typeof(counts) = 'object'),
    -- The first mismatches (entity, key, field, both values; secrets as fingerprints only).
    mismatches      jsonb       NOT NULL CHECK (jsonb_typeof(mismatches) = 'array'),
    data_dir        text        NOT NULL
);
CREATE INDEX migration_validations_finished_idx ON migration_validations (finished_at DESC);
COMMENT ON TABLE migration_validations IS
    'One row per `provision migrate validate` run; the gate reads the newest (last_validation)';

-- A row proved by a validation (rebuilt into its record and found equal to the JSON one), or
-- written by the backfill, with the row's stored version at that moment (its xmin and ctid). A
-- later validation whose row still has this content_hash and version needs not rebuild it; any
-- change to the row (through the layer or not) gives it a new version, and it is rebuilt again.
CREATE TABLE migration_row_digests (
    entity       text NOT NULL,
    key          text NOT NULL,
    content_hash text NOT NULL,
    digest       text NOT NULL,
    PRIMARY KEY (entity, key)
);
COMMENT ON TABLE migration_row_digests IS
    'Cache of rows known to hold their record (provisioner/migration/validation.py); safe to empty';
