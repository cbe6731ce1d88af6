"""The Solr stage streams a document in chunks, and its index guarantee (module docs of
``ecr_pipelines.iati.stages.solr``), on the real Postgres, a local blob store and the Solr stand-in.

One generated document of 1,210 activities (transactions and budgets, a repeated identifier spread
over the document, one activity without an identifier) goes through the real flatten and lake
stages; the Solr stage then indexes it in chunks of 100 activities. What is asserted is what was
sent, what Solr holds committed (``documents()``: what searchers see) and pending, and the rows.
"""

import copy
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pysolr
import pytest
import sqlalchemy as sa
from lxml import etree

from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.blobkeys import lake_prefix
from ecr_pipelines.iati.defs.resources import SolrResource
from ecr_pipelines.iati.lake import LakeRecord
from ecr_pipelines.iati.solr_docs import (
    COLLECTIONS,
    activity_docs,
    budget_docs,
    identifier_stems,
    repeat_numbers,
    transaction_docs,
)
from ecr_pipelines.iati.stages import solr as solr_stage
from ecr_pipelines.iati.stages.flatten import run_flatten
from ecr_pipelines.iati.stages.lake import run_lake
from ecr_pipelines.iati.stages.solr import PART_WAY, iter_activity_chunks, run_solr
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.iati.iati_samples import SAMPLES
from ecr_pipelines_tests.iati.test_flatten import WORKED_EXAMPLE
from ecr_pipelines_tests.iati.test_index_stage import WORKED_ID, execute, row, seed_document

pytestmark = pytest.mark.usefixtures("one_document_at_a_time")


BIG_ID = "b0000001-0000-4000-8000-000000000001"
ACTIVITIES = 1210
CHUNK = 100
DUPLICATE = "XM-GEN-DUP"
# Activity number % 20 → the sample whose first activity it copies; the others are the worked example.
TEMPLATES = {
    0: "real-world/fcdo-activity.xml",
    1: "real-world/3fi-activity.xml",
    4: "real-world/gdihub-activity.xml",
    5: "official/activity-standard-example-annotated.xml",
}
LEAN = ("id", "iati_activities_document_id", "iati_activities_document_hash")


@cache
def big_document() -> bytes:
    """Activities from the samples with new identifiers: every 97th one repeats one identifier."""
    worked = etree.fromstring(WORKED_EXAMPLE)
    templates = {
        key: etree.parse(str(SAMPLES / name)).getroot().find("iati-activity")
        for key, name in TEMPLATES.items()
    }
    root = etree.Element("iati-activities", nsmap=worked.nsmap)
    root.set("version", "2.03")
    root.set("generated-datetime", "2024-06-20T07:10:17+00:00")
    for number in range(ACTIVITIES):
        activity = copy.deepcopy(templates.get(number % 20, worked.find("iati-activity")))
        identifier = DUPLICATE if number % 97 == 13 else f"XM-GEN-{number:05d}"
        activity.find("iati-identifier").text = "" if number == 7 else identifier
        root.append(activity)
    return etree.tostring(root, encoding="utf-8", xml_declaration=True)


class Crash(Exception):
    """Stands for a failure nothing in the stage expects."""


class Abort(BaseException):
    """Stands for the process being stopped (like KeyboardInterrupt)."""


class Recording:
    """The real Solr client, with what the stage sent (documents in order, add calls, deletes)
    written down, and ``after_commit`` called after each real commit."""

    def __init__(self, solr: SolrResource, after_commit: Callable[[], None] | None = None) -> None:
        self.solr = solr
        self.after_commit = after_commit
        self.sent: dict[str, list[dict[str, Any]]] = {c: [] for c in COLLECTIONS}
        self.adds: Counter[str] = Counter()
        self.deletes: list[str] = []

    def delete_document(self, document_id: str) -> None:
        self.deletes.append(document_id)
        self.solr.delete_document(document_id)

    def add(self, collection: str, docs: Any) -> int:
        self.adds[collection] += 1

        def tee() -> Iterator[dict[str, Any]]:
            for doc in docs:
                self.sent[collection].append(doc)
                yield doc

        return self.solr.add(collection, tee())

    def commit(self) -> None:
        self.solr.commit()
        if self.after_commit is not None:
            self.after_commit()


class FailingLake:
    """The blob store, failing with ``error`` at the ``at``-th lake read of one document."""

    def __init__(self, inner: BlobStore, doc_id: str, at: int, error: BaseException) -> None:
        self.inner = inner
        self.prefix = lake_prefix(doc_id)
        self.left = at
        self.error = error
        self.lock = threading.Lock()  # the stage reads with several threads

    def get_bytes(self, key: str) -> bytes:
        if key.startswith(self.prefix):
            with self.lock:
                self.left -= 1
                fail = self.left == 0
            if fail:
                raise self.error
        return self.inner.get_bytes(key)


@pytest.fixture
def solr_resource(solr: SolrStandIn) -> SolrResource:
    return SolrResource(url=solr.url, retries=0, timeout=60, batch_size=50)


@pytest.fixture
def big(iati_db: DatabaseResource, store: BlobStore) -> str:
    """The big document and the worked example (due after it), flattened and in the lake."""
    doc_hash = seed_document(iati_db, store, BIG_ID, big_document(), order=0)
    seed_document(iati_db, store, WORKED_ID, WORKED_EXAMPLE, order=1)
    assert run_flatten(iati_db.engine, store).kinds["done"] == 2
    assert run_lake(iati_db.engine, store).kinds["done"] == 2
    return doc_hash


def whole_document(db: DatabaseResource, store: BlobStore, doc_id: str) -> dict[str, list[dict[str, Any]]]:
    """What the previous code sent: the whole jsonb list read at once, the list builders, and the
    lake records of all its identifiers."""
    state = row(db, doc_id)
    flattened = state["flattened_activities"]
    prefix = lake_prefix(doc_id)
    lake = {
        stem: LakeRecord(
            identifier,
            stem,
            store.get_bytes(f"{prefix}{stem}.xml"),
            store.get_bytes(f"{prefix}{stem}.json").decode(),
        )
        for stem, identifier in identifier_stems(flattened).items()
    }
    doc_hash = state["hash"]
    return {
        "activity": activity_docs(doc_id, flattened, document_hash=doc_hash, lake=lake.get),
        "transaction": transaction_docs(doc_id, flattened, document_hash=doc_hash),
        "budget": budget_docs(doc_id, flattened, document_hash=doc_hash),
    }


def ordered(docs: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Documents with their key order, so the comparison sees it."""
    return [list(doc.items()) for doc in docs]


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["id"] for doc in docs)


def entries(solr: SolrStandIn, doc_id: str, *, pending: bool = False) -> dict[str, dict[str, int]]:
    """collection → id → _version_ of one document's entries, committed (or pending)."""
    read = solr.pending if pending else solr.documents
    return {
        c: {d["id"]: d["_version_"] for d in read(c) if d["iati_activities_document_id"] == doc_id}
        for c in COLLECTIONS
    }


def set_flattened(
    db: DatabaseResource, doc_id: str, flattened: list[dict[str, Any]], *, reindex: bool
) -> None:
    execute(
        db,
        "UPDATE iati.document SET flattened_activities = CAST(:f AS jsonb), solrize_reindex = :r WHERE id = :id",
        f=json.dumps(flattened),
        r=reindex,
        id=doc_id,
    )


def index_old_version(
    db: DatabaseResource, store: BlobStore, solr: SolrStandIn, resource: SolrResource
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Index the big document as its last 200 activities (its "old entries"), then put the whole
    document back, flagged for re-indexing. Returns the whole list and the old committed entries."""
    full = row(db, BIG_ID)["flattened_activities"]
    set_flattened(db, BIG_ID, full[-200:], reindex=False)
    assert run_solr(db.engine, store, resource, chunk_size=CHUNK).kinds["done"] == 2
    old = entries(solr, BIG_ID)
    assert len(old["activity"]) == 200 and old["transaction"] and old["budget"]
    set_flattened(db, BIG_ID, full, reindex=True)
    execute(db, "UPDATE iati.document SET solrize_reindex = true WHERE id = :id", id=WORKED_ID)
    return full, old


def test_chunks_send_exactly_what_the_whole_document_gave(
    iati_db: DatabaseResource,
    big: str,
    store: BlobStore,
    solr: SolrStandIn,
    solr_resource: SolrResource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = whole_document(iati_db, store, BIG_ID)
    assert len(expected["activity"]) == ACTIVITIES - 1  # the one without an identifier is skipped
    assert len(expected["transaction"]) > 3000 and len(expected["budget"]) > 1200
    repeated = [d["id"] for d in expected["activity"] if d["iati_identifier"] == DUPLICATE]
    assert len(repeated) == 13 and repeated[-1].endswith("--12")  # counted over the whole document
    chunk_sizes: list[int] = []

    def spy(conn: Any, doc_id: str, chunk_size: int) -> Iterator[Any]:
        for chunk in iter_activity_chunks(conn, doc_id, chunk_size):
            if doc_id == BIG_ID:
                chunk_sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(solr_stage, "iter_activity_chunks", spy)
    recording = Recording(solr_resource)

    report = run_solr(iati_db.engine, store, recording, chunk_size=CHUNK)

    assert (report.kinds["done"], report.errors, report.batches) == (2, 0, 1)
    big_sent = {
        c: [d for d in recording.sent[c] if d["iati_activities_document_id"] == BIG_ID] for c in COLLECTIONS
    }
    for collection in COLLECTIONS:
        # Every document, field, value and key order as before, and in the same order.
        assert ordered(big_sent[collection]) == ordered(expected[collection]), collection
        committed = [d for d in solr.documents(collection) if d["iati_activities_document_id"] == BIG_ID]
        assert ids(committed) == ids(expected[collection])
    # Read from Postgres and sent in chunks: 13 chunks of at most 100 activities, one add per
    # chunk and collection (the other document is one chunk), each add in requests of 50.
    assert chunk_sizes == [CHUNK] * 12 + [10]
    assert report.counts["solr_chunks"] == 13 + 1
    assert recording.adds == dict.fromkeys(COLLECTIONS, 13 + 1)
    activity_updates = [r for r in solr.requests if r.collection == "activity" and r.handler == "update"]
    assert len(activity_updates) >= 25  # the big document's adds alone: 2 requests per chunk, 1 for the last


def test_documents_at_once_index_the_same(
    iati_db: DatabaseResource, big: str, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    # Both documents of the batch in flight together (threads): the same committed entries as
    # the whole-document builders give, in one commit per collection.
    expected = {doc_id: whole_document(iati_db, store, doc_id) for doc_id in (BIG_ID, WORKED_ID)}
    commits = {c: solr.commits(c) for c in COLLECTIONS}

    report = run_solr(iati_db.engine, store, solr_resource, chunk_size=CHUNK, documents_at_once=2)

    assert (report.kinds["done"], report.errors, report.batches) == (2, 0, 1)
    for collection in COLLECTIONS:
        committed = solr.documents(collection)
        for doc_id, docs in expected.items():
            mine = [d for d in committed if d["iati_activities_document_id"] == doc_id]
            assert ids(mine) == ids(docs[collection]), (doc_id, collection)
        assert solr.commits(collection) == commits[collection] + 1


def test_the_document_is_read_through_server_side_cursors_in_chunks(
    iati_db: DatabaseResource, big: str
) -> None:
    with iati_db.engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            chunks = iter_activity_chunks(conn, BIG_ID, 250)
            first = next(chunks)
            # The document's query is an open cursor on the server while the first chunk is handled.
            cursors = conn.execute(
                sa.text("SELECT count(*) FROM pg_cursors WHERE statement LIKE '%jsonb_array_elements%'")
            ).scalar_one()
            rest = list(chunks)
    assert cursors >= 1
    assert [len(first), *map(len, rest)] == [250, 250, 250, 250, 210]
    numbers = [n for chunk in [first, *rest] for flat, n in chunk if flat.get("iati_identifier") == DUPLICATE]
    assert numbers == list(range(13))
    # As the in-memory counter numbers them.
    flattened = [flat for chunk in [first, *rest] for flat, _ in chunk]
    assert [n for chunk in [first, *rest] for _, n in chunk] == [n for _, n in repeat_numbers(flattened)]


def test_solr_unavailable_part_way_commits_nothing_and_the_next_run_completes(
    iati_db: DatabaseResource, big: str, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    _, old = index_old_version(iati_db, store, solr, solr_resource)
    worked_before = entries(solr, WORKED_ID)
    # The big document comes first: its delete and its first two chunks (two requests each) go
    # through, the 6th update request fails; the worked example is never reached.
    solr.fail_next("activity", 503, after=5)

    report = run_solr(iati_db.engine, store, solr_resource, chunk_size=CHUNK)

    assert report.stopped and "503" in report.stopped and report.kinds["done"] == 0
    assert (report.kinds["interrupted"], report.errors_by_class) == (1, {"solr_unavailable": 1})
    # Nothing of the batch was committed: searchers still see the old entries, exactly.
    assert entries(solr, BIG_ID) == old and entries(solr, WORKED_ID) == worked_before
    pending = entries(solr, BIG_ID, pending=True)["activity"]
    assert len(pending) == 2 * CHUNK - 1 and not set(pending.items()) & set(old["activity"].items())
    state = row(iati_db, BIG_ID)
    assert state["solrize_end"] is None and state["solr_api_error"].startswith(f"{PART_WAY}: ")
    assert "503" in state["solr_api_error"]
    assert row(iati_db, WORKED_ID)["solr_api_error"] is None  # claimed, never reached: started, due

    shown: list[dict[str, int]] = []
    again = run_solr(
        iati_db.engine,
        store,
        Recording(solr_resource, lambda: shown.append(entries(solr, BIG_ID)["activity"])),
        chunk_size=CHUNK,
        batch_size=1,
    )

    # Due without retry_errors, redone first and in the first commit with the other one.
    assert (again.due, again.kinds["done"], again.errors, again.counts["interrupted_redone"]) == (2, 2, 0, 2)
    expected = whole_document(iati_db, store, BIG_ID)
    assert len(shown) == 1 and sorted(shown[0]) == ids(expected["activity"])
    for collection in COLLECTIONS:
        assert sorted(entries(solr, BIG_ID)[collection]) == ids(expected[collection])
        assert sorted(entries(solr, BIG_ID, pending=True)[collection]) == ids(expected[collection])
    state = row(iati_db, BIG_ID)
    assert state["solrize_end"] and state["solr_api_error"] is None and state["solrize_reindex"] is False


@pytest.mark.parametrize("error", [Crash("lake read failed"), Abort()], ids=["exception", "abort"])
def test_an_interrupted_document_is_redone_before_the_next_commit(
    iati_db: DatabaseResource,
    big: str,
    store: BlobStore,
    solr: SolrStandIn,
    solr_resource: SolrResource,
    error: BaseException,
) -> None:
    _, old = index_old_version(iati_db, store, solr, solr_resource)
    # Another document is due after it, in batches of its own: the next run commits more than once.
    other = "d0000004-0000-4000-8000-000000000004"
    seed_document(iati_db, store, other, (SAMPLES / "real-world/fcdo-activity.xml").read_bytes(), order=2)
    run_flatten(iati_db.engine, store)
    run_lake(iati_db.engine, store)
    # The big document dies in its fifth chunk (two reads per activity).
    failing = FailingLake(store, BIG_ID, at=2 * 4 * CHUNK + 3, error=error)

    with pytest.raises(type(error)):
        run_solr(iati_db.engine, failing, solr_resource, chunk_size=CHUNK, batch_size=1)  # type: ignore[arg-type]

    assert entries(solr, BIG_ID) == old  # nothing committed since
    assert len(entries(solr, BIG_ID, pending=True)["activity"]) == 4 * CHUNK - 1  # the first 4 chunks
    state = row(iati_db, BIG_ID)
    assert state["solrize_start"] > state["solrize_end"] and state["solr_api_error"] is None

    expected = whole_document(iati_db, store, BIG_ID)
    shown: list[dict[str, list[str]]] = []
    recording = Recording(
        solr_resource, lambda: shown.append({c: sorted(v) for c, v in entries(solr, BIG_ID).items()})
    )
    report = run_solr(iati_db.engine, store, recording, chunk_size=CHUNK, batch_size=1)

    assert (report.kinds["done"], report.errors, report.counts["interrupted_redone"]) == (3, 0, 1)
    assert recording.deletes[0] == BIG_ID  # redone first
    assert len(shown) == 3  # the interrupted one's batch, then one commit per other document
    # Every commit of the run shows the complete new set: never a part of it.
    complete = {c: ids(expected[c]) for c in COLLECTIONS}
    assert all(state == complete for state in shown)


def test_a_document_refused_part_way_is_removed_entirely(
    iati_db: DatabaseResource, big: str, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    full, old = index_old_version(iati_db, store, solr, solr_resource)
    bad = copy.deepcopy(full)
    bad[750]["budget_value"] = "1,000.50"  # Solr cannot take it: refused in the eighth chunk
    set_flattened(iati_db, BIG_ID, bad, reindex=True)
    recording = Recording(solr_resource)

    report = run_solr(iati_db.engine, store, recording, chunk_size=CHUNK)

    assert (report.kinds["done"], report.kinds["rejected"], report.errors_by_class) == (
        1,
        1,
        {"solr_rejected": 1},
    )
    sent = [d for d in recording.sent["activity"] if d["iati_activities_document_id"] == BIG_ID]
    assert len(sent) > 7 * CHUNK  # seven chunks had gone through before the refusal
    assert entries(solr, BIG_ID) == dict.fromkeys(COLLECTIONS, {})
    assert entries(solr, BIG_ID, pending=True) == dict.fromkeys(COLLECTIONS, {})
    assert entries(solr, WORKED_ID)["activity"]  # the batch went on
    state = row(iati_db, BIG_ID)
    assert state["solrize_end"] is None and "1,000.50" in state["solr_api_error"]
    assert "HTTP 400" in state["solr_api_error"]
    assert old["activity"] and state["solrize_reindex"] is True  # there were old entries to lose


def test_a_lake_record_missing_part_way_removes_the_document_and_rebuilds_the_lake(
    iati_db: DatabaseResource, big: str, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    index_old_version(iati_db, store, solr, solr_resource)
    flattened = row(iati_db, BIG_ID)["flattened_activities"]
    (stem,) = identifier_stems([flattened[1000]])
    store.delete(f"{lake_prefix(BIG_ID)}{stem}.json")

    report = run_solr(iati_db.engine, store, solr_resource, chunk_size=CHUNK)

    assert (report.kinds["done"], report.kinds["lake_missing"]) == (1, 1)
    assert entries(solr, BIG_ID) == dict.fromkeys(COLLECTIONS, {})  # not a part of it
    state = row(iati_db, BIG_ID)
    assert (
        state["lakify_end"] is None
        and state["solrize_end"] is None
        and "no lake record" in state["solr_api_error"]
    )

    assert run_lake(iati_db.engine, store).kinds["done"] == 1
    assert run_solr(iati_db.engine, store, solr_resource, chunk_size=CHUNK).kinds["done"] == 1
    expected = whole_document(iati_db, store, BIG_ID)
    assert all(sorted(entries(solr, BIG_ID)[c]) == ids(expected[c]) for c in COLLECTIONS)


def test_a_bad_first_chunk_sends_nothing_and_keeps_the_old_entries(
    iati_db: DatabaseResource, big: str, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    _, old = index_old_version(iati_db, store, solr, solr_resource)
    flattened = row(iati_db, BIG_ID)["flattened_activities"]
    (stem,) = identifier_stems([flattened[10]])
    store.delete(f"{lake_prefix(BIG_ID)}{stem}.xml")
    recording = Recording(solr_resource)

    report = run_solr(iati_db.engine, store, recording, chunk_size=CHUNK)

    assert report.kinds["lake_missing"] == 1 and BIG_ID not in recording.deletes
    assert entries(solr, BIG_ID) == old  # as the whole-document code left it
    assert row(iati_db, BIG_ID)["solrize_end"] is not None


def test_the_lean_stand_in_checks_everything_and_keeps_only_the_identifying_fields(
    iati_db: DatabaseResource, big: str, store: BlobStore, solr: SolrStandIn, solr_resource: SolrResource
) -> None:
    assert run_solr(iati_db.engine, store, solr_resource, chunk_size=CHUNK).kinds["done"] == 2
    with SolrStandIn(lean=True) as lean:
        resource = SolrResource(url=lean.url, retries=0, timeout=60, batch_size=50)
        execute(iati_db, "UPDATE iati.document SET solrize_reindex = true")
        assert run_solr(iati_db.engine, store, resource, chunk_size=CHUNK).kinds["done"] == 2
        for collection in COLLECTIONS:
            full = {d["id"]: d for d in solr.documents(collection)}
            kept = lean.documents(collection)
            assert sorted(d["id"] for d in kept) == sorted(full)
            assert all(set(d) == {*LEAN, "_version_"} for d in kept)
            assert all(d[name] == full[d["id"]][name] for d in kept for name in LEAN)
        # A smaller new version: the document's old entries are deleted (by query, through the
        # index of the kept fields) before the new ones are added, in one commit.
        flattened = row(iati_db, BIG_ID)["flattened_activities"]
        set_flattened(iati_db, BIG_ID, flattened[:300], reindex=True)
        commits = lean.commits("activity")
        assert run_solr(iati_db.engine, store, resource, chunk_size=CHUNK).kinds["done"] == 1
        assert lean.commits("activity") == commits + 1
        assert (
            len(entries(lean, BIG_ID)["activity"])
            == 299
            == len(entries(lean, BIG_ID, pending=True)["activity"])
        )
        assert len(entries(lean, WORKED_ID)["activity"]) == 1
        # Refused as the full stand-in refuses.
        worked = row(iati_db, WORKED_ID)["flattened_activities"]
        worked[0]["budget_value"] = "1,000.50"
        set_flattened(iati_db, WORKED_ID, worked, reindex=True)
        report = run_solr(iati_db.engine, store, resource, chunk_size=CHUNK)
        assert report.errors_by_class == {"solr_rejected": 1}
        assert entries(lean, WORKED_ID, pending=True) == dict.fromkeys(COLLECTIONS, {})


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_the_stand_in_keeps_solr_order_and_visibility_with_commits_that_cost_what_changed(lean: bool) -> None:
    def doc(n: int, document: str = "D1", **extra: Any) -> dict[str, Any]:
        return {
            "id": f"doc-{n}",
            "iati_activities_document_id": document,
            "iati_activities_document_hash": "H",
            **extra,
        }

    with SolrStandIn(lean=lean) as server:
        budget = pysolr.Solr(f"{server.url}/budget", timeout=10, always_commit=False)
        budget.add([doc(1), doc(2), doc(3, "D2")], commit=True)
        budget.add([doc(1, title_narrative="again"), doc(4, "D2")])
        budget.delete(id="doc-2")
        # Committed: as it was; pending: an overwrite moves to the end, a delete is gone.
        assert [d["id"] for d in server.documents("budget")] == ["doc-1", "doc-2", "doc-3"]
        assert [d["id"] for d in server.pending("budget")] == ["doc-3", "doc-1", "doc-4"]
        budget.delete(q='iati_activities_document_id:"D2"')
        assert [d["id"] for d in server.pending("budget")] == ["doc-1"]
        budget.add([doc(3, "D2")])
        budget.commit()
        assert [d["id"] for d in server.documents("budget")] == ["doc-1", "doc-3"]
        assert server.documents("budget") == server.pending("budget")
        assert budget.search('iati_activities_document_id:"D2"').hits == 1
        stored = server.documents("budget")[0]
        assert ("title_narrative" in stored) is not lean  # lean keeps the identifying fields only
        # The Nth request fails: after=N-1.
        server.fail_next("budget", 503, after=1)
        budget.add([doc(5)])
        with pytest.raises(pysolr.SolrError, match="503"):
            budget.add([doc(6)])
        budget.add([doc(7)])
        assert [d["id"] for d in server.pending("budget")] == ["doc-1", "doc-3", "doc-5", "doc-7"]
