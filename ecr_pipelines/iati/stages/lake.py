"""The activity-lake stage: one XML and one JSON blob per activity of each cleaned document.

Due: downloaded, cleaned, not in the lake yet and no lake error. A document's old lake is
deleted before it is rebuilt. An unreadable clean file goes back to the clean stage, a missing
one back to download (the refresher's rules); a storage failure leaves the document due.

Each document is split and written by a worker process (``IATI_PROCESSES``,
``ecr_pipelines.lib.workers``; each with its own writer threads) when the due documents weigh
enough; the run holds the claims and counts the outcomes.
"""

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

from sqlalchemy.engine import Engine

from ecr_pipelines.iati.blobkeys import clean_key, lake_prefix
from ecr_pipelines.iati.lake import LakeError, LakeParseError, iter_lake_records
from ecr_pipelines.iati.stages.documents import (
    RESET_LAKE,
    RESET_TO_CLEAN,
    RESET_TO_DOWNLOAD,
    document_workers,
    update_document,
)
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, clip, run_stage
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore
from ecr_pipelines.lib.scratch import scratch_file
from ecr_pipelines.lib.workers import StageResources

log = logging.getLogger(__name__)

STAGE = Stage(
    name="iati.lake",
    table="iati.document",
    alias="d",
    due="d.downloaded IS NOT NULL AND d.clean_end IS NOT NULL AND d.lakify_end IS NULL AND d.lakify_error IS NULL",
    columns="d.id, d.hash",
    order="d.downloaded, d.id",
    on_claim="lakify_start = now()",
)


class BoundedWriter:
    """Blob writes on a few threads (object stores answer one PUT at a time), with at most
    ``2 * workers`` in flight so memory stays flat; a stem written twice keeps the later record."""

    def __init__(self, store: BlobStore, workers: int) -> None:
        self.store = store
        self.workers = max(1, workers)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="iati-lake")
        self.slots = threading.BoundedSemaphore(self.workers * 2)
        self.in_flight: dict[str, list[Future[int]]] = {}

    def _put(self, key: str, data: bytes, content_type: str) -> int:
        try:
            # Not atomic: a lake is read only once its document's lakify_end is set, and a
            # rebuilt or interrupted lake is deleted before it is written again.
            return self.store.put_bytes(key, data, content_type, atomic=False)
        finally:
            self.slots.release()

    def write(self, stem: str, items: Sequence[tuple[str, bytes, str]]) -> None:
        for earlier in self.in_flight.pop(stem, []):
            earlier.result()  # the same identifier again: the later record must land last
        submitted = []
        for key, data, content_type in items:
            self.slots.acquire()
            submitted.append(self.pool.submit(self._put, key, data, content_type))
        self.in_flight[stem] = submitted
        if len(self.in_flight) > 4 * self.workers:
            self._prune()

    def _prune(self) -> None:
        # Finished writes are forgotten (after raising their error, if any) so the bookkeeping
        # does not grow with the number of activities.
        for stem in [stem for stem, futures in self.in_flight.items() if all(f.done() for f in futures)]:
            for future in self.in_flight.pop(stem):
                future.result()

    def close(self) -> None:
        try:
            for futures in self.in_flight.values():
                for future in futures:
                    future.result()
        finally:
            self.in_flight.clear()
            self.pool.shutdown(wait=True, cancel_futures=True)


def write_lake(store: BlobStore, path: str, doc_id: str, workers: int) -> tuple[int, int, int]:
    """Write one document's lake from its clean file; returns (records, skipped, blobs deleted)."""
    prefix = lake_prefix(doc_id)
    deleted = store.delete_prefix(prefix)  # a rebuilt lake holds no record of an older version
    records = iter_lake_records(path)
    writer = BoundedWriter(store, workers)
    count = 0
    try:
        for record in records:
            writer.write(
                record.stem,
                [
                    (f"{prefix}{record.stem}.xml", record.xml, "application/xml"),
                    (f"{prefix}{record.stem}.json", record.json_text.encode("utf-8"), "application/json"),
                ],
            )
            count += 1
    finally:
        writer.close()
    return count, records.skipped, deleted


def lake_document(
    engine: Engine, store: BlobStore, doc_id: str, doc_hash: str, *, workers: int = 8
) -> Outcome:
    """Split one claimed document into the lake; failures go to its row."""
    with scratch_file("iati-lake-", ".xml") as path:
        try:
            # The strict parser reads the file twice (root check, then records): a local copy.
            store.download_to(clean_key(doc_hash), path)
            records, skipped, deleted = write_lake(store, path, doc_id, workers)
        except BlobNotFound:
            if update_document(engine, f"{RESET_TO_DOWNLOAD}, {RESET_LAKE}", doc_id, doc_hash):
                return Outcome(
                    doc_id, "sent_back", message="clean file missing: downloaded and cleaned again"
                )
            return Outcome(doc_id, "superseded")
        except LakeParseError as exc:
            # The clean file does not parse strictly: clean it again from the source (refresher rule).
            if update_document(engine, f"{RESET_TO_CLEAN}, {RESET_LAKE}", doc_id, doc_hash):
                return Outcome(
                    doc_id, "sent_back", message=clip(f"clean file unreadable, cleaned again: {exc}")
                )
            return Outcome(doc_id, "superseded")
        except LakeError as exc:
            if update_document(engine, "lakify_error = :error", doc_id, doc_hash, error=clip(str(exc))):
                return Outcome(doc_id, "error", error="not_iati", message=str(exc))
            return Outcome(doc_id, "superseded")
        except Exception as exc:
            # Storage trouble: the row stays due, the next run tries again.
            return Outcome(
                doc_id, "left_due", error="storage", message=f"{type(exc).__name__}: {exc} (retried next run)"
            )
    counts = {"activities": records, "skipped_no_identifier": skipped, "blobs_written": 2 * records}
    counts["blobs_deleted"] = deleted
    if update_document(
        engine, "lakify_end = now(), lakify_error = NULL, solr_api_error = NULL", doc_id, doc_hash
    ):
        return Outcome(doc_id, "done", counts=counts)
    return Outcome(doc_id, "superseded", counts=counts)


def lake_item(resources: StageResources, item: tuple[str, str], *, workers: int) -> Outcome:
    """One claimed document (id, hash): in a worker process or in the run's own."""
    doc_id, doc_hash = item
    return lake_document(resources.engine, resources.store, doc_id, doc_hash, workers=workers)


def run_lake(
    engine: Engine,
    store: BlobStore,
    *,
    batch_size: int = 50,
    limit: int | None = None,
    workers: int = 8,
    processes: int | None = None,
    run_id: str = "",
    progress: Progress = log.info,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """The lake stage over every due document (``ecr_pipelines.lib.batch.run_stage``).

    ``workers``: writer threads per document; ``processes``: worker processes (default
    ``IATI_PROCESSES``), a document whose worker fails or dies is left due. ``committed`` is
    called with each batch's outcomes.
    """
    pool = document_workers(partial(lake_item, workers=workers), engine, store, STAGE, processes)
    return run_stage(
        engine,
        STAGE,
        pool.rows,
        lambda conn, outcomes: None,  # each document's state is written as its lake is
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
        committed=committed,
        workers=pool,
    )
