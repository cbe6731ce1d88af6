-- The IATI refresher's tables after its migrations 0-27 (column lists: research notes iati.md
-- section 2), written for the import tests: plain timestamps holding UTC, the document primary key
-- still named refresher_pkey, and the tables we do not carry over (version, adhoc_validation).

CREATE TABLE version (
    number varchar NOT NULL,
    migration integer NOT NULL
);

CREATE TABLE publisher (
    org_id varchar PRIMARY KEY,
    name varchar NOT NULL,
    title varchar NOT NULL,
    description varchar,
    state varchar,
    image_url varchar,
    country_code varchar,
    created timestamp NOT NULL,
    last_seen timestamp NOT NULL,
    package_count integer,
    iati_id varchar,
    black_flag timestamp,
    black_flag_notified boolean
);

CREATE TABLE validation (
    id serial PRIMARY KEY,
    document_id varchar NOT NULL,
    document_hash varchar,
    document_url varchar NOT NULL,
    created timestamp NOT NULL,
    valid boolean NOT NULL,
    report jsonb NOT NULL,
    publisher varchar,
    publisher_name varchar
);

CREATE TABLE document (
    id varchar NOT NULL,
    hash varchar NOT NULL,
    url varchar NOT NULL,
    first_seen timestamp NOT NULL,
    last_seen timestamp NOT NULL,
    downloaded timestamp,
    download_error integer,
    validation_request timestamp,
    validation_api_error integer,
    validation integer REFERENCES validation (id),
    publisher varchar REFERENCES publisher (org_id) ON DELETE CASCADE,
    modified timestamp,
    flatten_start timestamp,
    flatten_end timestamp,
    flatten_api_error integer,
    flattened_activities jsonb,
    solrize_start timestamp,
    solrize_end timestamp,
    solr_api_error text,
    lakify_start timestamp,
    lakify_end timestamp,
    lakify_error varchar,
    solrize_reindex boolean NOT NULL DEFAULT false,
    regenerate_validation_report boolean NOT NULL DEFAULT false,
    file_schema_valid boolean,
    clean_start timestamp,
    clean_end timestamp,
    clean_error varchar,
    name varchar,
    last_solrize_end timestamp,
    cached_dataset_url varchar,
    CONSTRAINT refresher_pkey PRIMARY KEY (id)
);
CREATE INDEX document_hash ON document (hash);
CREATE INDEX document_url ON document (url);
CREATE INDEX document_publisher ON document (publisher);

CREATE TABLE adhoc_validation (
    id serial PRIMARY KEY,
    guid varchar,
    filename varchar,
    user_email varchar,
    session_id varchar,
    created timestamp,
    validated timestamp,
    validation_api_error varchar,
    valid boolean,
    report jsonb
);
