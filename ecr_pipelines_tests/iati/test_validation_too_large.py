"""Issue 11 item 13: files over the IATI Validator API's size limit (it answers 413), through the
validate and clean stages on the embedded Postgres, with a stand-in API that refuses everything
as too large.

The refresher stored the 413 with no report (``document.validation`` NULL) and sent the file again
every minute: never cleaned, never indexed. ``IATI_VALIDATOR_TOO_LARGE=skip`` keeps that outcome
(without the every-minute resend); the default, ``local``, validates the file locally (schema
only, said in the report) so that it is cleaned and indexed like a file the API had accepted.
"""

import sqlalchemy as sa

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.iati.blobkeys import clean_key, source_key
from ecr_pipelines.iati.stages.clean import clean_due
from ecr_pipelines.iati.stages.validate import select_validation_due, validate_due
from ecr_pipelines.iati.validate import API_VERSION, validate_file
from ecr_pipelines.iati.validator_api import LocalValidator, ValidatorApiClient
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines_tests.iati.iati_samples import SAMPLES, mixed_document

TOO_LARGE = {"error": "Max Filesize of 60 MiB exceeded. File supplied is 61.5 MiB"}
FILES = {"valid": (SAMPLES / "real-world/3fi-activity.xml").read_bytes(), "mixed": mixed_document()}


def seed(db: DatabaseResource, store: BlobStore) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO iati.publisher (org_id, name, title) VALUES ('org-1', 'one', 'One')")
        )
        for doc_id, data in FILES.items():
            conn.execute(
                sa.text(
                    "INSERT INTO iati.document (id, hash, url, publisher, downloaded, download_encoding) "
                    "VALUES (:id, :hash, :url, 'org-1', now() - interval '3 hours', 'utf-8')"
                ),
                {"id": doc_id, "hash": f"h-{doc_id}", "url": f"http://publisher.test/{doc_id}.xml"},
            )
            store.put_bytes(source_key(f"h-{doc_id}"), data)


def api(standin: StandInServer, fallback: LocalValidator | None) -> ValidatorApiClient:
    for path in ("/api/pvt/schema-validate-file", "/api/pub/validate"):
        standin.route(path, method="POST", json=TOO_LARGE, status=413)
    return ValidatorApiClient(
        make_session(retries=0),
        standin.url("/api/pvt/schema-validate-file"),
        standin.url("/api/pub/validate"),
        too_large_fallback=fallback,
    )


def rows(db: DatabaseResource) -> dict[str, tuple]:
    with db.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT d.id, d.validation IS NOT NULL, d.validation_api_error, d.file_schema_valid, "
                "d.clean_end IS NOT NULL, v.report->>'apiVersion' "
                "FROM iati.document d LEFT JOIN iati.validation v ON v.id = d.validation"
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in found}


def test_legacy_outcome_with_skip(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, standin: StandInServer
) -> None:
    seed(iati_db, local_blobs.store)
    report = validate_due(iati_db.engine, local_blobs.store, api(standin, None), hold_hours=0)
    clean_due(iati_db.engine, local_blobs.store)

    # As the refresher: the status, no report, nothing cleaned (so nothing flattened or indexed).
    assert rows(iati_db) == {
        "valid": (False, 413, None, False, None),
        "mixed": (False, 413, None, False, None),
    }
    assert report.counts["validation_api_error_413"] == 2
    # Not re-sent at every run (the refresher's retry storm), only with retry_errors.
    with iati_db.connect() as conn:
        assert select_validation_due(Sql(conn), 0) == []
        assert len(select_validation_due(Sql(conn), 0, retry_errors=True)) == 2


def test_files_too_large_for_the_api_are_validated_locally_and_cleaned(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, standin: StandInServer
) -> None:
    seed(iati_db, local_blobs.store)
    report = validate_due(iati_db.engine, local_blobs.store, api(standin, LocalValidator()), hold_hours=0)
    clean_due(iati_db.engine, local_blobs.store)

    found = rows(iati_db)
    # Stored like the API's own answer for these files: valid → no status, invalid → 422.
    assert {doc: row[:4] for doc, row in found.items()} == {
        "valid": (True, None, True, True),
        "mixed": (True, 422, False, True),
    }
    for doc_id, row in found.items():
        assert row[4].startswith(API_VERSION) and "too large (HTTP 413)" in row[4], doc_id
    assert report.counts["validated_locally_too_large"] == 2
    assert "validation_api_error_413" not in report.counts
    # The partly invalid file is rebuilt from the local meta, as it would have been from the API's.
    meta = validate_file(FILES["mixed"])["iati-activities"]
    assert [m["valid"] for m in meta] == [True, False, True]
    clean = local_blobs.store.get_bytes(clean_key("h-mixed"))
    assert clean.count(b"<iati-activity") == 2 and b"XM-BROKEN-1" not in clean
    assert local_blobs.store.get_bytes(clean_key("h-valid")) == FILES["valid"]
