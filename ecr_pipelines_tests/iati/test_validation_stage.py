"""The validate / safety-check / clean stage functions against the real (embedded) Postgres: the
legacy work-selection predicates, set-based report storage with its hash guard, the black-flag
SQL, unflagging, clean selection, and claims of dead and live runs."""

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.iati.blobkeys import clean_key, source_key
from ecr_pipelines.iati.stages import clean as clean_stage
from ecr_pipelines.iati.stages.clean import clean_due
from ecr_pipelines.iati.stages.documents import needs_transcoding, transcode_to_utf8
from ecr_pipelines.iati.stages.safety import run_safety_check, unflag_publisher
from ecr_pipelines.iati.stages.validate import (
    DueForValidation,
    ValidationOutcome,
    select_validation_due,
    store_validation_outcomes,
    validate_due,
    validation_state,
)
from ecr_pipelines.iati.validate import SUPPORTED_VERSIONS, validate_file
from ecr_pipelines.iati.validator_api import LocalValidator, ValidatorAnswer
from ecr_pipelines.lib.batch import select_due
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.http import ErrorKind, FetchError
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.iati.claims import claim_for_dead_run, claim_for_live_run, claims
from ecr_pipelines_tests.iati.iati_samples import SAMPLES, mixed_document

HOLD = 2.0
VALID = validate_file(SAMPLES / "real-world/3fi-activity.xml")
MIXED = validate_file(mixed_document())
ORGANISATION = validate_file(SAMPLES / "official/organisation-standard-example-annotated.xml")
OLD_VERSION = validate_file(
    (SAMPLES / "real-world/3fi-activity.xml").read_bytes().replace(b'"2.03"', b'"1.05"', 1)
)


def execute(db: DatabaseResource, statement: str, **params: Any) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(statement), params)


def query(db: DatabaseResource, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(statement), params).all()]


def add_publisher(db: DatabaseResource, org_id: str, name: str | None = None, flagged: bool = False) -> None:
    execute(
        db,
        "INSERT INTO iati.publisher (org_id, name, title, black_flag) VALUES (:o, :n, :t, :f)",
        o=org_id,
        n=name or org_id,
        t=f"Publisher {org_id}",
        f=datetime.now(UTC) if flagged else None,
    )


def add_document(
    db: DatabaseResource,
    doc_id: str,
    publisher: str = "org-1",
    *,
    doc_hash: str | None = None,
    hours_ago: float | None = 3.0,
    **columns: Any,
) -> None:
    values: dict[str, Any] = {
        "id": doc_id,
        "hash": doc_id.replace("doc", "h") if doc_hash is None else doc_hash,
        "url": f"http://publisher.test/{doc_id}.xml",
        "publisher": publisher,
        "downloaded": None if hours_ago is None else datetime.now(UTC) - timedelta(hours=hours_ago),
        **columns,
    }
    names = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    execute(db, f"INSERT INTO iati.document ({names}) VALUES ({params})", **values)


def link_report(db: DatabaseResource, doc_id: str, report: dict[str, Any]) -> int:
    import json

    with db.begin() as conn:
        report_id = conn.execute(
            sa.text(
                "INSERT INTO iati.validation (document_id, document_hash, document_url, valid, report) "
                "SELECT id, hash, url, :valid, CAST(:report AS jsonb) FROM iati.document WHERE id = :id RETURNING id"
            ),
            {"id": doc_id, "valid": report["valid"], "report": json.dumps(report)},
        ).scalar_one()
        conn.execute(
            sa.text("UPDATE iati.document SET validation = :v WHERE id = :id"), {"v": report_id, "id": doc_id}
        )
    return report_id


def due_ids(db: DatabaseResource, **kwargs: Any) -> list[str]:
    with db.connect() as conn:
        return [d.id for d in select_validation_due(Sql(conn), kwargs.pop("hold", HOLD), **kwargs)]


def test_validation_work_selection(iati_db: DatabaseResource) -> None:
    add_publisher(iati_db, "org-1")
    add_publisher(iati_db, "org-2", flagged=True)
    add_document(iati_db, "doc-new", hours_ago=5)
    add_document(iati_db, "doc-newer", hours_ago=4)
    add_document(iati_db, "doc-not-downloaded", hours_ago=None)
    add_document(iati_db, "doc-download-error", download_error=404)
    add_document(iati_db, "doc-no-hash", doc_hash="")
    add_document(iati_db, "doc-validated")
    link_report(iati_db, "doc-validated", VALID)
    add_document(iati_db, "doc-regenerate", hours_ago=1)
    link_report(iati_db, "doc-regenerate", VALID)
    execute(
        iati_db, "UPDATE iati.document SET regenerate_validation_report = true WHERE id = 'doc-regenerate'"
    )
    add_document(iati_db, "doc-500", validation_api_error=500)  # failures are retried
    add_document(iati_db, "doc-413", validation_api_error=413)  # too large: only with retry_errors
    add_document(iati_db, "doc-invalid-recent", hours_ago=1, file_schema_valid=False)  # held for the check
    add_document(iati_db, "doc-invalid-old", hours_ago=3, file_schema_valid=False)
    add_document(iati_db, "doc-flagged-invalid", "org-2", file_schema_valid=False)  # held by the flag
    add_document(iati_db, "doc-flagged-valid", "org-2", hours_ago=2.5, file_schema_valid=True)
    add_document(iati_db, "doc-flagged-unknown", "org-2", hours_ago=2.6)  # schema check still due

    assert due_ids(iati_db) == [
        "doc-regenerate",  # re-validate requests first, then by download time
        "doc-new",
        "doc-newer",
        "doc-500",
        "doc-invalid-old",
        "doc-flagged-unknown",
        "doc-flagged-valid",
    ]
    assert "doc-413" in due_ids(iati_db, retry_errors=True)
    assert "doc-invalid-recent" in due_ids(iati_db, hold=0)
    assert due_ids(iati_db, limit=2) == ["doc-regenerate", "doc-new"]
    with iati_db.connect() as conn:
        state = validation_state(Sql(conn), HOLD)
    assert (state.with_report, state.api_error, state.held_by_flag, state.held_recent) == (2, 2, 1, 1)
    assert state.unaccounted == 5  # due, less the regenerate one (a report) and doc-500 (an error)


def outcome(doc: DueForValidation, kind: str, **kwargs: Any) -> ValidationOutcome:
    return ValidationOutcome(doc, kind, **kwargs)


def due_doc(db: DatabaseResource, doc_id: str) -> DueForValidation:
    with db.connect() as conn:
        return next(d for d in select_validation_due(Sql(conn), 0) if d.id == doc_id)


def test_reports_are_appended_and_documents_updated_set_based(iati_db: DatabaseResource) -> None:
    add_publisher(iati_db, "org-1", name="pub-one")
    for doc_id in ("doc-1", "doc-2", "doc-3", "doc-4", "doc-5"):
        add_document(iati_db, doc_id)
    link_report(iati_db, "doc-2", VALID)
    execute(
        iati_db,
        "UPDATE iati.document SET regenerate_validation_report = true, clean_start = now(), "
        "clean_error = 'Could not parse' WHERE id = 'doc-2'",
    )
    docs = {doc_id: due_doc(iati_db, doc_id) for doc_id in ("doc-1", "doc-2", "doc-3", "doc-4", "doc-5")}
    outcomes = [
        outcome(docs["doc-1"], "report", requested=True, schema_valid=True, report=VALID),
        outcome(docs["doc-2"], "report", requested=True, schema_valid=False, status=422, report=MIXED),
        outcome(
            docs["doc-3"], "api_error", requested=True, schema_valid=None, status=500, message="HTTP 500"
        ),
        outcome(docs["doc-4"], "held_recent", requested=True, schema_valid=False),
        outcome(docs["doc-5"], "missing_source", message="gone"),
    ]
    with iati_db.begin() as conn:
        sql = Sql(conn)
        stored = store_validation_outcomes(sql, outcomes)
        statements = sql.statements
    assert stored == {"doc-1", "doc-2"}
    assert statements <= 5  # one per kind of write, whatever the batch size

    rows = {r[0]: r[1:] for r in query(
        iati_db,
        "SELECT d.id, d.validation IS NOT NULL, d.validation_api_error, d.file_schema_valid, "
        "d.validation_request IS NOT NULL, d.regenerate_validation_report, d.downloaded IS NOT NULL, "
        "d.clean_start, d.clean_error FROM iati.document d ORDER BY d.id",
    )}  # fmt: skip
    assert rows["doc-1"] == (True, None, True, True, False, True, None, None)
    # re-validated: new report linked, flag reset, the failed clean cleared for a new try
    assert rows["doc-2"] == (True, 422, False, True, False, True, None, None)
    assert rows["doc-3"] == (False, 500, None, True, False, True, None, None)
    assert rows["doc-4"] == (False, None, False, True, False, True, None, None)
    assert rows["doc-5"][5] is False  # back to the download stage

    history = query(
        iati_db,
        "SELECT document_id, document_hash, valid, publisher, publisher_name, report->>'fileType' "
        "FROM iati.validation ORDER BY id",
    )
    assert history == [
        ("doc-2", "h-2", True, None, None, "iati-activities"),  # the old report is kept
        ("doc-1", "h-1", True, "org-1", "pub-one", "iati-activities"),
        ("doc-2", "h-2", False, "org-1", "pub-one", "iati-activities"),
    ]


def test_a_document_whose_hash_changed_meanwhile_is_left_alone(iati_db: DatabaseResource) -> None:
    add_publisher(iati_db, "org-1")
    add_document(iati_db, "doc-1")
    doc = due_doc(iati_db, "doc-1")
    execute(iati_db, "UPDATE iati.document SET hash = 'changed', downloaded = NULL WHERE id = 'doc-1'")
    with iati_db.begin() as conn:
        stored = store_validation_outcomes(Sql(conn), [outcome(doc, "report", requested=True, report=VALID)])
    assert stored == set()
    assert query(iati_db, "SELECT count(*) FROM iati.validation") == [(0,)]
    assert query(iati_db, "SELECT validation_request FROM iati.document") == [(None,)]


def test_nul_characters_in_an_api_report_are_dropped(iati_db: DatabaseResource) -> None:
    add_publisher(iati_db, "org-1")
    add_document(iati_db, "doc-1")
    report = {**VALID, "errors": [{"identifier": "file", "title": "a\x00b", "errors": []}]}
    with iati_db.begin() as conn:
        stored = store_validation_outcomes(
            Sql(conn), [outcome(due_doc(iati_db, "doc-1"), "report", report=report)]
        )
    assert stored == {"doc-1"}
    assert query(iati_db, "SELECT report->'errors'->0->>'title' FROM iati.validation") == [("ab",)]


def test_safety_check_flags_only_strictly_over_the_threshold_in_the_window(iati_db: DatabaseResource) -> None:
    for org in ("org-1", "org-2", "org-3", "org-4"):
        add_publisher(iati_db, org)
    # org-1: 4 recent invalid (over 3); org-2: exactly 3 (not over); org-3: 4 invalid but 2 are old;
    # org-4: 4 recent but schema-valid or unknown.
    plan = {
        "org-1": [(False, 0.5)] * 4,
        "org-2": [(False, 0.5)] * 3 + [(True, 0.5)],
        "org-3": [(False, 0.5)] * 2 + [(False, 5.0)] * 2,
        "org-4": [(True, 0.5)] * 2 + [(None, 0.5)] * 2,
    }
    n = 0
    for org, docs in plan.items():
        for schema_valid, hours in docs:
            n += 1
            add_document(iati_db, f"doc-{n}", org, hours_ago=hours, file_schema_valid=schema_valid)
    add_document(iati_db, "doc-never-downloaded", "org-2", hours_ago=None, file_schema_valid=False)

    with iati_db.begin() as conn:
        flagged = run_safety_check(Sql(conn), threshold=3, period_hours=2)
    assert [f.org_id for f in flagged] == ["org-1"]
    assert (flagged[0].recent_invalid, flagged[0].new) == (4, True)
    first_stamp = query(iati_db, "SELECT black_flag FROM iati.publisher WHERE org_id = 'org-1'")[0][0]
    execute(iati_db, "UPDATE iati.publisher SET black_flag_notified = true WHERE org_id = 'org-1'")

    with iati_db.begin() as conn:
        again = run_safety_check(Sql(conn), threshold=3, period_hours=2)
    assert [(f.org_id, f.new) for f in again] == [("org-1", False)]  # re-stamped, not new
    stamp, notified = query(
        iati_db, "SELECT black_flag, black_flag_notified FROM iati.publisher WHERE org_id = 'org-1'"
    )[0]
    assert stamp >= first_stamp and notified is True
    assert query(iati_db, "SELECT count(*) FROM iati.publisher WHERE black_flag IS NOT NULL") == [(1,)]
    # A longer window takes org-3's older documents in; a higher threshold flags nobody new.
    with iati_db.begin() as conn:
        assert [f.org_id for f in run_safety_check(Sql(conn), threshold=3, period_hours=6)] == [
            "org-1",
            "org-3",
        ]
    with iati_db.begin() as conn:
        assert run_safety_check(Sql(conn), threshold=4, period_hours=6) == []


def test_unflag_by_org_id_or_unique_name(iati_db: DatabaseResource) -> None:
    add_publisher(iati_db, "org-1", name="alpha", flagged=True)
    add_publisher(iati_db, "org-2", name="twin")
    add_publisher(iati_db, "org-3", name="twin")
    execute(iati_db, "UPDATE iati.publisher SET black_flag_notified = true")
    with iati_db.begin() as conn:
        cleared = unflag_publisher(Sql(conn), "alpha")
    assert cleared is not None and cleared[:2] == ("org-1", "alpha") and cleared[2] is not None
    assert query(
        iati_db, "SELECT black_flag, black_flag_notified FROM iati.publisher WHERE org_id = 'org-1'"
    ) == [(None, None)]
    with iati_db.begin() as conn:
        assert unflag_publisher(Sql(conn), "nobody") is None
        assert unflag_publisher(Sql(conn), "org-2") == ("org-2", "twin", None)
    with pytest.raises(ValueError, match="2 publishers"), iati_db.begin() as conn:
        unflag_publisher(Sql(conn), "twin")


def test_clean_selection_follows_the_report(iati_db: DatabaseResource) -> None:
    add_publisher(iati_db, "org-1")
    cases = {
        "doc-valid": VALID,
        "doc-mixed": MIXED,
        "doc-org": ORGANISATION,
        "doc-1x": OLD_VERSION,
        "doc-no-meta": {key: value for key, value in MIXED.items() if key != "iati-activities"},
        "doc-broken": validate_file(b"<iati-activities"),
    }
    for n, (doc_id, report) in enumerate(cases.items()):
        add_document(iati_db, doc_id, hours_ago=10 - n)
        link_report(iati_db, doc_id, report)
    add_document(iati_db, "doc-cleaned")
    link_report(iati_db, "doc-cleaned", VALID)
    execute(
        iati_db, "UPDATE iati.document SET clean_start = now(), clean_end = now() WHERE id = 'doc-cleaned'"
    )
    assert clean_due_ids(iati_db) == ["doc-valid", "doc-mixed"]
    valid = dict(query(iati_db, "SELECT document_id, valid FROM iati.validation"))
    assert (valid["doc-valid"], valid["doc-mixed"]) == (True, False)  # copied, rebuilt


def clean_due_ids(db: DatabaseResource, retry_errors: bool = False) -> list[str]:
    params = {"versions": list(SUPPORTED_VERSIONS), "retry": retry_errors}
    with db.connect() as conn:
        return select_due(conn, clean_stage.STAGE, params)


def test_clean_claims_of_dead_runs_are_taken_back_and_live_ones_left_alone(
    iati_db: DatabaseResource, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    add_publisher(iati_db, "org-1")
    valid_bytes = (SAMPLES / "real-world/3fi-activity.xml").read_bytes()
    started = datetime.now(UTC) - timedelta(hours=1)
    for n, (doc_id, columns) in enumerate(
        [
            ("doc-in-flight", {"clean_start": started}),  # the legacy "started" mark alone
            ("doc-dead-run", {"clean_start": started}),  # claimed by a run that was killed
            ("doc-live-run", {"clean_start": started}),  # claimed by a run still working
            ("doc-failed", {"clean_start": started, "clean_error": "Could not parse"}),
            ("doc-done", {"clean_start": started, "clean_end": started}),
        ]
    ):
        add_document(iati_db, doc_id, hours_ago=10 - n, **columns)
        link_report(iati_db, doc_id, VALID)
        store.put_bytes(source_key(doc_id.replace("doc", "h")), valid_bytes)
    claim_for_dead_run(iati_db, clean_stage.STAGE.name, "doc-dead-run")
    # A start time is no claim: only the failed and finished documents are not due.
    assert clean_due_ids(iati_db) == ["doc-in-flight", "doc-dead-run", "doc-live-run"]

    with claim_for_live_run(iati_db, clean_stage.STAGE.name, "doc-live-run"):
        # A live run's claim hides its document; a dead run's claim does not.
        assert clean_due_ids(iati_db) == ["doc-in-flight", "doc-dead-run"]
        report = clean_due(iati_db.engine, store)
        assert (report.recovered, report.due, report.kinds["copied"]) == (1, 2, 2)
        assert [(stage, item) for stage, item, _ in claims(iati_db)] == [
            (clean_stage.STAGE.name, "doc-live-run")
        ]
        cleaned = query(iati_db, "SELECT id FROM iati.document WHERE clean_end IS NOT NULL ORDER BY id")
        assert cleaned == [("doc-dead-run",), ("doc-done",), ("doc-in-flight",)]
        # Claiming marks the document started, as the legacy's clean_start did.
        [(restarted,)] = query(iati_db, "SELECT clean_start FROM iati.document WHERE id = 'doc-in-flight'")
        assert restarted > started

    # The live run died without cleaning its document: the next run takes it back. The failed
    # one waits for retry_errors.
    report = clean_due(iati_db.engine, store)
    assert (report.recovered, report.due, report.kinds["copied"]) == (1, 1, 1)
    assert clean_due_ids(iati_db) == [] and clean_due_ids(iati_db, retry_errors=True) == ["doc-failed"]
    assert claims(iati_db) == []


def test_clean_due_copies_rebuilds_and_records_errors(iati_db: DatabaseResource, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    add_publisher(iati_db, "org-1")
    valid_bytes = (SAMPLES / "real-world/3fi-activity.xml").read_bytes()
    for doc_id, data, report in [
        ("doc-valid", valid_bytes, VALID),
        ("doc-mixed", mixed_document(), MIXED),
        ("doc-none-valid", mixed_document(), {**MIXED, "iati-activities": [{"valid": False, "index": 0}]}),
        ("doc-unparseable", b"<iati-activities version='2.03'><iati-activity>", MIXED),
        ("doc-missing", None, VALID),
    ]:
        add_document(iati_db, doc_id)
        link_report(iati_db, doc_id, report)
        if data is not None:
            store.put_bytes(source_key(doc_id.replace("doc", "h")), data)

    report = clean_due(iati_db.engine, store, batch_size=2)

    assert (report.due, report.batches) == (5, 3)
    assert report.kinds == Counter(copied=1, rebuilt=1, error=2, sent_back=1)
    # The rebuilt file keeps two activities and drops one; the file with no valid activity
    # drops its only one.
    assert (report.counts["activities_kept"], report.counts["activities_dropped"]) == (2, 2)
    assert report.errors_by_class == Counter(no_valid_activities=1, could_not_parse=1)
    errors = {key: message for key, _, message in report.error_rows}
    assert errors["doc-none-valid"].startswith("No valid activities")
    assert errors["doc-unparseable"].startswith("Could not parse")
    assert [(key, kind) for key, kind, _ in report.other_rows] == [("doc-missing", "sent_back")]
    assert store.get_bytes(clean_key("h-valid")) == valid_bytes
    assert b"XM-BROKEN-1" not in store.get_bytes(clean_key("h-mixed"))
    rows = dict(
        query(
            iati_db,
            "SELECT id, coalesce(clean_error, CASE WHEN clean_end IS NULL THEN '-' ELSE 'done' END) FROM iati.document",
        )
    )
    assert rows == {
        "doc-valid": "done",
        "doc-mixed": "done",
        "doc-none-valid": "No valid activities",
        "doc-unparseable": "Could not parse",
        "doc-missing": "-",
    }
    assert query(iati_db, "SELECT downloaded, clean_start FROM iati.document WHERE id = 'doc-missing'") == [
        (None, None)
    ]
    # Errors are not retried every run, only on request (and fail again).
    assert clean_due(iati_db.engine, store).due == 0
    retried = clean_due(iati_db.engine, store, retry_errors=True)
    assert (retried.due, retried.errors) == (2, 2)


class Unreachable:
    name = "api"

    def schema_check(self, path: Path) -> ValidatorAnswer:
        raise FetchError(ErrorKind.CONNECTION, "connection refused", "http://validator.test")

    def full_check(self, path: Path, meta: bool) -> ValidatorAnswer:
        raise AssertionError("not reached")


def test_unreachable_validator_stops_the_run_and_leaves_documents_due(
    iati_db: DatabaseResource, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    add_publisher(iati_db, "org-1")
    for n in range(8):
        add_document(iati_db, f"doc-{n}")
        store.put_bytes(source_key(f"h-{n}"), b"<iati-activities version='2.03'/>")
    report = validate_due(iati_db.engine, store, Unreachable(), hold_hours=HOLD, batch_size=3)
    assert (
        report.stopped and "5 documents in a row" in report.stopped and "connection refused" in report.stopped
    )
    # Two batches: five failures in a row, then nothing more is tried.
    assert (report.due, report.batches, report.processed) == (8, 2, 5)
    assert (report.kinds, report.errors_by_class) == (Counter(left_due=5), Counter(validator_unreachable=5))
    assert query(iati_db, "SELECT count(*) FROM iati.document WHERE validation_request IS NULL") == [(8,)]
    assert query(iati_db, "SELECT count(*) FROM iati.document WHERE validation_api_error IS NOT NULL") == [
        (0,)
    ]
    assert claims(iati_db) == []  # the sixth document, claimed but not tried, is due again


def test_validate_due_with_the_local_validator(iati_db: DatabaseResource, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    add_publisher(iati_db, "org-1")
    add_document(iati_db, "doc-valid")
    add_document(iati_db, "doc-mixed-new", hours_ago=0.1)
    add_document(iati_db, "doc-missing")
    store.put_bytes(source_key("h-valid"), (SAMPLES / "real-world/3fi-activity.xml").read_bytes())
    store.put_bytes(source_key("h-mixed-new"), mixed_document())
    progress: list[str] = []

    report = validate_due(iati_db.engine, store, LocalValidator(), hold_hours=HOLD, progress=progress.append)

    assert report.kinds == Counter(valid=1, held_recent=1, sent_back=1)
    assert report.errors == 0 and [(k, kind) for k, kind, _ in report.other_rows] == [
        ("doc-missing", "sent_back")
    ]
    assert any(line.startswith("iati.validate: batch 1 of 1") and "rows/s" in line for line in progress)
    assert query(
        iati_db, "SELECT id, file_schema_valid, validation IS NOT NULL FROM iati.document ORDER BY id"
    ) == [
        ("doc-missing", None, False),
        ("doc-mixed-new", False, False),
        ("doc-valid", True, True),
    ]
    # Once the hold is over the mixed document is fully validated, with its meta list.
    report = validate_due(iati_db.engine, store, LocalValidator(), hold_hours=0)
    assert (report.kinds, report.counts["validation_api_error_422"]) == (Counter(invalid=1), 1)
    meta = query(iati_db, "SELECT v.report->'iati-activities' FROM iati.document d JOIN iati.validation v ON v.id = d.validation WHERE d.id = 'doc-mixed-new'")[0][0]  # fmt: skip
    assert [m["valid"] for m in meta] == [True, False, True]


@pytest.mark.parametrize(
    ("head", "encoding", "expected"),
    [
        (b"<iati-activities/>", None, False),
        (b"<iati-activities/>", "utf-8", False),
        (b"<iati-activities/>", "ascii", False),
        (b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>', "iso-8859-1", False),  # declared: lxml copes
        (b"\xef\xbb\xbf<a/>", "utf-8-sig", False),
        (b"<a>caf\xe9</a>", "cp1252", True),  # undeclared non-Unicode encoding
        (b"<?xml version='1.0'?><a>caf\xe9</a>", "cp1252", True),
    ],
)
def test_needs_transcoding(head: bytes, encoding: str | None, expected: bool) -> None:
    assert needs_transcoding(head, encoding) is expected


def test_undeclared_cp1252_file_is_validated_as_utf8(tmp_path: Path) -> None:
    text = (SAMPLES / "real-world/3fi-activity.xml").read_text(encoding="utf-8")
    body = text.split("?>", 1)[1].replace("<narrative>", "<narrative>Café ", 1)  # no declaration
    src = tmp_path / "cp1252.xml"
    src.write_bytes(body.encode("cp1252"))
    assert validate_file(src)["valid"] is False  # read as UTF-8, it is not well-formed
    dst = tmp_path / "utf8.xml"
    transcode_to_utf8(src, dst, "cp1252")
    assert validate_file(dst)["valid"] is True
    assert "Café".encode() in dst.read_bytes()


class OddReports:
    """Answers valid, except for files whose text names the odd value to put in the report."""

    name = "api"

    def schema_check(self, path: Path) -> ValidatorAnswer:
        return ValidatorAnswer(200, {"valid": True})

    def full_check(self, path: Path, meta: bool) -> ValidatorAnswer:
        body = path.read_bytes()
        extra: dict[str, Any] = {}
        if b"NAN" in body:
            extra["score"] = float("nan")  # not JSON: the database refuses it
        if b"SURROGATE" in body:
            extra["title"] = "broken \udc80 text"
        return ValidatorAnswer(200, {**VALID, **extra})


def test_a_report_the_database_refuses_does_not_sink_its_batch(
    iati_db: DatabaseResource, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    add_publisher(iati_db, "org-1")
    for doc_id, marker in [
        ("doc-1", b""),
        ("doc-nan", b"NAN"),
        ("doc-surrogate", b"SURROGATE"),
        ("doc-4", b""),
    ]:
        add_document(iati_db, doc_id)
        store.put_bytes(
            source_key(doc_id.replace("doc", "h")), b"<iati-activities version='2.03'/><!--" + marker + b"-->"
        )

    report = validate_due(iati_db.engine, store, OddReports(), hold_hours=HOLD)

    assert (report.kinds, report.errors, report.counts["validation_api_error_502"]) == (
        Counter(valid=3, api_error=1),
        1,
        1,
    )
    [(key, error_class, message)] = report.error_rows
    assert (key, error_class) == ("doc-nan", "validator_502") and "report could not be stored" in message
    assert query(
        iati_db, "SELECT id, validation IS NOT NULL, validation_api_error FROM iati.document ORDER BY id"
    ) == [
        ("doc-1", True, None),
        ("doc-4", True, None),
        ("doc-nan", False, 502),
        ("doc-surrogate", True, None),
    ]
