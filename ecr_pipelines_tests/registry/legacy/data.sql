-- A few rows of a running legacy registry: two F-gas and one ODS undertaking, a verified match and
-- its log, a verify-as-new, a pending candidate, a stale verified link (the legacy `unverify`
-- defect), a representative history, one ODS delivery with its substance and licence, and rows of
-- tables we do not carry over. Ids are deliberately not 1..n, as in a long-lived database.

INSERT INTO alembic_version VALUES ('0059_release_3_0_4');

INSERT INTO country (id, code, name, type) VALUES
    (3, 'DK', 'Denmark', 'EU_TYPE'),
    (4, 'CN', 'China', 'NONEU_TYPE'),
    (7, 'BE', 'Belgium', 'EU_TYPE');

INSERT INTO address (id, street, number, zipcode, city, country_id) VALUES
    (21, 'Havnegade', '1', '1058', 'Copenhagen', 3),
    (22, 'Road', '8', '100000', 'Beijing', 4),
    (23, 'Rue Neuve', '2', '1000', 'Brussels', 7),
    (24, 'Rue Haute', '9', '1000', 'Brussels', 7),
    (25, 'Vesterbrogade', '5', '1620', 'Copenhagen', 3);

INSERT INTO represent (id, name, address_id, vatnumber, contact_first_name, contact_last_name, contact_email) VALUES
    (31, 'Rep Belgium', 23, 'BE0123', 'Ann', 'Lee', 'ann@rep.test'),
    (32, 'Old Rep', 24, 'BE0999', 'Bo', 'Old', 'bo@rep.test');

-- Type 1 and business profile 1 are the bundled fixtures' own; 900 exists only in the legacy.
INSERT INTO type (id, type, domain) VALUES
    (1, 'FGAS_PRODUCER_IMPORTER_HFCS', 'FGAS'),
    (900, 'FGAS_LEGACY_ONLY_TYPE', 'FGAS');
INSERT INTO businessprofile (id, highleveluses, code, short_code, domain) VALUES
    (1, 'fgas.importer.of.other.products.and.equipment', 'fgas.importer.of.other.products.and.equipment', NULL, 'FGAS');

INSERT INTO old_company (id, external_id, name, country_code, account, vat_number, eori, active, website,
                         date_registered, valid, obligation) VALUES
    (41, 4021, 'Polar Cooling', 'dk', 'fgas4021', 'DK111', 'DK111EORI', true, 'polar.test', '2015-03-01 09:30:00', true, 'FGAS'),
    (42, 4022, 'Dragon Chemicals', 'be', 'ods4022', NULL, NULL, false, NULL, NULL, NULL, 'ODS');

INSERT INTO undertaking (id, external_id, registration_id, name, address_id, website, phone, domain,
                         date_created, date_updated, date_created_in_ecr, date_updated_in_ecr, status,
                         country_code, country_code_orig, undertaking_type, vat, eori_number, represent_id,
                         oldcompany_verified, oldcompany_account, oldcompany_extid, oldcompany_id, check_passed) VALUES
    (51, 10085, 'REG-10085', 'Polar Cooling Ltd', 21, 'polar.test', '+45 1', 'FGAS', '2015-01-02', '2024-05-06',
     '2018-01-01', '2024-05-07', 'VALID', 'DK', 'DK', 'FGASUndertaking', 'DK111', 'DK111EORI', NULL,
     true, 'fgas4021', 4021, 41, true),
    (52, 10086, NULL, 'Dragon Chemicals Co', 22, NULL, '+86 1', 'ODS', '2019-01-02', '2024-01-01',
     NULL, NULL, 'VALID', NULL, 'CN', 'ODSUndertaking', NULL, 'CN9EORI', 31,
     NULL, NULL, NULL, NULL, false),
    (53, 10087, 'REG-10087', 'Nordic Gas ApS', 25, NULL, NULL, 'FGAS', '2020-01-02', '2020-01-02',
     '2020-01-03', NULL, 'VALID', 'DK', 'DK', 'FGASUndertaking', NULL, '', NULL,
     true, NULL, NULL, NULL, true);

INSERT INTO "user" (id, ecas_id, username, first_name, last_name, email, type) VALUES
    (61, 'jdoe', 'jdoe', 'John', 'Doe', 'john@polar.test', 'ORGANISATION_USER'),
    (62, NULL, 'ann@rep.test', 'Ann', 'Lee', 'ann@rep.test', 'EUONLYREPRESENTATIVE_USER');

INSERT INTO undertaking_types VALUES (51, 1), (53, 900);
INSERT INTO undertaking_businessprofile VALUES (51, 1);
INSERT INTO undertaking_users (user_id, undertaking_id) VALUES (61, 51), (61, 51), (61, 52), (62, 52);
INSERT INTO undertaking_represent_history VALUES (52, 32);
INSERT INTO undertaking_country_history VALUES (52, 7);

INSERT INTO old_company_link (oldcompany_id, undertaking_id, verified, date_added, date_verified) VALUES
    (41, 51, true, '2018-02-01 10:00:00', '2018-02-03 11:15:00'),
    (42, 52, false, '2024-01-02 08:00:00', NULL),
    (41, 52, true, NULL, '2023-06-01 12:00:00');  -- verified, then `unverify`: the link stayed verified

INSERT INTO matching_log (id, timestamp, "user", domain, company_id, oldcompany_id, oldcompany_account, verified) VALUES
    (71, '2018-02-03 11:15:00+01', 'jane.doe', 'FGAS', 10085, 4021, 'fgas4021', true),
    (72, '2020-01-04 03:00:00+01', 'SYSTEM', 'FGAS', 10087, NULL, NULL, true),
    (73, '2023-06-01 12:00:00+02', 'jane.doe', 'ODS', 10086, 4021, 'ods4021', true),
    (74, '2023-06-02 09:00:00+02', 'jane.doe', 'ODS', 10086, NULL, NULL, false);

INSERT INTO organization_log (id, domain, execution_time, using_last_update, organizations) VALUES
    (81, 'FGAS', '2024-05-07 02:00:00+02', '2024-05-05', 2),
    (82, 'ODS', '2024-05-07 02:10:00+02', NULL, 1);

INSERT INTO mail_address (id, mail, timestamp, first_name, last_name) VALUES
    (91, 'ops@example.test', '2019-01-01 00:00:00+00', 'Ops', 'Team');

INSERT INTO delivery_licence (id, year, date_created, date_updated, updated_since, undertaking_id) VALUES
    (101, 2024, '2024-03-01', '2024-04-01', '2024-03-30', 52);

INSERT INTO substance (id, year, substance, lic_use_kind, lic_use_desc, lic_type, s_orig_country_name, quantity,
                       organization_country_name, date_created, date_updated, delivery_id) VALUES
    (111, 2024, 'Halon 1211 (virgin)', 'free circulation', 'critical uses', 'import', 'US', 3,
     'BE', '2024-03-01', NULL, 101);

INSERT INTO licence (id, year, licence_id, chemical_name, organization_country_name, organization_country_name_orig,
                     custom_procedure_name, international_party_country_name, international_party_country_name_orig,
                     total_odp_mass, net_mass, licence_state, long_licence_number, template_detailed_use_code,
                     licence_type, mixture_nature_type, date_created, date_updated, updated_since, substance_id) VALUES
    (121, 2024, 777, 'Halon 1211', 'BE', 'Belgium', 'Release for free circulation', 'US', 'United States',
     0.9, 2.5, 'EXPIRED', 'LIC-777', 'critical.uses', 'import', 'virgin', '2024-03-01', NULL,
     '2024-03-30T10:00:00', 111);

-- Id 1 is the bundled fixtures' own (with a legacy correction of its name); 5000 is a legacy addition.
INSERT INTO substance_name_conversion (id, ec_substance_name, corrected_name) VALUES
    (1, 'CFC-11 (non-virgin)', 'CFC-11 (recovered)'),
    (5000, 'HFO-1234yf (virgin)', 'HFO-1234yf (virgin)');
INSERT INTO country_codes_conversion (id, country_name_short_en, country_code_alpha2) VALUES
    (5000, 'KOSOVO', 'XK');
INSERT INTO licence_details_conversion (id, template_detailed_use_code, lic_use_kind, lic_use_desc, lic_type) VALUES
    (5000, 'critical.uses', 'free circulation', 'critical uses', 'import');

INSERT INTO stock (year, type, substance_name_form, code, is_virgin, result, undertaking_id) VALUES
    (2023, 'stock', 'HFC-134a', 'FGAS', true, 100, 51);
