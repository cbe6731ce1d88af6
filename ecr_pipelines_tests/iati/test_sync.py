"""The set-based sync against the real (embedded) Postgres: new, changed, stale, removed
publishers, renames, code-4 revival, the safety valve, and blob clean-up."""

from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.iati.index import Document, IndexSnapshot, Publisher, SafetyValveError, finish_snapshot
from ecr_pipelines.iati.stages.sync import (
    STAGE_RESET_COLUMNS,
    clean_key,
    lake_prefix,
    remove_blobs,
    source_key,
    sync_index,
)
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource


def publisher(n: int, name: str | None = None) -> Publisher:
    return Publisher(org_id=f"org-{n}", name=name or f"pub-{n}", title=f"Publisher {n}", iati_id=f"XM-{n}")


def document(n: int, org: int, doc_hash: str | None = None, cached: str | None = "default") -> Document:
    return Document(
        id=f"doc-{n}",
        name=f"dataset-{n}",
        hash=f"{n:040x}" if doc_hash is None else doc_hash,
        url=f"http://publisher.test/{n}.xml",
        cached_dataset_url=f"http://cache.test/{n}.xml" if cached == "default" else cached,
        publisher=f"org-{org}",
    )


def snapshot(publishers: list[Publisher], documents: list[Document]) -> IndexSnapshot:
    return finish_snapshot("bds", publishers, documents, [], None)


BASE = snapshot(
    [publisher(1), publisher(2), publisher(3)],
    [document(1, 1), document(2, 1), document(3, 2), document(4, 3), document(5, 3)],
)


def run(db: DatabaseResource, snap: IndexSnapshot, **kwargs: Any) -> Any:
    with db.begin() as conn:
        return sync_index(Sql(conn), snap, **kwargs)


def rows(db: DatabaseResource, query: str) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(sa.text(query)).all())


def mark_processed(db: DatabaseResource, doc_id: str) -> None:
    """Pretend every stage finished for a document."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO iati.validation (document_id, document_hash, document_url, valid, report)
                VALUES (:id, 'h', 'u', true, '{}');
                UPDATE iati.document SET downloaded = now(), download_size = 10, download_encoding = 'utf-8',
                    download_attempts = 2, validation_request = now(), file_schema_valid = true,
                    validation = (SELECT max(id) FROM iati.validation), clean_start = now(), clean_end = now(),
                    flatten_start = now(), flatten_end = now(), flattened_activities = '[{"a": "1"}]',
                    lakify_start = now(), lakify_end = now(), solrize_start = now(), solrize_end = now(),
                    last_solrize_end = now(), solrize_reindex = true, regenerate_validation_report = true
                WHERE id = :id
                """
            ),
            {"id": doc_id},
        )


def test_first_sync_inserts_everything_in_few_statements(iati_db: DatabaseResource) -> None:
    report = run(iati_db, BASE)
    assert (report.publishers, report.new_publishers, report.documents, report.new_documents) == (3, 3, 5, 5)
    assert report.changed_documents == [] and report.stale_documents == [] and report.removed_publishers == []
    assert report.statements <= 20
    stored = rows(iati_db, "SELECT org_id, name, package_count, iati_id FROM iati.publisher ORDER BY org_id")
    assert stored == [
        ("org-1", "pub-1", 2, "XM-1"),
        ("org-2", "pub-2", 1, "XM-2"),
        ("org-3", "pub-3", 2, "XM-3"),
    ]
    doc = rows(iati_db, "SELECT hash, url, cached_dataset_url, name, publisher, first_seen = last_seen, modified "
               "FROM iati.document WHERE id = 'doc-3'")[0]  # fmt: skip
    assert doc == (
        f"{3:040x}",
        "http://publisher.test/3.xml",
        "http://cache.test/3.xml",
        "dataset-3",
        "org-2",
        True,
        None,
    )
    assert rows(iati_db, "SELECT source, publishers, documents, new_documents FROM iati.refresh_log") == [
        ("bds", 3, 5, 5)
    ]


def test_unchanged_sync_changes_nothing_but_last_seen(iati_db: DatabaseResource) -> None:
    run(iati_db, BASE)
    mark_processed(iati_db, "doc-1")
    report = run(iati_db, BASE)
    assert (report.new_publishers, report.new_documents, report.unchanged_documents) == (0, 0, 5)
    assert rows(
        iati_db,
        "SELECT downloaded IS NOT NULL, solrize_end IS NOT NULL FROM iati.document WHERE id = 'doc-1'",
    ) == [(True, True)]


def test_a_changed_hash_resets_every_stage_column(iati_db: DatabaseResource) -> None:
    run(iati_db, BASE)
    mark_processed(iati_db, "doc-1")
    mark_processed(iati_db, "doc-2")
    changed = snapshot(BASE.publishers, [replace(BASE.documents[0], hash="ff" * 20), *BASE.documents[1:]])
    report = run(iati_db, changed)
    assert report.changed_documents == [("doc-1", f"{1:040x}", "ff" * 20)]
    assert report.unchanged_documents == 4
    columns = ", ".join(STAGE_RESET_COLUMNS)
    reset = rows(iati_db, f"SELECT {columns} FROM iati.document WHERE id = 'doc-1'")[0]
    assert all(value is None for value in reset), dict(zip(STAGE_RESET_COLUMNS, reset, strict=True))
    flags = rows(
        iati_db,
        "SELECT hash, modified IS NOT NULL, download_attempts, regenerate_validation_report, solrize_reindex, "
        "last_solrize_end IS NOT NULL FROM iati.document WHERE id = 'doc-1'",
    )[0]
    assert flags == ("ff" * 20, True, 0, False, False, True)
    # The neighbour keeps its state.
    assert rows(
        iati_db, "SELECT downloaded IS NOT NULL, validation IS NOT NULL FROM iati.document WHERE id = 'doc-2'"
    ) == [(True, True)]
    assert report.unreferenced_hashes == [f"{1:040x}"]


def test_stale_documents_and_removed_publishers_are_deleted(iati_db: DatabaseResource) -> None:
    run(iati_db, BASE)
    # doc-2 disappears; publisher 3 (with doc-4 and doc-5) disappears.
    smaller = snapshot([publisher(1), publisher(2)], [document(1, 1), document(3, 2)])
    report = run(iati_db, smaller, document_safety_percentage=0, publisher_safety_percentage=0)
    assert sorted(report.stale_document_ids) == ["doc-2", "doc-4", "doc-5"]
    assert report.removed_publishers == [("org-3", "pub-3")]
    assert rows(iati_db, "SELECT id FROM iati.document ORDER BY id") == [("doc-1",), ("doc-3",)]
    assert rows(iati_db, "SELECT org_id FROM iati.publisher ORDER BY org_id") == [("org-1",), ("org-2",)]
    assert sorted(report.unreferenced_hashes) == [f"{n:040x}" for n in (2, 4, 5)]


def test_a_renamed_publisher_keeps_its_documents(iati_db: DatabaseResource) -> None:
    run(iati_db, BASE)
    mark_processed(iati_db, "doc-1")
    renamed = snapshot([publisher(1, "new-name"), publisher(2), publisher(3)], BASE.documents)
    report = run(iati_db, renamed)
    assert report.renamed_publishers == [("org-1", "pub-1", "new-name")]
    assert report.stale_documents == [] and report.removed_publishers == []
    assert rows(iati_db, "SELECT name FROM iati.publisher WHERE org_id = 'org-1'") == [("new-name",)]
    assert rows(iati_db, "SELECT downloaded IS NOT NULL FROM iati.document WHERE id = 'doc-1'") == [(True,)]


def test_a_document_moving_to_another_publisher_follows_it(iati_db: DatabaseResource) -> None:
    run(iati_db, BASE)
    moved = snapshot(BASE.publishers, [replace(BASE.documents[0], publisher="org-2"), *BASE.documents[1:]])
    report = run(iati_db, moved)
    assert report.changed_documents == []
    assert rows(iati_db, "SELECT publisher FROM iati.document WHERE id = 'doc-1'") == [("org-2",)]
    assert rows(iati_db, "SELECT package_count FROM iati.publisher WHERE org_id = 'org-2'") == [(2,)]


def test_a_document_without_source_becomes_due_when_the_index_has_one(iati_db: DatabaseResource) -> None:
    without = snapshot(BASE.publishers, [document(1, 1, doc_hash="", cached=None), *BASE.documents[1:]])
    run(iati_db, without)
    with iati_db.begin() as conn:
        conn.exec_driver_sql("UPDATE iati.document SET download_error = 4 WHERE id = 'doc-1'")
    # Same hash (''), still no URL: the code stays.
    assert run(iati_db, without).revived_documents == 0
    report = run(iati_db, BASE)
    assert report.changed_documents == [("doc-1", "", f"{1:040x}")]
    assert rows(
        iati_db, "SELECT download_error, cached_dataset_url FROM iati.document WHERE id = 'doc-1'"
    ) == [(None, "http://cache.test/1.xml")]


def test_same_hash_gaining_a_cached_url_is_revived(iati_db: DatabaseResource) -> None:
    no_cache = snapshot(BASE.publishers, [document(1, 1, cached=None), *BASE.documents[1:]])
    run(iati_db, no_cache)
    with iati_db.begin() as conn:
        conn.exec_driver_sql("UPDATE iati.document SET download_error = 4 WHERE id = 'doc-1'")
    report = run(iati_db, BASE)
    assert (report.revived_documents, report.changed_documents) == (1, [])
    assert rows(iati_db, "SELECT download_error, modified FROM iati.document WHERE id = 'doc-1'") == [
        (None, None)
    ]


def test_the_safety_valve_stops_a_small_index_and_changes_nothing(iati_db: DatabaseResource) -> None:
    run(iati_db, BASE)
    mark_processed(iati_db, "doc-1")
    before = rows(iati_db, "SELECT id, hash, last_seen, downloaded FROM iati.document ORDER BY id")
    tiny_documents = snapshot(
        BASE.publishers, [replace(BASE.documents[0], hash="ee" * 20), BASE.documents[2]]
    )
    with pytest.raises(SafetyValveError, match="lists 2 documents but 5 are stored"):
        run(iati_db, tiny_documents)
    tiny_publishers = snapshot([publisher(1)], [document(1, 1), document(2, 1)])
    with pytest.raises(SafetyValveError, match="lists 1 publishers but 3 are stored"):
        run(iati_db, tiny_publishers, document_safety_percentage=0)
    assert rows(iati_db, "SELECT id, hash, last_seen, downloaded FROM iati.document ORDER BY id") == before
    assert rows(iati_db, "SELECT count(*) FROM iati.publisher") == [(3,)]
    # Configurable: a lower percentage, or an operator's explicit override, lets it through.
    assert len(run(iati_db, tiny_documents, document_safety_percentage=40).stale_documents) == 3
    report = run(iati_db, tiny_publishers, ignore_safety_valve=True)
    assert report.removed_publishers == [("org-2", "pub-2"), ("org-3", "pub-3")]


def test_shared_hashes_keep_their_blob(iati_db: DatabaseResource) -> None:
    shared = "ab" * 20
    two = snapshot(BASE.publishers, [document(1, 1, doc_hash=shared), document(2, 1, doc_hash=shared)])
    run(iati_db, two)
    report = run(
        iati_db, snapshot(BASE.publishers, [document(1, 1, doc_hash=shared)]), document_safety_percentage=0
    )
    assert report.stale_document_ids == ["doc-2"] and report.unreferenced_hashes == []


def test_remove_blobs_deletes_source_clean_and_lake_objects(local_blobs: BlobStoreResource) -> None:
    store = local_blobs.store
    for key in (source_key("aa"), clean_key("aa"), source_key("bb"), lake_prefix("doc-9") + "x.xml"):
        store.put_bytes(key, b"<x/>")
    store.put_bytes(lake_prefix("doc-90") + "keep.xml", b"<x/>")  # a prefix of another id
    cleanup = remove_blobs(store, ["aa", "cc"], ["doc-9"])
    assert cleanup.deleted == 3 and cleanup.failures == []
    assert sorted(store.list("iati/")) == sorted([source_key("bb"), lake_prefix("doc-90") + "keep.xml"])


def test_sync_of_a_thousand_documents_costs_the_same_statements(iati_db: DatabaseResource) -> None:
    publishers = [publisher(n) for n in range(50)]
    big = snapshot(publishers, [document(n, n % 50) for n in range(1000)])
    first = run(iati_db, big)
    second = run(iati_db, big)
    assert first.new_documents == 1000 and second.unchanged_documents == 1000
    assert first.statements <= 20 and second.statements <= 20
