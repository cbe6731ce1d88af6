-- A refresher caught mid-flight: documents at every stage, one of them with a report history, a
-- black-flagged publisher, and a row of a table we do not carry over. Timestamps are UTC.

INSERT INTO version VALUES ('2.9.2', 27);

INSERT INTO publisher (org_id, name, title, created, last_seen, package_count, iati_id, black_flag, black_flag_notified) VALUES
    ('org-1', 'wfp', 'World Food Programme', '2020-01-01 00:00:00', '2026-06-30 10:00:00', 5, 'XM-DAC-41140', NULL, NULL),
    ('org-2', 'flagged', 'Flagged Org', '2021-01-01 00:00:00', '2026-06-30 10:00:00', 1, 'XI-FLAG', '2026-06-01 08:00:00', true);

INSERT INTO validation (id, document_id, document_hash, document_url, created, valid, report, publisher, publisher_name) VALUES
    (11, 'doc-a', 'old-a', 'https://pub.test/a.xml', '2025-01-01 12:00:00', false,
     '{"valid": false, "fileType": "iati-activities", "iatiVersion": "2.03"}', 'org-1', 'wfp'),
    (12, 'doc-a', 'aaa1', 'https://pub.test/a.xml', '2026-06-01 12:00:00', true,
     '{"valid": true, "fileType": "iati-activities", "iatiVersion": "2.03"}', 'org-1', 'wfp'),
    (13, 'doc-b', 'bbb2', 'https://pub.test/b.xml', '2026-06-01 12:05:00', true,
     '{"valid": true, "fileType": "iati-activities", "iatiVersion": "2.03"}', 'org-1', 'wfp'),
    (16, 'doc-f', 'fff6', 'https://pub.test/f.xml', '2026-06-01 12:10:00', true,
     '{"valid": true, "fileType": "iati-activities", "iatiVersion": "2.03"}', 'org-1', 'wfp');

-- doc-a: every stage done; doc-b: cleaned, flatten pending; doc-c: downloaded, not validated;
-- doc-d: download failed; doc-e: new; doc-f: indexed; doc-g: no usable copy (code 4).
INSERT INTO document (id, hash, url, cached_dataset_url, name, publisher, first_seen, last_seen, modified,
                      downloaded, download_error, validation_request, validation_api_error, file_schema_valid,
                      validation, clean_start, clean_end, flatten_start, flatten_end, flattened_activities,
                      lakify_start, lakify_end, solrize_start, solrize_end, last_solrize_end) VALUES
    ('doc-a', 'aaa1', 'https://pub.test/a.xml', 'https://cache.test/a.xml', 'wfp-a', 'org-1',
     '2020-01-01 00:00:00', '2026-06-30 10:00:00', '2026-06-01 11:00:00',
     '2026-06-01 11:30:00', NULL, '2026-06-01 12:00:00', NULL, true, 12,
     '2026-06-01 12:30:00', '2026-06-01 12:31:00', '2026-06-01 13:00:00', '2026-06-01 13:01:00',
     '[{"iati_identifier": "XM-DAC-41140-A1"}]',
     '2026-06-01 13:02:00', '2026-06-01 13:03:00', '2026-06-01 13:04:00', '2026-06-01 13:05:00', '2026-06-01 13:05:00'),
    ('doc-b', 'bbb2', 'https://pub.test/b.xml', 'https://cache.test/b.xml', 'wfp-b', 'org-1',
     '2020-01-01 00:00:00', '2026-06-30 10:00:00', NULL,
     '2026-06-01 11:35:00', NULL, '2026-06-01 12:05:00', NULL, true, 13,
     '2026-06-01 12:35:00', '2026-06-01 12:36:00', NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL),
    ('doc-c', 'ccc3', 'https://pub.test/c.xml', 'https://cache.test/c.xml', 'wfp-c', 'org-1',
     '2026-06-30 09:00:00', '2026-06-30 10:00:00', NULL,
     '2026-06-30 09:30:00', NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    ('doc-d', 'ddd4', 'https://pub.test/d.xml', 'https://cache.test/d.xml', 'wfp-d', 'org-1',
     '2026-06-30 09:00:00', '2026-06-30 10:00:00', NULL,
     NULL, 404, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    ('doc-e', 'eee5', 'https://pub.test/e.xml', 'https://cache.test/e.xml', 'wfp-e', 'org-1',
     '2026-06-30 09:55:00', '2026-06-30 10:00:00', NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    ('doc-f', 'fff6', 'https://pub.test/f.xml', 'https://cache.test/f.xml', 'flagged-f', 'org-2',
     '2021-01-01 00:00:00', '2026-06-30 10:00:00', NULL,
     '2026-06-01 11:40:00', NULL, '2026-06-01 12:10:00', NULL, true, 16,
     '2026-06-01 12:40:00', '2026-06-01 12:41:00', '2026-06-01 13:10:00', '2026-06-01 13:11:00',
     '[{"iati_identifier": "XI-FLAG-F1"}]',
     '2026-06-01 13:12:00', '2026-06-01 13:13:00', '2026-06-01 13:14:00', '2026-06-01 13:15:00', '2026-06-01 13:15:00'),
    ('doc-g', '', 'https://pub.test/g.xml', NULL, 'flagged-g', 'org-2',
     '2026-06-30 09:00:00', '2026-06-30 10:00:00', NULL,
     NULL, 4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

INSERT INTO adhoc_validation (guid, filename, valid, report) VALUES ('g-1', 'upload.xml', true, '{}');
