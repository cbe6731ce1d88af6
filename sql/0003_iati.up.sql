-- IATI refresher tables with the legacy table and column names (publisher, document,
-- validation), so that existing SQL against the refresher's database keeps working. Every legacy
-- column is here, including those only later stages write (validate, clean, flatten, lakify,
-- solrize), so those stages need no migration for them. Differences from the legacy schema:
--   * timestamps are timestamptz (the refresher wrote UTC into plain timestamp columns);
--   * document: download bookkeeping (download_error_message, download_attempts, download_size,
--     download_encoding) and partial indexes for each stage's work-selection query;
--   * refresh_log: one row per index sync, with its counts or the reason it was refused.
-- The document primary key keeps its legacy constraint name (refresher_pkey), which upserts
-- written against the old database may name in ON CONFLICT ON CONSTRAINT.

CREATE TABLE iati.publisher (
    org_id varchar PRIMARY KEY,
    name varchar NOT NULL,
    title varchar NOT NULL,
    -- legacy CKAN registry fields (written in IATI_SOURCE=registry mode only)
    description varchar,
    state varchar,
    image_url varchar,
    country_code varchar,
    created timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    package_count integer,
    iati_id varchar,
    -- safety check ("black flag") of the validate stage
    black_flag timestamptz,
    black_flag_notified boolean
);

CREATE INDEX publisher_name ON iati.publisher (name);

CREATE TABLE iati.validation (
    id serial PRIMARY KEY,
    document_id varchar NOT NULL,
    document_hash varchar,
    document_url varchar NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    valid boolean NOT NULL,
    report jsonb NOT NULL,
    publisher varchar,
    publisher_name varchar
);

CREATE INDEX validation_document_id ON iati.validation (document_id);
CREATE INDEX validation_document_hash ON iati.validation (document_hash);

CREATE TABLE iati.document (
    id varchar NOT NULL,
    hash varchar NOT NULL,
    url varchar NOT NULL,
    cached_dataset_url varchar,
    name varchar,
    publisher varchar REFERENCES iati.publisher (org_id) ON DELETE CASCADE,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    modified timestamptz,
    -- download (reload) stage
    downloaded timestamptz,
    download_error integer,
    -- validate stage
    validation_request timestamptz,
    validation_api_error integer,
    file_schema_valid boolean,
    validation integer REFERENCES iati.validation (id) ON DELETE SET NULL,
    regenerate_validation_report boolean NOT NULL DEFAULT false,
    -- clean stage
    clean_start timestamptz,
    clean_end timestamptz,
    clean_error varchar,
    -- flatten stage
    flatten_start timestamptz,
    flatten_end timestamptz,
    flatten_api_error integer,
    flattened_activities jsonb,
    -- lakify stage
    lakify_start timestamptz,
    lakify_end timestamptz,
    lakify_error varchar,
    -- solrize stage
    solrize_start timestamptz,
    solrize_end timestamptz,
    solr_api_error text,
    solrize_reindex boolean NOT NULL DEFAULT false,
    last_solrize_end timestamptz,
    -- additions: why a download failed, how often it was tried, what was stored
    download_error_message text,
    download_attempts integer NOT NULL DEFAULT 0,
    download_size bigint,
    download_encoding varchar,
    CONSTRAINT refresher_pkey PRIMARY KEY (id)
);

COMMENT ON COLUMN iati.document.hash IS
    'Content hash from the index (BDS hash_excluding_generated_timestamp); '''' = no usable copy. Source blob: iati/source/<hash>.xml';
COMMENT ON COLUMN iati.document.download_error IS
    'HTTP status, or 0 connection/timeout, 1 TLS, 2 charset undetectable, 3 unsupported scheme, 4 no cached URL or hash (never retried), 5 larger than HTTP_MAX_DOWNLOAD_BYTES';
COMMENT ON COLUMN iati.document.download_encoding IS
    'Character encoding detected on download (BOM, XML declaration, then charset-normalizer)';

CREATE INDEX document_hash ON iati.document (hash);
CREATE INDEX document_url ON iati.document (url);
CREATE INDEX document_publisher ON iati.document (publisher);
CREATE INDEX document_validation ON iati.document (validation);

-- Work selection, one partial index per stage (the predicates of the legacy selection queries).
CREATE INDEX document_download_due ON iati.document (id) WHERE downloaded IS NULL;
CREATE INDEX document_validate_due ON iati.document (downloaded)
    WHERE downloaded IS NOT NULL AND download_error IS NULL AND hash <> ''
      AND (validation IS NULL OR regenerate_validation_report);
CREATE INDEX document_clean_due ON iati.document (id)
    WHERE downloaded IS NOT NULL AND clean_start IS NULL AND clean_end IS NULL AND validation IS NOT NULL;
CREATE INDEX document_flatten_due ON iati.document (downloaded)
    WHERE clean_end IS NOT NULL AND flatten_start IS NULL;
CREATE INDEX document_lakify_due ON iati.document (id)
    WHERE clean_end IS NOT NULL AND lakify_start IS NULL AND lakify_error IS NULL;
CREATE INDEX document_solrize_due ON iati.document (downloaded)
    WHERE flatten_end IS NOT NULL AND lakify_end IS NOT NULL AND (solrize_end IS NULL OR solrize_reindex);

CREATE TABLE iati.refresh_log (
    id serial PRIMARY KEY,
    started timestamptz NOT NULL DEFAULT now(),
    source varchar NOT NULL,
    index_created timestamptz,
    publishers integer,
    documents integer,
    new_publishers integer,
    removed_publishers integer,
    new_documents integer,
    changed_documents integer,
    stale_documents integer,
    rejected integer,
    refused text,
    run_id varchar
);
