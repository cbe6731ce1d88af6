-- Registry parity with the legacy service (issue 11).
--   * undertaking.country_code, eori_number and registration_id hold NULL where the legacy stored
--     NULL (no derived country; a null `eori` / `registrationNumId` in the payload). Their ''
--     defaults stay: an absent key still gives '' as in the legacy.
--   * Licence masses and substance quantities at the legacy columns' precision (`Float(7)`, which
--     Postgres makes `real`): the aggregates are the legacy's figures, and what the cache shows
--     is what the legacy showed.

ALTER TABLE registry.undertaking
    ALTER COLUMN country_code DROP NOT NULL,
    ALTER COLUMN eori_number DROP NOT NULL,
    ALTER COLUMN registration_id DROP NOT NULL;

ALTER TABLE registry.licence
    ALTER COLUMN net_mass TYPE real,
    ALTER COLUMN total_odp_mass TYPE real;

ALTER TABLE registry.substance
    ALTER COLUMN quantity TYPE real;
