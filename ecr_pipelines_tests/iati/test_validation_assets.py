"""The validate → black flag → clean assets end to end, materialized on the embedded Postgres with a
local blob store. Document rows and source blobs are seeded as the download stage leaves them
(the sample files, a mixed-validity file, garbage, hostile XML); the ``api`` back end runs against
a stand-in IATI Validator API; black-flag mails go to a real SMTP server on loopback."""

import hashlib
import json
import socket
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from lxml import etree

from ecr_pipelines.dev.standins import RecordedRequest, Reply, StandInServer
from ecr_pipelines.iati.blobkeys import clean_key, source_key
from ecr_pipelines.iati.defs import build_defs as build_iati_defs
from ecr_pipelines.iati.defs import core_defs
from ecr_pipelines.iati.defs.clean import clean_checks, iati_clean_files
from ecr_pipelines.iati.defs.resources import IatiValidatorResource, SolrResource
from ecr_pipelines.iati.defs.safety import iati_publisher_flags, iati_unflag_publisher_job, safety_checks
from ecr_pipelines.iati.defs.validate import iati_validation_reports, validate_checks
from ecr_pipelines.iati.stages import clean as clean_stage
from ecr_pipelines.iati.validate import validate_file
from ecr_pipelines.iati.validator_api import local_status
from ecr_pipelines.resources import (
    BlobStoreResource,
    DatabaseResource,
    HttpResource,
    MailResource,
    build_resources,
)
from ecr_pipelines_tests.conftest import SmtpSink
from ecr_pipelines_tests.iati.claims import claim_for_dead_run, claims
from ecr_pipelines_tests.iati.conftest import MOUNT, asset_metadata, iati_resource
from ecr_pipelines_tests.iati.iati_samples import ROOT_ATTRIBUTES, SAMPLES, mixed_document

STAGES = [iati_validation_reports, iati_publisher_flags, iati_clean_files]
CHECKS = [*validate_checks, *safety_checks, *clean_checks]
MAIL_TO = "iati-ops@example.org"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\nstream\n\x78\x9c\xcb\x48\xcd\xc9\xc9\x07\x00\nendstream\n%%EOF\n"
LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 9)
    )
    + b']>\n<iati-activities version="2.03"><iati-activity>&lol8;</iati-activity></iati-activities>'
)


def xxe(target: Path) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "{target.as_uri()}">]>\n'
        '<iati-activities version="2.03"><iati-activity>&xxe;</iati-activity></iati-activities>'
    ).encode()


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def broken_copy(name: str, marker: str) -> bytes:
    """A schema-invalid variant of a sample (an element the schema forbids in every activity)."""
    root = etree.fromstring(sample(name))
    for activity in root.iter("iati-activity"):
        activity.find("iati-identifier").text = f"{marker}-{activity.findtext('iati-identifier')}"
        activity.find("title").addprevious(etree.Element("not-an-iati-element"))
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def query(db: DatabaseResource, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(statement), params).all()]


def execute(db: DatabaseResource, statement: str, **params: Any) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(statement), params)


def add_publisher(db: DatabaseResource, org_id: str, name: str) -> None:
    execute(
        db,
        "INSERT INTO iati.publisher (org_id, name, title, iati_id) VALUES (:o, :n, :t, :i)",
        o=org_id,
        n=name,
        t=f"{name.title()} Organisation",
        i=f"XM-{name.upper()}",
    )


def add_document(
    db: DatabaseResource,
    blobs: BlobStoreResource,
    doc_id: str,
    publisher: str,
    data: bytes | None,
    hours_ago: float | None = 3.0,
) -> str:
    """A document as the download stage leaves it: row downloaded, source blob stored."""
    doc_hash = hashlib.sha1(doc_id.encode() + (data or b"")).hexdigest()
    execute(
        db,
        "INSERT INTO iati.document (id, hash, url, cached_dataset_url, name, publisher, downloaded, "
        "download_encoding, download_size) VALUES (:id, :h, :u, :c, :n, :p, :d, 'utf-8', :s)",
        id=doc_id,
        h=doc_hash,
        u=f"http://publisher.test/{doc_id}.xml",
        c=f"http://cache.test/{doc_hash}.xml",
        n=doc_id,
        p=publisher,
        d=None if hours_ago is None else datetime.now(UTC) - timedelta(hours=hours_ago),
        s=len(data or b""),
    )
    if data is not None:
        blobs.store.put_bytes(source_key(doc_hash), data)
    return doc_hash


def make_resources(
    db: DatabaseResource, blobs: BlobStoreResource, tmp_path: Path, **overrides: Any
) -> dict[str, Any]:
    validator = overrides.pop("iati_validator", None) or IatiValidatorResource(black_flag_mail_to=MAIL_TO)
    return {
        "db": db,
        "blobs": blobs,
        "http": HttpResource(retries=0, backoff=0.01),
        "mail": overrides.pop("mail", None) or MailResource(outbox_dir=str(tmp_path / "outbox")),
        "iati_validator": validator,
        **overrides,
    }


def materialize(
    resources: dict[str, Any], assets: list[dg.AssetsDefinition] | None = None, **config: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    selected = assets or STAGES
    keys = {a.key for a in selected}
    checks = [c for c in CHECKS if next(iter(c.check_keys)).asset_key in keys]
    run_config = {"ops": {name: {"config": value} for name, value in config.items()}} if config else None
    return dg.materialize(
        [*selected, *checks], resources=resources, run_config=run_config, raise_on_error=False
    )


def unflag(db: DatabaseResource, publisher: str) -> dg.ExecuteInProcessResult:
    return iati_unflag_publisher_job.execute_in_process(
        run_config={"ops": {"iati_unflag_publisher": {"config": {"publisher": publisher}}}},
        resources={"db": db},
        raise_on_error=False,
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def identifiers(data: bytes) -> list[str]:
    return [a.findtext("iati-identifier") for a in etree.fromstring(data).iter("iati-activity")]


def test_validate_and_clean_every_kind_of_document(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    add_publisher(iati_db, "org-1", "alpha")
    hashes = {
        doc_id: add_document(iati_db, local_blobs, doc_id, "org-1", data)
        for doc_id, data in [
            ("valid", sample("real-world/3fi-activity.xml")),
            ("valid-4", sample("real-world/gdihub-activity.xml")),
            ("mixed", mixed_document()),
            ("organisation", sample("official/organisation-standard-example-annotated.xml")),
            (
                "version-1",
                sample("real-world/3fi-activity.xml").replace(b'version="2.03"', b'version="1.05"', 1),
            ),
            ("pdf", PDF),
            ("xxe", xxe(secret)),
            ("laughs", LAUGHS),
            ("missing", None),
        ]
    }
    add_document(iati_db, local_blobs, "not-downloaded", "org-1", None, hours_ago=None)

    result = materialize(make_resources(iati_db, local_blobs, tmp_path))

    assert result.success
    assert checks(result) == dict.fromkeys(
        [
            "iati_downloaded_documents_validated",
            "iati_validation_reports_match_documents",
            "iati_black_flags_notified",
            "iati_clean_files_stored",
            "iati_cleanable_documents_cleaned",
        ],
        True,
    )
    rows = {
        r[0]: r[1:]
        for r in query(
            iati_db,
            "SELECT d.id, v.valid, d.validation_api_error, d.file_schema_valid, d.clean_end IS NOT NULL, "
            "d.clean_error, d.downloaded IS NOT NULL FROM iati.document d "
            "LEFT JOIN iati.validation v ON v.id = d.validation",
        )
    }
    assert rows == {
        "valid": (True, None, True, True, None, True),
        "valid-4": (True, None, True, True, None, True),
        "mixed": (False, 422, False, True, None, True),
        "organisation": (True, None, True, False, None, True),  # goes no further
        "version-1": (False, 422, False, False, None, True),  # goes no further
        "pdf": (False, 400, False, False, None, True),  # a report with a critical error
        "xxe": (False, 400, False, False, None, True),
        "laughs": (False, 400, False, False, None, True),
        "missing": (None, None, None, False, None, False),  # back to the download stage
        "not-downloaded": (None, None, None, False, None, False),
    }
    reports = dict(query(iati_db, "SELECT document_id, report FROM iati.validation"))
    assert reports["pdf"]["summary"]["critical"] == 1
    assert "TOP-SECRET" not in json.dumps(reports["xxe"])
    assert "Unsafe XML rejected" in json.dumps(reports["xxe"]) and "Unsafe XML rejected" in json.dumps(
        reports["laughs"]
    )
    assert [m["valid"] for m in reports["mixed"]["iati-activities"]] == [True, False, True]

    store = local_blobs.store
    assert store.get_bytes(clean_key(hashes["valid"])) == sample("real-world/3fi-activity.xml")
    assert store.get_bytes(clean_key(hashes["valid-4"])) == sample("real-world/gdihub-activity.xml")
    cleaned = store.get_bytes(clean_key(hashes["mixed"]))
    expected = [identifiers(mixed_document())[0], identifiers(mixed_document())[2]]
    assert identifiers(cleaned) == expected and "XM-BROKEN-1" not in cleaned.decode()
    root = etree.fromstring(cleaned)
    for attribute in ROOT_ATTRIBUTES.split(b'" '):
        name, value = attribute.decode().split('="')
        assert root.get(name) == value.rstrip('"')
    assert validate_file(cleaned)["valid"] is True  # only valid activities are left
    assert sorted(store.list("iati/clean/")) == sorted(
        clean_key(hashes[d]) for d in ("valid", "valid-4", "mixed")
    )

    meta = asset_metadata(result)
    validation = meta["iati_validation_reports"]
    assert (
        validation["due"],
        validation["processed"],
        validation["outcome_valid"],
        validation["outcome_invalid"],
    ) == (9, 9, 3, 5)
    # The missing source is no error of the validation: the document goes back to download.
    assert (validation["errors"], validation["outcome_sent_back"], validation["dagster/row_count"]) == (
        0,
        1,
        8,
    )
    assert validation["validation_api_error_400"] == 3 and validation["validation_api_error_422"] == 2
    assert (validation["with_report_total"], validation["unaccounted_total"]) == (8, 0)
    assert validation["backend"] == "local" and validation["error_preview"] == "_none_"
    assert "| missing | sent_back | source blob" in validation["other_outcomes"]
    clean = meta["iati_clean_files"]
    assert (
        clean["outcome_copied"],
        clean["outcome_rebuilt"],
        clean["activities_kept"],
        clean["activities_dropped"],
    ) == (2, 1, 2, 1)
    assert (clean["errors"], clean["not_cleanable_total"], clean["dagster/row_count"]) == (0, 5, 3)
    assert meta["iati_publisher_flags"]["dagster/row_count"] == 0

    # A second run finds nothing due, and stored reports and files stay as they are.
    again = asset_metadata(materialize(make_resources(iati_db, local_blobs, tmp_path)))
    assert again["iati_validation_reports"]["due"] == 0 and again["iati_clean_files"]["due"] == 0
    assert query(iati_db, "SELECT count(*) FROM iati.validation") == [(8,)]


def test_black_flag_is_set_mailed_once_holds_documents_and_is_cleared(
    iati_db: DatabaseResource,
    local_blobs: BlobStoreResource,
    tmp_path: Path,
    smtp_server: tuple[str, SmtpSink],
) -> None:
    smtp_url, sink = smtp_server
    add_publisher(iati_db, "org-bad", "floody")
    add_publisher(iati_db, "org-good", "careful")
    for n in range(3):
        add_document(
            iati_db,
            local_blobs,
            f"bad-{n}",
            "org-bad",
            broken_copy("real-world/3fi-activity.xml", f"B{n}"),
            0.5,
        )
    add_document(iati_db, local_blobs, "bad-valid", "org-bad", sample("real-world/fcdo-activity.xml"), 0.5)
    add_document(iati_db, local_blobs, "good-mixed", "org-good", mixed_document(), 0.5)
    resources = make_resources(
        iati_db,
        local_blobs,
        tmp_path,
        iati_validator=IatiValidatorResource(safety_check_threshold=2, black_flag_mail_to=MAIL_TO),
        mail=MailResource(smtp_url=smtp_url, sender="ecr@example.org"),
    )

    first = materialize(resources)
    assert first.success and all(checks(first).values())
    flags = asset_metadata(first)["iati_publisher_flags"]
    assert (flags["new_flags"], flags["dagster/row_count"], flags["held_documents"]) == (1, 1, 3)
    # Queued with the flag, in its transaction, and sent by the asset once that committed.
    assert (flags["mails_queued"], flags["mails_sent"], flags["errors"]) == (1, 1, 0)
    validation = asset_metadata(first)["iati_validation_reports"]
    assert validation["held_for_safety_check_total"] == 4  # 3 bad + the mixed one
    assert validation["outcome_held_recent"] == 4
    assert query(
        iati_db, "SELECT org_id, black_flag IS NOT NULL, black_flag_notified FROM iati.publisher ORDER BY 1"
    ) == [
        ("org-bad", True, True),
        ("org-good", False, None),
    ]
    [(sender, recipients, raw)] = sink.messages
    mail = message_from_bytes(raw)
    assert (sender, recipients) == ("ecr@example.org", [MAIL_TO])
    assert mail["Subject"] == "IATI: publisher floody black-flagged"
    body = mail.get_payload(decode=True).decode()
    assert "Over 2 critical documents in the last 2 hours." in body and "iati_unflag_publisher_job" in body
    assert query(
        iati_db, "SELECT recipients, subject, sent_at IS NOT NULL, attempts FROM pipeline.mail_outbox"
    ) == [([MAIL_TO], "IATI: publisher floody black-flagged", True, 1)]
    # The valid document of the flagged publisher went through.
    assert query(iati_db, "SELECT id FROM iati.document WHERE clean_end IS NOT NULL") == [("bad-valid",)]

    # Two hours later: the flag (no expiry) still holds org-bad's invalid files; org-good's are done.
    execute(iati_db, "UPDATE iati.document SET downloaded = downloaded - interval '3 hours'")
    second = materialize(resources)
    assert second.success and all(checks(second).values())
    # The flag is re-stamped, not new: nothing queued, nothing sent, one mail in all.
    second_flags = asset_metadata(second)["iati_publisher_flags"]
    assert (second_flags["new_flags"], second_flags["mails_queued"], second_flags["mails_sent"]) == (0, 0, 0)
    assert len(sink.messages) == 1
    assert query(iati_db, "SELECT count(*) FROM pipeline.mail_outbox") == [(1,)]
    assert query(iati_db, "SELECT id FROM iati.document WHERE validation IS NULL ORDER BY id") == [
        ("bad-0",),
        ("bad-1",),
        ("bad-2",),
    ]
    assert query(iati_db, "SELECT id FROM iati.document WHERE clean_end IS NOT NULL ORDER BY id") == [
        ("bad-valid",),
        ("good-mixed",),
    ]

    assert unflag(iati_db, "org-bad").success
    assert query(
        iati_db, "SELECT black_flag, black_flag_notified FROM iati.publisher WHERE org_id = 'org-bad'"
    ) == [(None, None)]

    third = materialize(resources)
    assert third.success
    assert asset_metadata(third)["iati_validation_reports"]["outcome_invalid"] == 3
    assert asset_metadata(third)["iati_publisher_flags"]["dagster/row_count"] == 0  # out of the window now
    assert query(iati_db, "SELECT count(*) FROM iati.document WHERE validation IS NULL") == [(0,)]
    # Every activity of those files is invalid: nothing to publish from them.
    assert query(iati_db, "SELECT DISTINCT clean_error FROM iati.document WHERE id LIKE 'bad-_'") == [
        ("No valid activities",)
    ]

    assert not unflag(iati_db, "nobody").success


def test_flag_without_recipients_is_not_marked_notified(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    add_publisher(iati_db, "org-bad", "floody")
    for n in range(2):
        add_document(iati_db, local_blobs, f"bad-{n}", "org-bad", PDF + str(n).encode(), 0.2)
    resources = make_resources(
        iati_db, local_blobs, tmp_path, iati_validator=IatiValidatorResource(safety_check_threshold=1)
    )
    result = materialize(resources, [iati_validation_reports, iati_publisher_flags])
    assert result.success
    assert checks(result)["iati_black_flags_notified"] is False  # warns
    flags = asset_metadata(result)["iati_publisher_flags"]
    assert (flags["new_flags"], flags["unnotified"], flags["mails_queued"], flags["mails_sent"]) == (
        1,
        1,
        0,
        0,
    )
    assert query(iati_db, "SELECT count(*) FROM pipeline.mail_outbox") == [(0,)]
    assert not (tmp_path / "outbox").exists()


def test_a_flag_whose_mail_failed_keeps_its_mail_for_a_later_run(
    iati_db: DatabaseResource,
    local_blobs: BlobStoreResource,
    tmp_path: Path,
    smtp_server: tuple[str, SmtpSink],
) -> None:
    smtp_url, sink = smtp_server
    add_publisher(iati_db, "org-bad", "floody")
    for n in range(2):
        add_document(iati_db, local_blobs, f"bad-{n}", "org-bad", PDF + str(n).encode(), 0.2)
    validator = IatiValidatorResource(safety_check_threshold=1, black_flag_mail_to=MAIL_TO)
    with socket.socket() as probe:  # a port nobody listens on: the mail server is down
        probe.bind(("127.0.0.1", 0))
        down = f"smtp://127.0.0.1:{probe.getsockname()[1]}"
    stages = [iati_validation_reports, iati_publisher_flags]

    first = materialize(
        make_resources(
            iati_db, local_blobs, tmp_path, iati_validator=validator, mail=MailResource(smtp_url=down)
        ),
        stages,
    )

    # The run succeeds and the flag stands; the mail waits in the outbox with its error.
    assert first.success
    flags = asset_metadata(first)["iati_publisher_flags"]
    assert (flags["new_flags"], flags["mails_queued"], flags["mails_sent"], flags["errors"]) == (1, 1, 0, 1)
    assert query(iati_db, "SELECT black_flag IS NOT NULL, black_flag_notified FROM iati.publisher") == [
        (True, True)
    ]
    [(sent, attempts, error)] = query(iati_db, "SELECT sent_at, attempts, error FROM pipeline.mail_outbox")
    assert (sent, attempts) == (None, 1) and error

    # Its retry time comes; the next run sends it, with the mail server back.
    execute(iati_db, "UPDATE pipeline.mail_outbox SET next_attempt = now()")
    working = make_resources(
        iati_db, local_blobs, tmp_path, iati_validator=validator, mail=MailResource(smtp_url=smtp_url)
    )
    second = asset_metadata(materialize(working, stages))["iati_publisher_flags"]
    assert (second["new_flags"], second["mails_queued"], second["mails_sent"]) == (0, 0, 1)
    [(_, recipients, raw)] = sink.messages
    assert recipients == [MAIL_TO] and b"floody" in raw
    assert asset_metadata(materialize(working, stages))["iati_publisher_flags"]["mails_sent"] == 0
    assert len(sink.messages) == 1


def test_crash_recovery_and_clean_error_retries(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    add_publisher(iati_db, "org-1", "alpha")
    crashed = add_document(iati_db, local_blobs, "crashed", "org-1", sample("real-world/fcdo-activity.xml"))
    failed = add_document(iati_db, local_blobs, "failed", "org-1", mixed_document())
    resources = make_resources(iati_db, local_blobs, tmp_path)
    assert materialize(resources, [iati_validation_reports]).success
    # A clean that died half way (its run killed with the claim held), and one that failed (its
    # source was broken at the time).
    execute(iati_db, "UPDATE iati.document SET clean_start = now() - interval '1 hour'")
    execute(iati_db, "UPDATE iati.document SET clean_error = 'Could not parse' WHERE id = 'failed'")
    claim_for_dead_run(iati_db, clean_stage.STAGE.name, "crashed")

    result = materialize(resources, [iati_clean_files])
    clean = asset_metadata(result)["iati_clean_files"]
    assert (clean["recovered"], clean["due"], clean["outcome_copied"], clean["processed"]) == (1, 1, 1, 1)
    assert local_blobs.store.exists(clean_key(crashed)) and not local_blobs.store.exists(clean_key(failed))
    assert checks(result) == {"iati_clean_files_stored": True, "iati_cleanable_documents_cleaned": True}
    assert claims(iati_db) == []

    retried = asset_metadata(
        materialize(resources, [iati_clean_files], iati_clean_files={"retry_errors": True})
    )
    assert (retried["iati_clean_files"]["due"], retried["iati_clean_files"]["outcome_rebuilt"]) == (1, 1)
    assert query(
        iati_db, "SELECT count(*) FROM iati.document WHERE clean_end IS NOT NULL AND clean_error IS NULL"
    ) == [(2,)]

    # A clean file that disappeared is caught by the check.
    local_blobs.store.delete(clean_key(crashed))
    assert checks(materialize(resources, [iati_clean_files]))["iati_clean_files_stored"] is False


def test_regenerate_flag_appends_a_new_report_and_keeps_the_old(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    add_publisher(iati_db, "org-1", "alpha")
    doc_hash = add_document(iati_db, local_blobs, "doc", "org-1", sample("real-world/3fi-activity.xml"))
    resources = make_resources(iati_db, local_blobs, tmp_path)
    assert materialize(resources).success
    first = query(iati_db, "SELECT validation FROM iati.document")[0][0]
    execute(iati_db, "UPDATE iati.document SET regenerate_validation_report = true")

    result = materialize(resources)

    assert asset_metadata(result)["iati_validation_reports"]["outcome_valid"] == 1
    assert asset_metadata(result)["iati_clean_files"]["due"] == 0  # the finished clean file is kept
    rows = query(
        iati_db, "SELECT validation, regenerate_validation_report, clean_end IS NOT NULL FROM iati.document"
    )
    assert rows[0][0] > first and rows[0][1:] == (False, True)
    assert query(iati_db, "SELECT count(*) FROM iati.validation WHERE document_id = 'doc'") == [(2,)]
    assert local_blobs.store.exists(clean_key(doc_hash))


@pytest.fixture
def validator_api(standin: StandInServer) -> StandInServer:
    """A stand-in IATI Validator API that judges with the local validator; a document naming
    TOO-LARGE gets 413 and one naming CRASH a 500 from the full validation."""

    def check_key(request: RecordedRequest) -> Reply | None:
        if request.headers.get("x-functions-key") != "k3y":
            return Reply.json({"error": "unauthorised"}, status=401)
        return None

    def schema(request: RecordedRequest) -> Reply:
        return check_key(request) or Reply.json({"valid": validate_file(request.body)["valid"]})

    def full(request: RecordedRequest) -> Reply:
        if refused := check_key(request):
            return refused
        if b"TOO-LARGE" in request.body:
            return Reply.json({"error": "Max Filesize of 60 MiB exceeded."}, status=413)
        if b"CRASH" in request.body:
            return Reply.json({"error": "internal"}, status=500)
        report = validate_file(request.body)
        if request.query.get("meta") != "true":
            report.pop(report["fileType"], None)
        return Reply.json(report, status=local_status(report))

    standin.route("/api/pvt/schema-validate-file", method="POST", handler=schema)
    standin.route("/api/pub/validate", method="POST", handler=full)
    return standin


def test_api_backend_end_to_end(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path, validator_api: StandInServer
) -> None:
    add_publisher(iati_db, "org-1", "alpha")
    valid = sample("real-world/3fi-activity.xml")
    hashes = {
        doc_id: add_document(iati_db, local_blobs, doc_id, "org-1", data)
        for doc_id, data in [
            ("valid", valid),
            ("mixed", mixed_document()),
            ("pdf", PDF),
            ("too-large", valid.replace(b"<iati-activities", b"<!-- TOO-LARGE -->\n<iati-activities", 1)),
            ("crash", valid.replace(b"<iati-activities", b"<!-- CRASH -->\n<iati-activities", 1)),
        ]
    }
    validator = IatiValidatorResource(
        backend="api",
        api_url=validator_api.url("/api/pub/validate"),
        schema_api_url=validator_api.url("/api/pvt/schema-validate-file"),
        api_key_value="k3y",
        too_large="skip",  # the refresher's outcome for a 413; the local fallback is tested elsewhere
    )
    resources = make_resources(iati_db, local_blobs, tmp_path, iati_validator=validator)

    result = materialize(resources)

    assert result.success and all(checks(result).values())
    rows = {
        r[0]: r[1:]
        for r in query(
            iati_db,
            "SELECT id, validation IS NOT NULL, validation_api_error, file_schema_valid, clean_end IS NOT NULL "
            "FROM iati.document",
        )
    }
    assert rows == {
        "valid": (True, None, True, True),
        "mixed": (True, 422, False, True),
        "pdf": (True, 400, False, False),
        "too-large": (False, 413, True, False),
        "crash": (False, 500, True, False),
    }
    full_calls = validator_api.requests_to("/api/pub/validate")
    assert {r.query.get("meta") for r in full_calls if b"XM-BROKEN-1" in r.body} == {"true"}
    assert all("meta" not in r.query for r in full_calls if r.body in (valid,))
    assert identifiers(local_blobs.store.get_bytes(clean_key(hashes["mixed"]))) == [
        identifiers(mixed_document())[0],
        identifiers(mixed_document())[2],
    ]
    validation = asset_metadata(result)["iati_validation_reports"]
    assert (validation["errors"], validation["error_validator_413"], validation["error_validator_500"]) == (
        2,
        1,
        1,
    )
    assert validation["outcome_api_error"] == 2 and validation["backend"] == "api"

    # Next run: the 500 is retried (full check only: its schema result is known), the 413 is not.
    before = len(validator_api.requests)
    again = asset_metadata(materialize(resources, [iati_validation_reports]))["iati_validation_reports"]
    assert again["due"] == 1
    assert [r.path for r in validator_api.requests[before:]] == ["/api/pub/validate"]
    retry = asset_metadata(
        materialize(resources, [iati_validation_reports], iati_validation_reports={"retry_errors": True})
    )
    assert retry["iati_validation_reports"]["due"] == 2


def test_wrong_key_is_recorded_as_an_api_error_not_a_crash(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path, validator_api: StandInServer
) -> None:
    add_publisher(iati_db, "org-1", "alpha")
    add_document(iati_db, local_blobs, "valid", "org-1", sample("real-world/3fi-activity.xml"))
    validator = IatiValidatorResource(
        backend="api",
        api_url=validator_api.url("/api/pub/validate"),
        schema_api_url=validator_api.url("/api/pvt/schema-validate-file"),
        api_key_value="wrong",
    )
    result = materialize(
        make_resources(iati_db, local_blobs, tmp_path, iati_validator=validator), [iati_validation_reports]
    )
    assert result.success
    assert query(iati_db, "SELECT validation_api_error, file_schema_valid FROM iati.document") == [
        (401, None)
    ]


def test_api_backend_without_urls_fails_clearly(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    resources = make_resources(
        iati_db, local_blobs, tmp_path, iati_validator=IatiValidatorResource(backend="api")
    )
    result = materialize(resources, [iati_validation_reports])
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None and "IATI_VALIDATOR_API_URL" in (failure.description or "")


def test_definitions_merge_with_the_iati_service() -> None:
    defs = dg.Definitions.merge(build_iati_defs(), dg.Definitions(resources=build_resources()))
    dg.Definitions.validate_loadable(defs)
    graph = {key.to_user_string(): spec for key, spec in ((s.key, s) for s in defs.resolve_all_asset_specs())}
    deps = {name: sorted(d.asset_key.to_user_string() for d in graph[name].deps) for name in graph}
    assert deps["iati_validation_reports"] == ["iati_source_files"]
    assert deps["iati_publisher_flags"] == ["iati_validation_reports"]
    assert deps["iati_clean_files"] == ["iati_publisher_flags", "iati_validation_reports"]
    for name in ("iati_validation_reports", "iati_publisher_flags", "iati_clean_files"):
        assert graph[name].group_name == "iati" and graph[name].description and graph[name].kinds


def test_refresh_then_validate_and_clean_on_the_stand_ins(
    iati_db: DatabaseResource, local_blobs: BlobStoreResource, tmp_path: Path, iati_standin: StandInServer
) -> None:
    # The recorded cache serves one publisher file with an invalid activity in the middle.
    iati_standin.route(f"{MOUNT}/cache/gdihub-activity.xml", body=mixed_document())
    resources = make_resources(
        iati_db, local_blobs, tmp_path, iati_validator=IatiValidatorResource(safety_check_hold_hours=0)
    )
    refresh = dg.Definitions.merge(
        core_defs,
        dg.Definitions(resources={**resources, "iati": iati_resource(iati_standin), "solr": SolrResource()}),
    ).resolve_job_def("iati_refresh_job")
    assert refresh.execute_in_process(raise_on_error=False).success

    result = materialize(resources)

    assert result.success and all(checks(result).values())
    rows = {
        r[0]: r[1:]
        for r in query(
            iati_db,
            "SELECT d.name, d.downloaded IS NOT NULL, v.valid, d.validation_api_error, d.clean_end IS NOT NULL "
            "FROM iati.document d LEFT JOIN iati.validation v ON v.id = d.validation",
        )
    }
    assert rows == {
        "3f-activities": (True, True, None, True),
        "3f-mixed-validity": (True, False, 422, True),  # rebuilt (the recording made for the demo)
        "3f-never-cached": (False, None, None, False),  # download_error 4
        "fcdo-activities": (True, True, None, True),
        "fcdo-withdrawn": (False, None, None, False),  # 404
        "gdihub-activities": (True, False, 422, True),  # rebuilt
        "gdihub-annual-report": (False, None, None, False),  # the PDF: charset error at download
        "example-org-activities": (True, True, None, True),
        "example-org-org": (True, True, None, False),  # organisation file: no further
    }
    gdihub_hash = query(iati_db, "SELECT hash FROM iati.document WHERE name = 'gdihub-activities'")[0][0]
    stripped = local_blobs.store.get_bytes(clean_key(gdihub_hash))
    assert identifiers(stripped) == [identifiers(mixed_document())[0], identifiers(mixed_document())[2]]


def test_validate_and_clean_on_s3(
    iati_db: DatabaseResource, s3_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    add_publisher(iati_db, "org-1", "alpha")
    valid = add_document(iati_db, s3_blobs, "valid", "org-1", sample("real-world/fcdo-activity.xml"))
    mixed = add_document(iati_db, s3_blobs, "mixed", "org-1", mixed_document())
    add_document(iati_db, s3_blobs, "missing", "org-1", None)

    result = materialize(make_resources(iati_db, s3_blobs, tmp_path))

    assert result.success and all(checks(result).values())
    store = s3_blobs.store
    assert store.get_bytes(clean_key(valid)) == sample("real-world/fcdo-activity.xml")  # server-side copy
    assert len(identifiers(store.get_bytes(clean_key(mixed)))) == 2
    assert query(iati_db, "SELECT id FROM iati.document WHERE downloaded IS NULL") == [("missing",)]
