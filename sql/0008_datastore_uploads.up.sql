-- CSV uploads run as two batch stages (ecr_pipelines/datastore/stages/uploads.py): a check of each
-- uploaded file (header rules, row lengths, inferred types), then, once its types are confirmed,
-- its load into "<org>.<dataset>"."L0". These columns keep what the check found, so the person
-- confirming the types and the load both work from it without reading the file again.
ALTER TABLE datastore.pipeline_data_file
    -- A short, stable class of the last error (row_length, encoding, value, changed, stuck, ...),
    -- beside error_message which is for people.
    ADD COLUMN error_kind text,
    ADD COLUMN checked_at timestamptz,
    ADD COLUMN check_passed boolean,
    -- {"errors": [{kind, message}], "notes": [...], "source_columns": [...], "kept": [...],
    --  "inferred_rows": n}: the check's report and the header layout the load applies again.
    ADD COLUMN check_report jsonb,
    -- The checked bytes: the load refuses a file that was replaced under the same key since.
    ADD COLUMN content_sha256 text,
    ADD COLUMN content_bytes bigint,
    ADD COLUMN verified_at timestamptz,
    -- When L0 last became this file (with a data-flow callback, before the DAG answered).
    ADD COLUMN loaded_at timestamptz;

-- "The latest version" of a dataset: its newest completed file.
CREATE INDEX pipeline_data_file_versions ON datastore.pipeline_data_file (pipeline_id, state, processed_at);
