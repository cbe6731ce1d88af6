-- Data store (legacy data-store-service): the file registry and the CSV upload tables. The loaded
-- data lives in one schema per source, "<organisation>.<dataset>" with tables "L0" and "L1" (and
-- `spire`), created by the loads as the legacy did; only the bookkeeping is versioned here.

-- The legacy's registry of source files and their states, same schema, table and columns.
CREATE SCHEMA IF NOT EXISTS operations;
CREATE TYPE operations.processing_state AS ENUM ('processing', 'failed', 'processed', 'ignored');
CREATE TABLE operations.datafile_registry (
    id serial PRIMARY KEY,
    source text NOT NULL,
    file_name text,
    state operations.processing_state NOT NULL,
    error_message text,
    created_timestamp timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_timestamp timestamp
);
-- One row per (source, file): the legacy's get_or_create, race-free. Rows without a file name
-- (the World Bank transform) are one per run, as in the legacy.
CREATE UNIQUE INDEX datafile_registry_file ON operations.datafile_registry (source, file_name)
    WHERE file_name IS NOT NULL;
COMMENT ON TABLE operations.datafile_registry IS
    'Data store source files and their load state (processing, failed, processed, ignored)';

-- CSV uploads (the legacy's public.pipeline and public.pipeline_data_file, here in schema datastore).
CREATE TABLE datastore.pipeline (
    id serial PRIMARY KEY,
    organisation text NOT NULL,
    dataset text NOT NULL,
    slug text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation, dataset)
);

CREATE TABLE datastore.pipeline_data_file (
    id uuid PRIMARY KEY,
    data_file_url text NOT NULL,
    pipeline_id integer NOT NULL REFERENCES datastore.pipeline (id),
    state text NOT NULL DEFAULT 'uploaded'
        CHECK (state IN ('uploading', 'uploaded', 'verified', 'processing_dss', 'processing_dataflow', 'completed', 'failed')),
    error_message text,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    started_processing_at timestamptz,
    processed_at timestamptz,
    column_types text[],
    delimiter text NOT NULL DEFAULT ',',
    quote text NOT NULL DEFAULT '"',
    inferred_types jsonb,
    sample jsonb,
    row_count bigint
);
CREATE UNIQUE INDEX pipeline_data_file_url ON datastore.pipeline_data_file (data_file_url);
CREATE INDEX pipeline_data_file_state ON datastore.pipeline_data_file (state, uploaded_at);
