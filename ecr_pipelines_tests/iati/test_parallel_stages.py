"""The CPU-bound IATI stages in worker processes (``IATI_PROCESSES``, ``ecr_pipelines.lib.workers``):
the same rows and blobs as in the run's own process, the work really done elsewhere, and two runs
at once still never working on one document twice.

The documents here are small; they are recorded as large (``download_size``) so the workers pay.
These two tests start processes (about a second each); keep it that way."""

import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ecr_pipelines.iati.blobkeys import clean_key, source_key
from ecr_pipelines.iati.stages.clean import clean_due
from ecr_pipelines.iati.stages.flatten import run_flatten
from ecr_pipelines.iati.stages.lake import run_lake
from ecr_pipelines.iati.stages.validate import validate_due
from ecr_pipelines.iati.validator_api import LocalValidator
from ecr_pipelines.lib.batch import Outcome, StageReport
from ecr_pipelines.lib.blobstore import BlobStore, LocalBlobStore
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.iati.claims import claims
from ecr_pipelines_tests.iati.iati_samples import SAMPLES, mixed_document

LARGE = 64 * 1024 * 1024  # each document counts as this many bytes, over the workers' threshold

SOURCES = {
    "doc-3fi": (SAMPLES / "real-world/3fi-activity.xml").read_bytes(),
    "doc-beis": (SAMPLES / "real-world/beis-activity.xml").read_bytes(),
    "doc-fcdo": (SAMPLES / "real-world/fcdo-activity.xml").read_bytes(),
    "doc-mixed": mixed_document(),  # schema-invalid: rebuilt with its two valid activities
    "doc-broken": b"<iati-activities version='2.03'><iati-activity>",  # goes no further than validation
}


def seed(db: DatabaseResource, store: BlobStore, sources: dict[str, bytes], **columns: Any) -> None:
    with db.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE iati.document, iati.publisher, iati.validation, pipeline.stage_claim, pipeline.run_owner "
            "RESTART IDENTITY CASCADE"
        )
        conn.execute(
            sa.text("INSERT INTO iati.publisher (org_id, name, title) VALUES ('org-1', 'org-1', 'Org')")
        )
        for doc_id, data in sources.items():
            values = {
                "id": doc_id,
                "hash": f"h-{doc_id}",
                "url": f"http://publisher.test/{doc_id}.xml",
                "publisher": "org-1",
                "downloaded": datetime.now(UTC) - timedelta(hours=3),
                "download_size": LARGE,
                **columns,
            }
            conn.execute(
                sa.text(
                    f"INSERT INTO iati.document ({', '.join(values)}) VALUES ({', '.join(f':{k}' for k in values)})"
                ),
                values,
            )
            store.put_bytes(source_key(f"h-{doc_id}"), data)
            if columns.get("clean_end"):
                store.put_bytes(clean_key(f"h-{doc_id}"), data)


def snapshot(db: DatabaseResource, store: BlobStore) -> tuple[Any, ...]:
    with db.connect() as conn:
        documents = conn.execute(
            sa.text(
                "SELECT id, validation IS NOT NULL, file_schema_valid, validation_api_error, clean_end IS NOT NULL, "
                "clean_error, flatten_end IS NOT NULL, flatten_api_error, flattened_activities, "
                "lakify_end IS NOT NULL, lakify_error FROM iati.document ORDER BY id"
            )
        ).all()
        reports = conn.execute(
            sa.text("SELECT document_id, valid, report FROM iati.validation ORDER BY document_id")
        ).all()
    blobs = {key: store.get_bytes(key) for key in store.list("iati/")}
    return [tuple(r) for r in documents], [tuple(r) for r in reports], blobs


def run_every_stage(
    db: DatabaseResource, store: BlobStore, processes: int
) -> tuple[list[StageReport], list[Outcome]]:
    outcomes: list[Outcome] = []
    common: dict[str, Any] = {"batch_size": 2, "processes": processes, "committed": outcomes.extend}
    reports = [
        validate_due(db.engine, store, LocalValidator(), hold_hours=0, **common),
        clean_due(db.engine, store, **common),
        run_flatten(db.engine, store, **common),
        run_lake(db.engine, store, workers=2, **common),
    ]
    return reports, outcomes


def test_two_processes_give_the_same_rows_and_blobs_as_one(iati_db: DatabaseResource, tmp_path: Path) -> None:
    alone = LocalBlobStore(tmp_path / "alone")
    seed(iati_db, alone, SOURCES)
    reports, outcomes = run_every_stage(iati_db, alone, processes=1)
    expected = snapshot(iati_db, alone)
    assert [r.processes for r in reports] == [1, 1, 1, 1]
    assert all(o.worker is None for o in outcomes)

    shared = LocalBlobStore(tmp_path / "shared")
    seed(iati_db, shared, SOURCES)
    reports, outcomes = run_every_stage(iati_db, shared, processes=2)

    assert snapshot(iati_db, shared) == expected
    assert [(r.stage, r.processes, r.processed, r.errors) for r in reports] == [
        ("iati.validate", 2, 5, 0),
        ("iati.clean", 2, 4, 0),
        ("iati.flatten", 2, 4, 0),
        ("iati.lake", 2, 4, 0),
    ]
    assert all(r.metadata()["processes"] == 2 for r in reports)
    # Every document of every stage was worked on by a worker, not by this process.
    assert all(o.worker is not None and o.worker != os.getpid() for o in outcomes)
    assert len({o.worker for o in outcomes}) >= 2
    assert reports[1].kinds == Counter(copied=3, rebuilt=1)
    assert reports[2].counts["activities"] == 1 + 9 + 1 + 2
    assert claims(iati_db) == []


def test_two_runs_at_once_never_flatten_one_document_twice(iati_db: DatabaseResource, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    valid = SOURCES["doc-beis"]
    documents = {f"doc-{n}": valid for n in range(8)}
    seed(iati_db, store, documents, clean_end=datetime.now(UTC))
    outcomes: list[list[Outcome]] = [[], []]
    reports: list[StageReport | None] = [None, None]
    together = threading.Barrier(2)

    def run(number: int) -> None:
        together.wait()
        reports[number] = run_flatten(
            iati_db.engine, store, batch_size=2, processes=2, committed=outcomes[number].extend
        )

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    keys = [o.key for run_outcomes in outcomes for o in run_outcomes]
    assert sorted(keys) == sorted(documents)  # each document's outcome once, from one run or the other
    assert all(o.kind == "done" for run_outcomes in outcomes for o in run_outcomes)
    assert sum(r.claimed for r in reports if r) == len(documents)
    with iati_db.connect() as conn:
        flattened = conn.execute(
            sa.text(
                "SELECT count(*) FROM iati.document WHERE flatten_end IS NOT NULL AND jsonb_array_length(flattened_activities) = 9"
            )
        ).scalar()
    assert flattened == len(documents)
    assert claims(iati_db) == []
