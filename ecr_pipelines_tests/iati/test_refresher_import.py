"""``python -m ecr_pipelines iati import-refresher``: the refresher's database (built from the
research notes' column lists, ``legacy/schema.sql``, with the rows of ``legacy/data.sql``) and its
blob containers copied into ours, documents whose files are missing made due again for the stage
that produces them, a second run that changes nothing, and the refusals."""

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from ecr_pipelines.__main__ import main
from ecr_pipelines.iati.blobkeys import clean_key, lake_prefix, source_key
from ecr_pipelines.iati.stages.download import detect_encoding
from ecr_pipelines.lib.blobstore import BlobStore, LocalBlobStore, open_blob_store
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.conftest import run_sql

LEGACY = Path(__file__).parent / "legacy"
UTC = dt.UTC
SOURCE_A = b'<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities version="2.03"><iati-activity/></iati-activities>\n'
SOURCE_LATIN1 = (
    "<iati-activities><iati-activity><title>Café</title></iati-activity></iati-activities>".encode("latin-1")
)
LAKE_A = hashlib.sha1(b"XM-DAC-41140-A1").hexdigest()
TABLES = {"publisher": "org_id", "validation": "id", "document": "id"}


@pytest.fixture
def legacy_url(legacy_database: Any) -> str:
    """A refresher database of its own, filled with ``legacy/data.sql``."""
    return legacy_database("refresher", LEGACY / "schema.sql", LEGACY / "data.sql")


def _empty(db: DatabaseResource) -> None:
    with db.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE iati.document, iati.publisher, iati.validation RESTART IDENTITY CASCADE"
        )


@pytest.fixture
def target(
    iati_db: DatabaseResource, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatabaseResource]:
    """Our (migrated, emptied) application database, as the command's DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    yield iati_db
    _empty(iati_db)  # the rows must not leak into later tests


def _fill_containers(store: BlobStore) -> None:
    """The refresher's containers as copied: doc-a complete, doc-b without its clean file, doc-c
    without any file, doc-f without lake files, and the source of doc-b in Latin-1."""
    store.put_bytes("source/aaa1.xml", SOURCE_A)
    store.put_bytes("clean/aaa1.xml", SOURCE_A)
    store.put_bytes(f"activity-lake/doc-a/{LAKE_A}.xml", b"<iati-activity/>")
    store.put_bytes(f"activity-lake/doc-a/{LAKE_A}.json", b'{"iati-activity": [{}]}')
    store.put_bytes("source/bbb2.xml", SOURCE_LATIN1)
    store.put_bytes("source/fff6.xml", SOURCE_A)
    store.put_bytes("clean/fff6.xml", SOURCE_A)


def _rows(db: DatabaseResource, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with db.begin() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params).all()]


def _snapshot(db: DatabaseResource) -> dict[str, list[tuple[Any, ...]]]:
    """Every row with its xmin: equal snapshots mean not even an identical rewrite happened."""
    return {
        table: _rows(db, f"SELECT xmin::text, to_jsonb(t)::text FROM iati.{table} t ORDER BY {order}")
        for table, order in TABLES.items()
    }


def _files(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and ".incoming" not in p.parts
    }


def _import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["iati", "import-refresher", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _line(out: str, table: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(f"{table} "))


def _state(db: DatabaseResource) -> dict[str, tuple[Any, ...]]:
    rows = _rows(
        db,
        """SELECT id, downloaded IS NOT NULL, download_error, validation, clean_end IS NOT NULL,
                  flatten_end IS NOT NULL, lakify_end IS NOT NULL, solrize_end IS NOT NULL
           FROM iati.document ORDER BY id""",
    )
    return {r[0]: r[1:] for r in rows}


def test_import_copies_rows_and_files_and_a_second_run_changes_nothing(
    legacy_url: str,
    target: DatabaseResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    theirs, ours = tmp_path / "refresher-blobs", tmp_path / "ours"
    _fill_containers(LocalBlobStore(theirs))
    monkeypatch.setenv("BLOB_STORE_URL", str(ours))

    code, out, err = _import(capsys, legacy_url, "--blobs", theirs.as_uri())
    assert code == 0, err
    assert _line(out, "iati.publisher") == ["iati.publisher", "2", "2", "0", "0"]
    assert _line(out, "iati.validation") == ["iati.validation", "4", "4", "0", "0"]
    assert _line(out, "iati.document") == ["iati.document", "7", "7", "0", "0"]
    assert "not imported: adhoc_validation (the Validator web app's ad-hoc checks" in out
    assert "not imported: version (the refresher's migration bookkeeping" in out
    # What had no file anywhere is due again, for the stage that makes the file, and the output says so.
    assert "download again (source file missing): 1: doc-c" in out
    assert "clean again (clean file missing; flattened activities and Solr kept): 1: doc-b" in out
    assert "rebuild the lake (no lake files; Solr kept): 1: doc-f" in out
    assert "source files: 3 copied, 0 already here, 1 missing" in out
    assert "lake files: 2 copied, 0 already here, 1 document(s) without any" in out

    # Stage columns as the refresher had them, except where a file is missing:
    # (downloaded, download_error, validation, cleaned, flattened, in the lake, in Solr)
    assert _state(target) == {
        "doc-a": (True, None, 12, True, True, True, True),
        "doc-b": (True, None, 13, False, False, False, False),  # clean again; validation kept
        "doc-c": (False, None, None, False, False, False, False),  # downloaded again
        "doc-d": (False, 404, None, False, False, False, False),
        "doc-e": (False, None, None, False, False, False, False),
        "doc-f": (True, None, 16, True, True, False, True),  # lake again; Solr kept
        "doc-g": (False, 4, None, False, False, False, False),
    }
    assert _rows(
        target,
        "SELECT downloaded, solrize_end, last_solrize_end, flattened_activities, download_attempts "
        "FROM iati.document WHERE id = 'doc-a'",
    ) == [
        (
            dt.datetime(2026, 6, 1, 11, 30, tzinfo=UTC),  # the refresher's UTC, now with its zone
            dt.datetime(2026, 6, 1, 13, 5, tzinfo=UTC),
            dt.datetime(2026, 6, 1, 13, 5, tzinfo=UTC),
            [{"iati_identifier": "XM-DAC-41140-A1"}],
            0,
        )
    ]
    # What our download stage would have recorded about each source file.
    assert _rows(target, "SELECT id, download_encoding, download_size FROM iati.document WHERE downloaded IS NOT NULL ORDER BY id") == [
        ("doc-a", "utf-8", len(SOURCE_A)),
        ("doc-b", detect_encoding(SOURCE_LATIN1, complete=True), len(SOURCE_LATIN1)),
        ("doc-f", "utf-8", len(SOURCE_A)),
    ]  # fmt: skip
    assert _rows(target, "SELECT id, document_hash, valid FROM iati.validation ORDER BY id") == [
        (11, "old-a", False),
        (12, "aaa1", True),
        (13, "bbb2", True),
        (16, "fff6", True),
    ]
    assert _rows(target, "SELECT org_id, black_flag, black_flag_notified FROM iati.publisher ORDER BY 1") == [
        ("org-1", None, None),
        ("org-2", dt.datetime(2026, 6, 1, 8, tzinfo=UTC), True),
    ]
    assert _rows(target, "SELECT last_value FROM iati.validation_id_seq") == [(16,)]

    # The files under our keys.
    store = LocalBlobStore(ours)
    assert store.get_bytes(source_key("aaa1")) == SOURCE_A
    assert store.get_bytes(clean_key("aaa1")) == SOURCE_A
    assert store.get_bytes(source_key("bbb2")) == SOURCE_LATIN1
    assert sorted(store.list(lake_prefix("doc-a"))) == [
        f"{lake_prefix('doc-a')}{LAKE_A}.json",
        f"{lake_prefix('doc-a')}{LAKE_A}.xml",
    ]
    assert not store.exists(source_key("ccc3"))

    # Again: no row rewritten, no file written, and the output says so.
    rows_before, files_before = _snapshot(target), _files(ours)
    code, out, err = _import(capsys, legacy_url, "--blobs", str(theirs))
    assert code == 0, err
    assert "nothing changed: the target already held this legacy data" in out
    assert _line(out, "iati.document") == ["iati.document", "7", "0", "0", "7"]
    assert "source files: 0 copied, 3 already here, 1 missing" in out
    assert "lake files: 0 copied, 2 already here, 1 document(s) without any" in out
    assert _snapshot(target) == rows_before
    assert _files(ours) == files_before


def test_without_blobs_every_stored_file_is_looked_for_in_our_store_only(
    legacy_url: str,
    target: DatabaseResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BLOB_STORE_URL", str(tmp_path / "ours"))
    code, out, err = _import(capsys, legacy_url)
    assert code == 0, err
    assert "(no --blobs: only our store was looked at)" in out
    assert "download again (source file missing): 4: doc-a, doc-b, doc-c, doc-f" in out
    assert _rows(target, "SELECT count(*) FROM iati.document WHERE downloaded IS NOT NULL") == [(0,)]
    # Reports stay: after the download, only what lacks a report is validated again.
    assert _rows(
        target, "SELECT id, validation FROM iati.document WHERE validation IS NOT NULL ORDER BY 1"
    ) == [
        ("doc-a", 12),
        ("doc-b", 13),
        ("doc-f", 16),
    ]

    # With the files found later, a new run restores the refresher's state.
    theirs = tmp_path / "refresher-blobs"
    _fill_containers(LocalBlobStore(theirs))
    code, out, err = _import(capsys, legacy_url, "--blobs", str(theirs))
    assert code == 0, err
    assert _line(out, "iati.document") == ["iati.document", "7", "0", "3", "4"]
    assert _rows(target, "SELECT id FROM iati.document WHERE downloaded IS NOT NULL ORDER BY 1") == [
        ("doc-a",),
        ("doc-b",),
        ("doc-f",),
    ]


def test_blobs_in_s3_buckets(
    legacy_url: str,
    target: DatabaseResource,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    theirs_bucket, ours_bucket = f"r-{uuid.uuid4().hex[:10]}", f"o-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=theirs_bucket)
    client.create_bucket(Bucket=ours_bucket)
    _fill_containers(open_blob_store(f"s3://{theirs_bucket}/copy", s3_endpoint))
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("BLOB_STORE_URL", f"s3://{ours_bucket}/ecr")

    code, out, err = _import(capsys, legacy_url, "--blobs", f"s3://{theirs_bucket}/copy")
    assert code == 0, err
    ours = open_blob_store(f"s3://{ours_bucket}/ecr", s3_endpoint)
    assert ours.get_bytes(source_key("aaa1")) == SOURCE_A
    assert ours.get_bytes(clean_key("fff6")) == SOURCE_A
    assert ours.exists(f"{lake_prefix('doc-a')}{LAKE_A}.json")
    assert "clean again (clean file missing; flattened activities and Solr kept): 1: doc-b" in out
    assert (
        _import(capsys, legacy_url, "--blobs", f"s3://{theirs_bucket}/copy")[1].count("nothing changed") == 1
    )


def test_a_database_that_is_not_the_refresher_is_refused(
    legacy_url: str,
    target: DatabaseResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BLOB_STORE_URL", str(tmp_path / "ours"))
    run_sql(
        legacy_url,
        "DROP TABLE adhoc_validation; ALTER TABLE document DROP COLUMN clean_end; DROP TABLE validation CASCADE",
    )
    code, out, err = _import(capsys, legacy_url)
    assert code == 2
    assert out == ""
    assert "it does not look like the IATI refresher's database" in err
    assert "table validation" in err
    assert "column document.clean_end" in err
    assert "adhoc_validation" not in err  # not needed, so not missed
    assert _rows(target, "SELECT count(*) FROM iati.publisher") == [(0,)]
    assert not (tmp_path / "ours").exists() or _files(tmp_path / "ours") == {}


def test_wrong_blobs_and_foreign_rows_are_refused(
    legacy_url: str,
    target: DatabaseResource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BLOB_STORE_URL", str(tmp_path / "ours"))
    code, _, err = _import(capsys, legacy_url, "--blobs", str(tmp_path / "nowhere"))
    assert code == 2
    assert "no such folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _import(capsys, legacy_url, "--blobs", str(tmp_path / "empty"))
    assert code == 2
    assert "holds no source/ or clean/ files" in err

    # Our own pipeline ran here first: its report 12 is another document's than the refresher's 12.
    with target.begin() as conn:
        conn.exec_driver_sql(
            """
            INSERT INTO iati.validation (id, document_id, document_url, created, valid, report)
            VALUES (12, 'doc-z', 'https://pub.test/z.xml', '2026-07-01 00:00+00', true, '{}')
            """
        )
    before = _snapshot(target)
    code, out, err = _import(capsys, legacy_url)
    assert code == 2
    assert "iati.validation holds 1 row(s) under legacy ids that are not the legacy's" in err
    assert 'id 12 is ["doc-z", 1782864000.000000] here but ["doc-a", 1780315200.000000] in the legacy' in err
    assert _snapshot(target) == before
    assert not (tmp_path / "ours").exists() or _files(tmp_path / "ours") == {}
