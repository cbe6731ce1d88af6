-- Back to 0006: the data store's bookkeeping goes; loaded "<org>.<dataset>" schemas are left alone
-- (they are data, not structure; drop them by hand if wanted).
DROP TABLE IF EXISTS datastore.pipeline_data_file;
DROP TABLE IF EXISTS datastore.pipeline;
DROP TABLE IF EXISTS operations.datafile_registry;
DROP TYPE IF EXISTS operations.processing_state;
DROP SCHEMA IF EXISTS operations;
