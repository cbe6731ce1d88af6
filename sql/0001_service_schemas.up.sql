-- One Postgres schema per service, so each service's tables keep their legacy names
-- (registry.undertaking, iati.document, ...) without colliding.
CREATE SCHEMA IF NOT EXISTS registry;
CREATE SCHEMA IF NOT EXISTS iati;
CREATE SCHEMA IF NOT EXISTS ckan;
CREATE SCHEMA IF NOT EXISTS datastore;
CREATE SCHEMA IF NOT EXISTS energy;

COMMENT ON SCHEMA registry IS 'European cache registry: undertakings, old companies, links, licences';
COMMENT ON SCHEMA iati IS 'IATI refresher: publishers, documents and their stage state, validation reports';
COMMENT ON SCHEMA ckan IS 'CKAN packager: package requests, cache and statistics';
COMMENT ON SCHEMA datastore IS 'Data store service: sources, files and loaded datasets';
COMMENT ON SCHEMA energy IS 'Energy data hub: metering points, measurements, GGOs, disclosures';
