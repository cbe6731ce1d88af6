-- The data store's HAWK-signed API (ecr_pipelines/api/datastore.py): its clients and the nonces
-- it has seen. The legacy kept clients in public.hawk_users (same columns) and nonces in Redis.

-- One row per API client, managed with `python -m ecr_pipelines api add-hawk-user`. HAWK signs
-- with the shared key itself, so it is stored as given (as the legacy did): guard the table as
-- a secret. scope: the route names the client may call (the legacy's view names), or '*'.
CREATE TABLE datastore.hawk_users (
    id text PRIMARY KEY,
    key text NOT NULL,
    scope text[] NOT NULL,
    description text
);
COMMENT ON TABLE datastore.hawk_users IS 'Data store API clients: HAWK id, shared key (a secret), route scopes';

-- The replay window: a request's (client, nonce, timestamp) is inserted once its MAC checks, so
-- the same signed request again is an INSERT conflict, refused with 401. Requests older than the
-- 60 s timestamp skew are refused anyway, so a row is only needed for the window (300 s, as
-- the legacy's Redis expiry); the API deletes older rows itself, a bounded batch at a time.
CREATE TABLE datastore.hawk_nonce (
    client_id text NOT NULL,
    nonce text NOT NULL,
    ts bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, nonce, ts)
);
-- The clean-up finds the expired rows by age.
CREATE INDEX hawk_nonce_seen_at ON datastore.hawk_nonce (seen_at);
COMMENT ON TABLE datastore.hawk_nonce IS 'Data store API: HAWK nonces seen in the last 300 s (replay protection)';
