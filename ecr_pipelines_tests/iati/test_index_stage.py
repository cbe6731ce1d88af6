"""The flatten, lake and Solr stages on the real Postgres, a local blob store and the Solr stand-in.

Documents are seeded as the clean stage leaves them (a validation row with a 2.x report, the
clean file at ``iati/clean/<hash>.xml``, ``clean_end`` set); what is asserted is what ends up in
Postgres, in the blob store and committed in Solr.
"""

import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.blobkeys import clean_key, lake_prefix
from ecr_pipelines.iati.defs.resources import SolrResource
from ecr_pipelines.iati.flatten import flatten_file
from ecr_pipelines.iati.lake import iter_lake_records
from ecr_pipelines.iati.solr import SolrUnavailable, remove_stale_solr_documents
from ecr_pipelines.iati.solr_docs import COLLECTIONS, activity_docs, budget_docs, lake_index, transaction_docs
from ecr_pipelines.iati.stages import flatten as flatten_stage
from ecr_pipelines.iati.stages import lake as lake_stage
from ecr_pipelines.iati.stages import solr as solr_stage
from ecr_pipelines.iati.stages.flatten import run_flatten
from ecr_pipelines.iati.stages.lake import run_lake
from ecr_pipelines.iati.stages.solr import run_solr
from ecr_pipelines.lib.batch import StageReport
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.iati.claims import claim_for_dead_run, claim_for_live_run, claims
from ecr_pipelines_tests.iati.iati_samples import SAMPLES
from ecr_pipelines_tests.iati.test_flatten import WORKED_EXAMPLE

pytestmark = pytest.mark.usefixtures("one_document_at_a_time")


PUBLISHER = "pub00000-0000-4000-8000-000000000001"
SAMPLE_FILES = {
    "d0000001-0000-4000-8000-000000000001": "official/activity-standard-example-annotated.xml",
    "d0000002-0000-4000-8000-000000000002": "real-world/3fi-activity.xml",
    "d0000003-0000-4000-8000-000000000003": "real-world/beis-activity.xml",
    "d0000004-0000-4000-8000-000000000004": "real-world/fcdo-activity.xml",
    "d0000005-0000-4000-8000-000000000005": "real-world/gdihub-activity.xml",
    # one activity with an empty identifier: flattened, but nothing in the lake or Solr
    "d0000006-0000-4000-8000-000000000006": "schema-tests/should-pass_21-transaction.xml",
}
WORKED_ID = "d0000007-0000-4000-8000-000000000007"
BAD_SOLR_VALUE = WORKED_EXAMPLE.replace(b">1000</value>", b">1,000.50</value>")


def sample_bytes() -> dict[str, bytes]:
    data = {doc_id: (SAMPLES / name).read_bytes() for doc_id, name in SAMPLE_FILES.items()}
    data[WORKED_ID] = WORKED_EXAMPLE
    return data


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def seed_document(
    db: DatabaseResource,
    store: BlobStore,
    doc_id: str,
    data: bytes,
    *,
    order: int = 0,
    version: str = "2.03",
    put_clean: bool = True,
) -> str:
    """A document as the clean stage leaves it; returns its hash."""
    doc_hash = sha1(data + doc_id.encode())
    if put_clean:
        store.put_bytes(clean_key(doc_hash), data, "application/xml")
    downloaded = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=order)
    report = {"valid": True, "fileType": "iati-activities", "iatiVersion": version}
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO iati.publisher (org_id, name, title) VALUES (:p, 'pub', 'Publisher') "
                "ON CONFLICT (org_id) DO NOTHING"
            ),
            {"p": PUBLISHER},
        )
        validation = conn.execute(
            sa.text(
                "INSERT INTO iati.validation (document_id, document_hash, document_url, valid, report) "
                "VALUES (:id, :hash, 'https://example.org/f.xml', true, CAST(:report AS jsonb)) RETURNING id"
            ),
            {"id": doc_id, "hash": doc_hash, "report": json.dumps(report)},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO iati.document (id, hash, url, name, publisher, downloaded, validation, clean_start, "
                "clean_end) VALUES (:id, :hash, 'https://example.org/f.xml', :name, :p, :downloaded, :v, "
                ":downloaded, :downloaded)"
            ),
            {
                "id": doc_id,
                "hash": doc_hash,
                "name": doc_id[:8],
                "p": PUBLISHER,
                "downloaded": downloaded,
                "v": validation,
            },
        )
    return doc_hash


def seed_all(db: DatabaseResource, store: BlobStore, documents: dict[str, bytes]) -> dict[str, str]:
    return {
        doc_id: seed_document(db, store, doc_id, data, order=n)
        for n, (doc_id, data) in enumerate(documents.items())
    }


def expected_solr(
    documents: dict[str, bytes], hashes: dict[str, str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """collection → Solr id → document, as the pure functions build them from the files."""
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in COLLECTIONS}
    for doc_id, data in documents.items():
        flat = flatten_file(io.BytesIO(data))
        lake = lake_index(iter_lake_records(data))
        built = {
            "activity": activity_docs(doc_id, flat, document_hash=hashes[doc_id], lake=lake.get),
            "transaction": transaction_docs(doc_id, flat, document_hash=hashes[doc_id]),
            "budget": budget_docs(doc_id, flat, document_hash=hashes[doc_id]),
        }
        for collection, docs in built.items():
            out[collection].update({doc["id"]: doc for doc in docs})
    return out


def committed_ids(solr: SolrStandIn, collection: str, doc_id: str | None = None) -> list[str]:
    return [
        doc["id"]
        for doc in solr.documents(collection)
        if doc_id is None or doc["iati_activities_document_id"] == doc_id
    ]


def row(db: DatabaseResource, doc_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        found = (
            conn.execute(sa.text("SELECT * FROM iati.document WHERE id = :id"), {"id": doc_id})
            .mappings()
            .one()
        )
    return dict(found)


def execute(db: DatabaseResource, sql: str, **params: Any) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(sql), params)


@pytest.fixture
def solr_resource(solr: SolrStandIn) -> SolrResource:
    return SolrResource(url=solr.url, retries=0, timeout=30, batch_size=7)


def keys(rows: list[tuple[str, str, str]], kind: str | None = None) -> list[str]:
    """The item keys of a report's error rows or other rows (of one kind)."""
    return [key for key, label, _ in rows if kind is None or label == kind]


def commits(solr: SolrStandIn) -> dict[str, int]:
    return {c: solr.commits(c) for c in COLLECTIONS}


def run_all(
    db: DatabaseResource, store: BlobStore, solr: SolrResource
) -> tuple[StageReport, StageReport, StageReport]:
    return (
        run_flatten(db.engine, store, batch_size=3),
        run_lake(db.engine, store, batch_size=3, workers=4),
        run_solr(db.engine, store, solr, batch_size=3, workers=4),
    )


# -- the whole chain ---------------------------------------------------------------------------


def test_the_three_stages_fill_postgres_the_lake_and_solr(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    documents = sample_bytes()
    hashes = seed_all(iati_db, store, documents)

    flatten, lake, index = run_all(iati_db, store, solr_resource)

    assert (flatten.due, flatten.kinds["done"], flatten.errors, flatten.batches) == (7, 7, 0, 3)
    assert (lake.due, lake.kinds["done"], lake.errors) == (7, 7, 0)
    assert (index.due, index.kinds["done"], index.errors, index.stopped) == (7, 7, 0, None)
    assert [r.processed for r in (flatten, lake, index)] == [7, 7, 7]
    assert flatten.counts["activities"] == 18
    # One commit per batch of documents, never more.
    assert index.batches == 3 and commits(solr) == dict.fromkeys(COLLECTIONS, 3)
    assert claims(iati_db) == []
    for doc_id, data in documents.items():
        state = row(iati_db, doc_id)
        # Exactly the refresher's flattened list (jsonb does not keep key order; dicts compare without it).
        assert state["flattened_activities"] == flatten_file(io.BytesIO(data))
        assert state["flatten_end"] and state["flatten_api_error"] is None
        assert state["lakify_end"] and state["lakify_error"] is None
        assert state["solrize_end"] and state["last_solrize_end"] and state["solr_api_error"] is None
        assert state["solrize_reindex"] is False
        records = list(iter_lake_records(data))
        prefix = lake_prefix(doc_id)
        assert sorted(store.list(prefix)) == sorted(
            f"{prefix}{r.stem}.{ext}" for r in records for ext in ("xml", "json")
        )
        for record in records:
            assert store.get_bytes(f"{prefix}{record.stem}.xml") == record.xml
            assert store.get_bytes(f"{prefix}{record.stem}.json").decode() == record.json_text
    # The empty identifier is skipped by the lake and by Solr, and counted.
    assert lake.counts["skipped_no_identifier"] == 1 and index.counts["skipped_no_identifier"] == 1
    assert (lake.counts["activities"], lake.counts["blobs_written"]) == (17, 34)
    empty = row(iati_db, "d0000006-0000-4000-8000-000000000006")["flattened_activities"]
    assert len(empty) == 1 and "iati_identifier" not in empty[0]

    expected = expected_solr(documents, hashes)
    for collection in COLLECTIONS:
        got = {doc["id"]: doc for doc in solr.documents(collection)}
        assert sorted(got) == sorted(expected[collection]), collection
        assert index.counts[f"solr_docs_{collection}"] == len(expected[collection])
    assert index.counts["activities"] == len(expected["activity"]) == 17
    assert len(expected["transaction"]) == 92 and len(expected["budget"]) == 34

    worked = {
        doc["id"]: doc
        for doc in solr.documents("activity")
        if doc["iati_activities_document_id"] == WORKED_ID
    }
    (doc,) = worked.values()
    record = next(iter(iter_lake_records(WORKED_EXAMPLE)))
    assert doc["iati_xml"] == record.xml.decode() and doc["iati_json"] == record.json_text
    assert doc["iati_activities_document_hash"] == hashes[WORKED_ID]
    assert doc["title_narrative"] == ["Water project", "Projet d'eau"]
    assert doc["usg_treasury_main_account_code"] == ["95"]  # the extension, stored by the catch-all field
    assert doc["last_updated_datetime"] == "2024-06-20T07:10:15Z"  # the offset dropped, as the refresher did
    assert doc["location_point_latlon"] == ["-1.29,36.82"]
    budgets = [d for d in solr.documents("budget") if d["iati_activities_document_id"] == WORKED_ID]
    assert [d["budget_value"] for d in budgets] == [[1000.0]]
    transactions = [d for d in solr.documents("transaction") if d["iati_activities_document_id"] == WORKED_ID]
    assert sorted(d["transaction_value"][0] for d in transactions) == [100.0, 250.5]


def test_a_second_run_finds_nothing_to_do(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, sample_bytes())
    run_all(iati_db, store, solr_resource)
    before = {c: solr.documents(c) for c in COLLECTIONS}

    again = run_all(iati_db, store, solr_resource)

    assert [(r.due, r.processed, r.recovered) for r in again] == [(0, 0, 0)] * 3
    assert {c: solr.documents(c) for c in COLLECTIONS} == before


# -- re-index ----------------------------------------------------------------------------------


def test_the_reindex_flag_reindexes_one_document_without_duplicates(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, sample_bytes())
    run_all(iati_db, store, solr_resource)
    target = "d0000003-0000-4000-8000-000000000003"
    before = {c: {d["id"]: d["_version_"] for d in solr.documents(c)} for c in COLLECTIONS}
    first_end = row(iati_db, target)["last_solrize_end"]
    execute(iati_db, "UPDATE iati.document SET solrize_reindex = true WHERE id = :id", id=target)

    report = run_solr(iati_db.engine, store, solr_resource)

    assert (report.due, report.kinds["done"], report.counts["reindexed"]) == (1, 1, 1)
    state = row(iati_db, target)
    assert state["solrize_reindex"] is False and state["last_solrize_end"] > first_end
    for collection in COLLECTIONS:
        after = {d["id"]: d["_version_"] for d in solr.documents(collection)}
        assert sorted(after) == sorted(before[collection])  # same ids: nothing duplicated, nothing lost
        mine = set(committed_ids(solr, collection, target))
        assert mine and all(after[i] > before[collection][i] for i in mine)  # re-added
        assert all(after[i] == before[collection][i] for i in after if i not in mine)


def test_reindex_all_flags_every_indexed_document(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, sample_bytes())
    run_all(iati_db, store, solr_resource)
    counts = {c: len(solr.documents(c)) for c in COLLECTIONS}
    before = commits(solr)

    report = run_solr(iati_db.engine, store, solr_resource, reindex_all=True, batch_size=100)

    assert (report.due, report.kinds["done"], report.counts["reindexed"], report.batches) == (7, 7, 7, 1)
    assert {c: solr.commits(c) - before[c] for c in COLLECTIONS} == dict.fromkeys(COLLECTIONS, 1)
    assert {c: len(solr.documents(c)) for c in COLLECTIONS} == counts


# -- crash recovery ----------------------------------------------------------------------------


def test_interrupted_flatten_and_lake_are_redone(
    iati_db: DatabaseResource, store: BlobStore, solr_resource: SolrResource
) -> None:
    documents = sample_bytes()
    seed_all(iati_db, store, documents)
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    target = "d0000002-0000-4000-8000-000000000002"
    # As a process killed mid-document leaves it: started, not ended, a half-written lake, and
    # its claims in both stages owned by a backend that is gone.
    execute(
        iati_db,
        "UPDATE iati.document SET flatten_end = NULL, flattened_activities = NULL, lakify_end = NULL WHERE id = :id",
        id=target,
    )
    store.delete_prefix(lake_prefix(target))
    store.put_bytes(f"{lake_prefix(target)}half-written.xml", b"<iati-activity>")
    claim_for_dead_run(iati_db, flatten_stage.STAGE.name, target)
    claim_for_dead_run(iati_db, lake_stage.STAGE.name, target)

    flatten = run_flatten(iati_db.engine, store)
    lake = run_lake(iati_db.engine, store)

    assert (flatten.recovered, flatten.due, flatten.kinds["done"]) == (1, 1, 1)
    assert (lake.recovered, lake.due, lake.kinds["done"], lake.counts["blobs_deleted"]) == (1, 1, 1, 1)
    assert claims(iati_db) == []
    state = row(iati_db, target)
    assert state["flattened_activities"] == flatten_file(io.BytesIO(documents[target]))
    assert state["lakify_end"] is not None
    assert not store.exists(f"{lake_prefix(target)}half-written.xml")
    assert len(list(store.list(lake_prefix(target)))) == 2


def test_a_document_another_live_run_holds_is_left_to_it(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    documents = sample_bytes()
    seed_all(iati_db, store, documents)
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    held = "d0000004-0000-4000-8000-000000000004"

    with claim_for_live_run(iati_db, solr_stage.STAGE.name, held):
        report = run_solr(iati_db.engine, store, solr_resource, batch_size=3)
        # Not selected, not indexed, and its claim is still the other run's.
        assert (report.due, report.kinds["done"], report.recovered) == (6, 6, 0)
        assert row(iati_db, held)["solrize_end"] is None and committed_ids(solr, "activity", held) == []
        assert [(stage, item) for stage, item, _ in claims(iati_db)] == [(solr_stage.STAGE.name, held)]

    # The other run died without indexing it: the next run takes the claim back and does it.
    report = run_solr(iati_db.engine, store, solr_resource)
    assert (report.recovered, report.due, report.kinds["done"]) == (1, 1, 1)
    assert committed_ids(solr, "activity", held) and claims(iati_db) == []


class Crash(Exception):
    """Stands for the process dying: nothing in the stage catches it."""


class CrashingSolr:
    """The real client, dying after ``adds`` add requests."""

    def __init__(self, solr: SolrResource, adds: int) -> None:
        self.solr = solr
        self.adds = adds

    def delete_document(self, document_id: str) -> None:
        self.solr.delete_document(document_id)

    def add(self, collection: str, docs: Any) -> int:
        if self.adds == 0:
            raise Crash
        self.adds -= 1
        return self.solr.add(collection, docs)

    def commit(self) -> None:
        self.solr.commit()


def test_a_solr_run_that_dies_midway_is_redone_without_duplicates(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    documents = sample_bytes()
    hashes = seed_all(iati_db, store, documents)
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    # First batch (3 documents) committed, then death in the middle of the second batch's adds.
    with pytest.raises(Crash):
        run_solr(iati_db.engine, store, CrashingSolr(solr_resource, adds=11), batch_size=3)
    with iati_db.connect() as conn:
        started_only = conn.execute(
            sa.text(
                "SELECT count(*) FROM iati.document WHERE solrize_start IS NOT NULL AND solrize_end IS NULL"
            )
        ).scalar_one()
        done = conn.execute(
            sa.text("SELECT count(*) FROM iati.document WHERE solrize_end IS NOT NULL")
        ).scalar_one()
    assert (done, started_only) == (3, 3)  # the third batch was never claimed
    assert len(solr.pending("activity")) > len(solr.documents("activity"))  # uncommitted leftovers
    # The dying stage gave its claims up: nothing waits for the claims to be found dead.
    assert claims(iati_db) == []

    report = run_solr(iati_db.engine, store, solr_resource, batch_size=3)

    assert (report.due, report.kinds["done"]) == (4, 4)
    expected = expected_solr(documents, hashes)
    for collection in COLLECTIONS:
        ids = committed_ids(solr, collection)
        assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected[collection])
        assert sorted(d["id"] for d in solr.pending(collection)) == sorted(ids)


def test_a_commit_whose_bookkeeping_was_lost_is_redone_idempotently(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, sample_bytes())
    run_all(iati_db, store, solr_resource)
    before = {c: sorted(committed_ids(solr, c)) for c in COLLECTIONS}
    # Killed after Solr's commit, before Postgres recorded it.
    execute(iati_db, "UPDATE iati.document SET solrize_end = NULL")

    report = run_solr(iati_db.engine, store, solr_resource)

    assert report.kinds["done"] == 7
    assert {c: sorted(committed_ids(solr, c)) for c in COLLECTIONS} == before


# -- one bad document never fails the batch ----------------------------------------------------


def test_a_file_that_cannot_be_flattened_gets_flatten_api_error_and_the_rest_proceed(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    documents = sample_bytes()
    documents["e0000001-0000-4000-8000-000000000001"] = (
        SAMPLES / "official/organisation-standard-example-annotated.xml"
    ).read_bytes()
    documents["e0000002-0000-4000-8000-000000000002"] = b"this is not XML at all"
    seed_all(iati_db, store, documents)

    flatten, lake, index = run_all(iati_db, store, solr_resource)

    assert sorted(keys(flatten.error_rows)) == [
        "e0000001-0000-4000-8000-000000000001",
        "e0000002-0000-4000-8000-000000000002",
    ]
    assert "Non-IATI XML" in flatten.error_rows[0][2]
    assert (flatten.kinds["error"], flatten.errors) == (2, 2)
    for doc_id in ("e0000001-0000-4000-8000-000000000001", "e0000002-0000-4000-8000-000000000002"):
        state = row(iati_db, doc_id)
        assert state["flatten_api_error"] == 1 and state["flatten_end"] is None and state["flatten_start"]
        assert state["solrize_end"] is None
    assert flatten.kinds["done"] == 7 and index.kinds["done"] == 7
    # The lake refuses them too: a non-IATI root is sticky, an unparseable file goes back to clean.
    assert keys(lake.error_rows) == ["e0000001-0000-4000-8000-000000000001"]
    assert lake.errors_by_class == {"not_iati": 1}
    assert row(iati_db, "e0000001-0000-4000-8000-000000000001")["lakify_error"].startswith("Non-IATI XML")
    assert keys(lake.other_rows, "sent_back") == ["e0000002-0000-4000-8000-000000000002"]
    assert row(iati_db, "e0000002-0000-4000-8000-000000000002")["clean_end"] is None

    # Failed flattens are not retried by a normal run, only with retry_errors (the retry schedule
    # sets it); then the one still cleaned fails again, and the one sent back to clean waits for
    # a new clean file.
    assert run_flatten(iati_db.engine, store).due == 0
    retry = run_flatten(iati_db.engine, store, retry_errors=True)
    assert (retry.due, retry.errors, keys(retry.error_rows)) == (
        1,
        1,
        ["e0000001-0000-4000-8000-000000000001"],
    )
    assert row(iati_db, "e0000001-0000-4000-8000-000000000001")["flatten_api_error"] == 1


def test_a_document_solr_refuses_is_recorded_and_the_batch_goes_on(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    documents = sample_bytes()
    bad = "e0000003-0000-4000-8000-000000000003"
    documents[bad] = BAD_SOLR_VALUE
    seed_all(iati_db, store, documents)

    _, _, index = run_all(iati_db, store, solr_resource)

    assert index.kinds["done"] == 7 and keys(index.error_rows) == [bad]
    assert (index.kinds["rejected"], index.errors_by_class) == (1, {"solr_rejected": 1})
    state = row(iati_db, bad)
    assert state["solrize_end"] is None and "1,000.50" in state["solr_api_error"]
    assert "HTTP 400" in state["solr_api_error"]
    assert all(
        committed_ids(solr, c, bad) == []
        and not [d for d in solr.pending(c) if d["iati_activities_document_id"] == bad]
        for c in COLLECTIONS
    )
    assert committed_ids(solr, "activity", WORKED_ID)  # the same activity without the bad value is in


def test_a_refused_reindex_removes_the_old_entries(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, {WORKED_ID: WORKED_EXAMPLE})
    run_all(iati_db, store, solr_resource)
    assert committed_ids(solr, "activity", WORKED_ID)
    bad = flatten_file(io.BytesIO(BAD_SOLR_VALUE))
    execute(
        iati_db,
        "UPDATE iati.document SET flattened_activities = CAST(:f AS jsonb), solrize_reindex = true",
        f=json.dumps(bad),
    )

    report = run_solr(iati_db.engine, store, solr_resource)

    assert keys(report.error_rows) == [WORKED_ID]
    assert all(committed_ids(solr, c, WORKED_ID) == [] for c in COLLECTIONS)
    state = row(iati_db, WORKED_ID)
    assert state["solrize_end"] is None and state["solrize_reindex"] is True


def test_solr_unavailable_stops_the_run_and_leaves_the_documents_due(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, sample_bytes())
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    solr.fail_next("transaction", 503)

    report = run_solr(iati_db.engine, store, solr_resource, batch_size=3)

    assert report.stopped and "503" in report.stopped and report.kinds["done"] == 0
    assert (report.batches, report.errors_by_class) == (1, {"solr_unavailable": 1})
    with iati_db.connect() as conn:
        indexed = conn.execute(
            sa.text("SELECT count(*) FROM iati.document WHERE solrize_end IS NOT NULL")
        ).scalar_one()
        failed = (
            conn.execute(sa.text("SELECT id FROM iati.document WHERE solr_api_error IS NOT NULL"))
            .scalars()
            .all()
        )
    assert indexed == 0 and len(failed) == 1
    assert all(solr.documents(c) == [] for c in COLLECTIONS)

    # The document Solr failed on has a solr_api_error: a normal run leaves it to the retry run.
    again = run_solr(iati_db.engine, store, solr_resource, batch_size=3)
    assert (again.due, again.kinds["done"], again.stopped, again.errors) == (6, 6, None, 0)
    retry = run_solr(iati_db.engine, store, solr_resource, retry_errors=True)
    assert (retry.due, retry.kinds["done"], retry.errors) == (1, 1, 0)
    assert row(iati_db, failed[0])["solr_api_error"] is None
    assert len(solr.documents("activity")) == 17  # every document is indexed now


def test_a_missing_lake_record_sends_the_document_back_to_the_lake(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, {WORKED_ID: WORKED_EXAMPLE})
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    (json_key,) = [k for k in store.list(lake_prefix(WORKED_ID)) if k.endswith(".json")]
    store.delete(json_key)

    report = run_solr(iati_db.engine, store, solr_resource)

    assert report.kinds["done"] == 0 and keys(report.other_rows, "lake_missing") == [WORKED_ID]
    state = row(iati_db, WORKED_ID)
    assert (
        state["lakify_start"] is None
        and state["lakify_end"] is None
        and "no lake record" in state["solr_api_error"]
    )
    # A finished lake clears the error, so the document is due for Solr again without a retry.
    assert run_lake(iati_db.engine, store).kinds["done"] == 1
    assert row(iati_db, WORKED_ID)["solr_api_error"] is None
    assert run_solr(iati_db.engine, store, solr_resource).kinds["done"] == 1
    assert row(iati_db, WORKED_ID)["solr_api_error"] is None
    assert committed_ids(solr, "activity", WORKED_ID)


def test_a_missing_clean_file_sends_the_document_back_to_download(
    iati_db: DatabaseResource, store: BlobStore
) -> None:
    doc_hash = seed_document(iati_db, store, WORKED_ID, WORKED_EXAMPLE, put_clean=False)

    flatten = run_flatten(iati_db.engine, store)
    lake = run_lake(iati_db.engine, store)

    assert keys(flatten.other_rows, "sent_back") == [WORKED_ID] and lake.due == 0
    state = row(iati_db, WORKED_ID)
    assert (state["hash"], state["downloaded"], state["clean_end"], state["flatten_start"]) == (
        doc_hash,
        None,
        None,
        None,
    )


def test_a_document_changed_by_the_sync_midway_is_not_overwritten(
    iati_db: DatabaseResource, store: BlobStore
) -> None:
    seed_document(iati_db, store, WORKED_ID, WORKED_EXAMPLE)

    class SyncingStore:
        """The blob store, with the sync changing the document's hash while its file is read."""

        def __init__(self, inner: BlobStore) -> None:
            self.inner = inner

        def open(self, key: str) -> Any:
            execute(
                iati_db,
                "UPDATE iati.document SET hash = 'new', flatten_start = NULL WHERE id = :id",
                id=WORKED_ID,
            )
            return self.inner.open(key)

    report = run_flatten(iati_db.engine, SyncingStore(store))  # type: ignore[arg-type]

    assert (report.kinds["done"], report.kinds["superseded"]) == (0, 1)
    state = row(iati_db, WORKED_ID)
    assert state["flattened_activities"] is None and state["flatten_end"] is None


# -- removal -----------------------------------------------------------------------------------


def test_stale_documents_are_removed_from_solr_by_the_sync_hook(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, sample_bytes())
    run_all(iati_db, store, solr_resource)
    stale = ["d0000003-0000-4000-8000-000000000003", WORKED_ID]
    kept = {c: [i for i in committed_ids(solr, c) if not any(s in i for s in stale)] for c in ("activity",)}

    removal = remove_stale_solr_documents(solr_resource.client(), stale)

    assert removal.deleted == stale and removal.failures == [] and removal.skipped_reason is None
    for collection in COLLECTIONS:
        assert not [d for d in solr.documents(collection) if d["iati_activities_document_id"] in stale]
    assert committed_ids(solr, "activity") == kept["activity"]
    assert committed_ids(solr, "transaction")  # the other documents' entries stay


def test_stale_removal_reports_instead_of_raising(solr: SolrStandIn, solr_resource: SolrResource) -> None:
    assert remove_stale_solr_documents(None, ["x"]).skipped_reason == "SOLR_URL is not set"
    assert remove_stale_solr_documents(solr_resource.client(), []).deleted == []
    solr.fail_next("budget", 503)
    removal = remove_stale_solr_documents(solr_resource.client(), ["a", "b"])
    assert removal.deleted == [] and [f[0] for f in removal.failures] == ["a", "b"]
    assert removal.skipped_reason and "503" in removal.skipped_reason


def test_a_document_that_now_flattens_to_nothing_loses_its_old_entries(
    iati_db: DatabaseResource, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    seed_all(iati_db, store, {WORKED_ID: WORKED_EXAMPLE})
    run_all(iati_db, store, solr_resource)
    execute(
        iati_db, "UPDATE iati.document SET flattened_activities = CAST('[]' AS jsonb), solrize_end = NULL"
    )

    report = run_solr(iati_db.engine, store, solr_resource)

    assert report.kinds["done"] == 1 and all(solr.documents(c) == [] for c in COLLECTIONS)
    # Never indexed and empty: not selected, as in the refresher.
    execute(iati_db, "UPDATE iati.document SET solrize_end = NULL, last_solrize_end = NULL")
    assert run_solr(iati_db.engine, store, solr_resource).due == 0


def test_documents_of_a_1x_report_or_without_hash_are_not_indexed(
    iati_db: DatabaseResource, store: BlobStore, solr_resource: SolrResource
) -> None:
    seed_document(iati_db, store, WORKED_ID, WORKED_EXAMPLE, version="1.05")
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    assert run_solr(iati_db.engine, store, solr_resource).due == 0


def test_an_unreachable_solr_raises_solr_unavailable(iati_db: DatabaseResource, store: BlobStore) -> None:
    with SolrStandIn() as gone:
        url = gone.url
    resource = SolrResource(url=url, retries=0, connect_timeout=1, timeout=2)
    seed_all(iati_db, store, {WORKED_ID: WORKED_EXAMPLE})
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    with pytest.raises(SolrUnavailable):
        resource.ping()
    report = run_solr(iati_db.engine, store, resource)
    assert report.stopped and report.kinds["done"] == 0
    assert report.errors_by_class == {"solr_unavailable": 1}
    assert row(iati_db, WORKED_ID)["solrize_end"] is None
