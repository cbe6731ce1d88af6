-- Shared machinery of every service's per-item stages (schema `pipeline`):
--   * stage_claim: which live run holds which item of which stage. A claim names the Postgres
--     backend (pid + start time) of a connection the claiming run keeps open, so a claim whose
--     backend is gone belongs to a dead run and is taken back at once (ecr_pipelines/lib/batch.py).
--   * mail_outbox: mails written in the same transaction as the change they report, and sent
--     after commit, once (dedupe_key), so a rollback never leaves a mail behind and a re-run never
--     mails twice (ecr_pipelines/lib/outbox.py).
CREATE SCHEMA IF NOT EXISTS pipeline;
COMMENT ON SCHEMA pipeline IS 'Shared stage machinery: item claims of running stages, the mail outbox';

CREATE TABLE pipeline.stage_claim (
    stage text NOT NULL,
    item text NOT NULL,
    owner_pid integer NOT NULL,
    owner_started timestamptz NOT NULL,
    run_id text NOT NULL DEFAULT '',
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, item)
);

-- Runs working on a stage, with the backend that owns their claims: a row whose backend is gone
-- is a run whose process died (the platform marks it failed and frees its pool slots).
CREATE TABLE pipeline.run_owner (
    run_id text PRIMARY KEY,
    owner_pid integer NOT NULL,
    owner_started timestamptz NOT NULL,
    stage text NOT NULL DEFAULT '',
    updated timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pipeline.mail_outbox (
    id bigserial PRIMARY KEY,
    dedupe_key text NOT NULL UNIQUE,
    recipients text[] NOT NULL,
    subject text NOT NULL,
    body text NOT NULL,
    html text,
    created timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    error text
);
CREATE INDEX mail_outbox_pending ON pipeline.mail_outbox (next_attempt) WHERE sent_at IS NULL;

-- IATI stage selection no longer reads the *_start columns (a live claim says "in flight"; the
-- columns keep their legacy meaning as the time the stage last started): the partial indexes
-- follow the new predicates.
DROP INDEX iati.document_clean_due;
DROP INDEX iati.document_flatten_due;
DROP INDEX iati.document_lakify_due;
CREATE INDEX document_clean_due ON iati.document (downloaded)
    WHERE downloaded IS NOT NULL AND clean_end IS NULL AND validation IS NOT NULL;
CREATE INDEX document_flatten_due ON iati.document (downloaded)
    WHERE clean_end IS NOT NULL AND flatten_end IS NULL;
CREATE INDEX document_lakify_due ON iati.document (downloaded)
    WHERE clean_end IS NOT NULL AND lakify_end IS NULL AND lakify_error IS NULL;
