DROP INDEX IF EXISTS iati.document_clean_due;
DROP INDEX IF EXISTS iati.document_flatten_due;
DROP INDEX IF EXISTS iati.document_lakify_due;
CREATE INDEX document_clean_due ON iati.document (id)
    WHERE downloaded IS NOT NULL AND clean_start IS NULL AND clean_end IS NULL AND validation IS NOT NULL;
CREATE INDEX document_flatten_due ON iati.document (downloaded)
    WHERE clean_end IS NOT NULL AND flatten_start IS NULL;
CREATE INDEX document_lakify_due ON iati.document (id)
    WHERE clean_end IS NOT NULL AND lakify_start IS NULL AND lakify_error IS NULL;
DROP SCHEMA IF EXISTS pipeline CASCADE;
