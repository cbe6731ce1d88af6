DROP TABLE IF EXISTS iati.refresh_log;
DROP TABLE IF EXISTS iati.document;
DROP TABLE IF EXISTS iati.validation;
DROP TABLE IF EXISTS iati.publisher;
