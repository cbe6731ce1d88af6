-- Back to 0007: the upload stages' bookkeeping goes; files and their states stay.
DROP INDEX IF EXISTS datastore.pipeline_data_file_versions;
ALTER TABLE datastore.pipeline_data_file
    DROP COLUMN IF EXISTS error_kind,
    DROP COLUMN IF EXISTS checked_at,
    DROP COLUMN IF EXISTS check_passed,
    DROP COLUMN IF EXISTS check_report,
    DROP COLUMN IF EXISTS content_sha256,
    DROP COLUMN IF EXISTS content_bytes,
    DROP COLUMN IF EXISTS verified_at,
    DROP COLUMN IF EXISTS loaded_at;
