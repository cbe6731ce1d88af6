-- Back to 0008: the energy hub's tables and types go (the schema itself belongs to 0001).
DROP TABLE IF EXISTS energy.webhook_delivery;
DROP TABLE IF EXISTS energy.webhook_subscription;
DROP TABLE IF EXISTS energy.disclosure_ggo;
DROP TABLE IF EXISTS energy.disclosure_settlement;
DROP TABLE IF EXISTS energy.disclosure_meteringpoint;
DROP TABLE IF EXISTS energy.disclosure;
DROP TABLE IF EXISTS energy.technology;
DROP TABLE IF EXISTS energy.ggo;
DROP TABLE IF EXISTS energy.measurement;
DROP TABLE IF EXISTS energy.meteringpoint;
DROP TABLE IF EXISTS energy.customer;
DROP TYPE IF EXISTS energy.webhookevent;
DROP TYPE IF EXISTS energy.summaryresolution;
DROP TYPE IF EXISTS energy.disclosurestate;
DROP TYPE IF EXISTS energy.measurementtype;
