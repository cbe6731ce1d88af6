-- CKAN packager (schema `ckan`): the request queue, the stored packages (the cache) and the
-- legacy's statistics tables (`requests`, `errors`, `totals`, same columns as its `dataset` DB).

-- One row per download request. `params` holds the validated request without the API key;
-- a per-request CKAN key waits in `api_key` and is cleared when the request ends (done or failed).
-- Another system may insert a row with only kind, resource_id, email, params (and api_key): the
-- pipeline validates it and fills in `cache_key` and `speed` (or fails it, error_kind bad_request).
CREATE TABLE ckan.package_request (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('datastore', 'dwc', 'url')),
    resource_id text NOT NULL,
    email text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}',
    api_key text,
    cache_key text,
    speed text CHECK (speed IN ('fast', 'slow')),
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    package_id bigint,
    cached boolean,
    rows bigint,
    error text,
    error_kind text,
    source text NOT NULL DEFAULT 'table',
    created timestamptz NOT NULL DEFAULT now(),
    started timestamptz,
    finished timestamptz
);
CREATE INDEX package_request_due ON ckan.package_request (speed, id) WHERE status IN ('queued', 'running');
CREATE INDEX package_request_cache ON ckan.package_request (cache_key);
COMMENT ON TABLE ckan.package_request IS
    'CKAN download requests: the queue (status queued/running/done/failed), their package and error';

-- One row per ZIP in the blob store: what the cache reuses and the daily clean-up deletes.
CREATE TABLE ckan.package (
    id bigserial PRIMARY KEY,
    cache_key text NOT NULL,
    blob_key text NOT NULL UNIQUE,
    zip_file_name text NOT NULL,
    bytes bigint NOT NULL,
    rows bigint,
    pinned boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL DEFAULT now(),
    deleted timestamptz
);
CREATE INDEX package_live ON ckan.package (cache_key, created DESC) WHERE deleted IS NULL;
ALTER TABLE ckan.package_request
    ADD CONSTRAINT package_request_package FOREIGN KEY (package_id) REFERENCES ckan.package (id);

-- The legacy statistics (lib/statistics.py), same tables and columns; `timestamp` is unix seconds.
CREATE TABLE ckan.requests (
    id bigserial PRIMARY KEY,
    count bigint,
    domain text,
    email text,
    resource_id text,
    timestamp bigint
);
CREATE INDEX requests_email ON ckan.requests (email, resource_id);
CREATE INDEX requests_timestamp ON ckan.requests (timestamp DESC);

CREATE TABLE ckan.errors (
    id bigserial PRIMARY KEY,
    timestamp bigint,
    resource_id text,
    email text,
    message text
);
CREATE INDEX errors_timestamp ON ckan.errors (timestamp DESC);

CREATE TABLE ckan.totals (
    id bigserial PRIMARY KEY,
    resource_id text NOT NULL UNIQUE,
    emails bigint NOT NULL DEFAULT 0,
    errors bigint NOT NULL DEFAULT 0,
    requests bigint NOT NULL DEFAULT 0
);
