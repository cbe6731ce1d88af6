-- Back to 0004: NOT NULL text columns (NULL becomes '') and double precision masses.

ALTER TABLE registry.substance
    ALTER COLUMN quantity TYPE double precision;

ALTER TABLE registry.licence
    ALTER COLUMN net_mass TYPE double precision,
    ALTER COLUMN total_odp_mass TYPE double precision;

UPDATE registry.undertaking SET country_code = '' WHERE country_code IS NULL;
UPDATE registry.undertaking SET eori_number = '' WHERE eori_number IS NULL;
UPDATE registry.undertaking SET registration_id = '' WHERE registration_id IS NULL;

ALTER TABLE registry.undertaking
    ALTER COLUMN country_code SET NOT NULL,
    ALTER COLUMN eori_number SET NOT NULL,
    ALTER COLUMN registration_id SET NOT NULL;
