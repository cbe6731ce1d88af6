"""The flatten, activity-lake and Solr stages of the IATI refresher, on ``iati.document``.

Each stage keeps the legacy columns and work-selection rules (so SQL written against the
refresher's database still reads the state correctly), and runs in three steps:

1. **Crash recovery**, in one statement that locks the rows in id order (``FOR UPDATE``, retried
   on deadlock, as the refresher's fix for concurrent stage containers): a document whose stage
   started but neither finished nor failed is made due again.
   flatten: ``flatten_start = NULL WHERE flatten_end IS NULL`` (so failed flattens are retried too,
   as in the refresher); lake: ``lakify_start = NULL WHERE lakify_end IS NULL AND lakify_error IS
   NULL``; Solr needs none: a document is due until ``solrize_end`` is set, which happens only after
   its entries are committed, and delete-then-add with deterministic ids makes a redo idempotent.
2. **Selection** of the due documents (the refresher's queries, see the ``*_DUE`` constants), in
   ``downloaded`` order.
3. **Batches**: each batch is claimed with one UPDATE (``*_start = now()``, only rows still due),
   then every document is processed on its own. A document's failure is recorded in its row and
   never stops the batch. Every final write is guarded by the document's ``hash``: if the sync
   changed the document meanwhile, the stale result is dropped (``superseded``).

Where a document goes when its input is missing (the refresher's rules): no clean file →
``downloaded`` and ``clean_*`` reset, so it is downloaded and cleaned again; a clean file the strict
lake parser cannot read → ``clean_*`` and ``lakify_*`` reset (cleaned again); a lake record missing
when indexing → ``lakify_*`` reset (lake rebuilt) and ``solr_api_error`` set.

Deliberate differences from the refresher:

* flatten output goes to Postgres through ``COPY`` from a temporary file, so the flatten stage's
  memory does not grow with the file (the jsonb value itself is limited to 256 MB by Postgres; a
  larger document fails with ``flatten_api_error = 1`` as it did before);
* a document is indexed once, with its activity documents batched like the exploded ones; the
  old entries are deleted and the new ones added inside one commit interval, so searchers never
  see the document missing (see ``ecr_pipelines.iati.solr`` for the commit policy);
* when the Solr stage fails on a document after deleting its old entries, ``solrize_end`` is
  cleared as well (its entries are gone), and documents with a previous Solr error are indexed
  after the others, so one poison document cannot hold up the queue;
* a document that flattens to no activity but was indexed before (``last_solrize_end``) is still
  selected, so its old entries are removed instead of lingering.

No Dagster import here: the assets in ``index_assets`` are thin wrappers.
"""

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.iati.flatten import FlattenError, iter_flattened_activities
from ecr_pipelines.iati.lake import LakeError, LakeParseError, LakeRecord, identifier_stem, iter_lake_records
from ecr_pipelines.iati.solr import SolrRejected, SolrUnavailable
from ecr_pipelines.iati.solr_docs import (
    COLLECTIONS,
    LakeRecordMissing,
    SolrDocError,
    activity_docs,
    exploded_docs,
)
from ecr_pipelines.iati.sync import clean_key, lake_prefix
from ecr_pipelines.resources.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
DEADLOCK = "40P01"
ERROR_TEXT_LIMIT = 2000

# -- work selection (the refresher's queries) --------------------------------------------------

FLATTEN_DUE = "downloaded IS NOT NULL AND clean_end IS NOT NULL AND flatten_start IS NULL"
LAKE_DUE = (
    "downloaded IS NOT NULL AND clean_end IS NOT NULL AND lakify_start IS NULL AND lakify_error IS NULL"
)
# The refresher also required a 2.x report and a non-empty flatten output; a document that now
# flattens to nothing is still taken when it was indexed before, to remove its old entries.
SOLR_DUE = """
    d.downloaded IS NOT NULL AND d.flatten_end IS NOT NULL AND d.lakify_end IS NOT NULL AND d.hash <> ''
    AND coalesce(v.report ->> 'iatiVersion', '') <> '' AND left(v.report ->> 'iatiVersion', 1) <> '1'
    AND (d.solrize_end IS NULL OR d.solrize_reindex)
    AND (d.flattened_activities <> CAST('[]' AS jsonb) OR d.last_solrize_end IS NOT NULL)
"""

FLATTEN_RECOVERY = """
    UPDATE iati.document SET flatten_start = NULL
    WHERE id IN (SELECT id FROM iati.document WHERE flatten_start IS NOT NULL AND flatten_end IS NULL
                 ORDER BY id FOR UPDATE)
    RETURNING flatten_api_error
"""
LAKE_RECOVERY = """
    UPDATE iati.document SET lakify_start = NULL
    WHERE id IN (SELECT id FROM iati.document
                 WHERE lakify_start IS NOT NULL AND lakify_end IS NULL AND lakify_error IS NULL
                 ORDER BY id FOR UPDATE)
    RETURNING NULL
"""

# Sending a document back to an earlier stage.
RESET_TO_DOWNLOAD = "downloaded = NULL, clean_start = NULL, clean_end = NULL, clean_error = NULL"
RESET_TO_CLEAN = "clean_start = NULL, clean_end = NULL, clean_error = NULL"
RESET_LAKE = "lakify_start = NULL, lakify_end = NULL, lakify_error = NULL"


class SolrTarget(Protocol):
    """What the Solr stage needs from Solr (``SolrResource`` and ``SolrClient`` both fit)."""

    def delete_document(self, document_id: str) -> None: ...

    def add(self, collection: str, docs: Sequence[dict[str, Any]]) -> int: ...

    def commit(self) -> None: ...


# -- reports -----------------------------------------------------------------------------------


@dataclass
class StageReport:
    """What one run of a stage did; the assets turn it into metadata."""

    stage: str
    recovered: int = 0  # interrupted documents made due again
    retried_errors: int = 0  # failed documents made due again (flatten)
    due: int = 0
    batches: int = 0
    processed: int = 0
    done: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # id, hash, message
    sent_back: list[tuple[str, str, str]] = field(default_factory=list)  # id, hash, why
    superseded: int = 0
    activities: int = 0
    skipped_no_identifier: int = 0
    blobs_written: int = 0
    blobs_deleted: int = 0
    solr_docs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLLECTIONS, 0))
    reindexed: int = 0
    commits: int = 0
    aborted: str | None = None
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"{self.stage}: {self.processed} of {self.due} due documents processed in {self.batches} batches, "
            f"{self.done} done, {len(self.errors)} errors, {len(self.sent_back)} sent back, "
            f"{self.superseded} superseded, {self.recovered} recovered; {self.activities} activities "
            f"in {self.seconds:.1f} s ({self.rate:.1f} rows/s)"
        )
        if self.stage == "solr":
            text += "; Solr documents " + ", ".join(f"{k} {v}" for k, v in self.solr_docs.items())
        if self.aborted:
            text += f"; stopped: {self.aborted}"
        return text


def _clip(message: str) -> str:
    return message if len(message) <= ERROR_TEXT_LIMIT else message[:ERROR_TEXT_LIMIT] + "…"


# -- shared plumbing ---------------------------------------------------------------------------


def _with_retry(engine: Engine, work: Callable[[Connection], Any], attempts: int = 3) -> Any:
    """Run ``work`` in a transaction, again on a deadlock (stages lock rows in id order, but the
    sync and the clean stage may not)."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) != DEADLOCK or attempt == attempts:
                raise
            log.warning(
                "deadlock in %s, retrying (%d of %d)", getattr(work, "__name__", "work"), attempt, attempts
            )
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _recover(engine: Engine, statement: str) -> list[Any]:
    return _with_retry(engine, lambda conn: [row[0] for row in conn.execute(sa.text(statement)).all()])


def _due(engine: Engine, sql: str, limit: int | None) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(sql + (" LIMIT :limit" if limit else "")), {"limit": limit}).all()
    return [(row[0], row[1]) for row in rows]


def _claim(
    engine: Engine, set_clause: str, due: str, batch: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Mark a batch started; returns the documents still due (in batch order), with their hash now."""
    ids = [doc_id for doc_id, _ in batch]
    rows = _with_retry(
        engine,
        lambda conn: conn.execute(
            sa.text(
                f"UPDATE iati.document SET {set_clause} WHERE id = ANY(:ids) AND {due} RETURNING id, hash"
            ),
            {"ids": ids},
        ).all(),
    )
    current = {row[0]: row[1] for row in rows}
    return [(doc_id, current[doc_id]) for doc_id in ids if doc_id in current]


def _update(engine: Engine, set_clause: str, doc_id: str, doc_hash: str, **params: Any) -> bool:
    """One guarded write; False when the document changed (or vanished) in the meantime."""
    sql = f"UPDATE iati.document SET {set_clause} WHERE id = :id AND hash = :hash"
    count = _with_retry(
        engine, lambda conn: conn.execute(sa.text(sql), {"id": doc_id, "hash": doc_hash, **params}).rowcount
    )
    return bool(count)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _log_batch(
    progress: Progress, report: StageReport, number: int, total: int, size: int, started: float
) -> None:
    elapsed = time.perf_counter() - started
    rate = report.processed / elapsed if elapsed > 0 else 0.0
    progress(
        f"{report.stage}: batch {number} of {total} ({size} documents) done; {report.processed} of "
        f"{report.due} processed, {len(report.errors)} errors, {rate:.1f} rows/s"
    )


# -- flatten -----------------------------------------------------------------------------------


def _copy_escape(text: str) -> str:
    # COPY's text format treats a backslash as an escape; json.dumps (ensure_ascii) never writes
    # raw newlines, tabs or carriage returns, so backslashes are all that needs escaping.
    return text.replace("\\", "\\\\")


def _flatten_to_file(store: BlobStore, doc_hash: str, out: Any) -> int:
    """Stream the clean file's activities as one JSON array line into ``out``; returns the count."""
    count = 0
    with store.open(clean_key(doc_hash)) as source:
        out.write("[")
        for activity in iter_flattened_activities(source):
            if count:
                out.write(", ")
            # The refresher stored json.dumps(list): default separators, ASCII escapes.
            out.write(_copy_escape(json.dumps(activity)))
            count += 1
        out.write("]\n")
    return count


def _store_flattened(engine: Engine, doc_id: str, doc_hash: str, path: str) -> bool:
    def work(conn: Connection) -> int:
        conn.exec_driver_sql("CREATE TEMP TABLE _iati_flat (data jsonb) ON COMMIT DROP")
        cursor = conn.connection.cursor()
        try:
            with open(path, encoding="ascii") as fh:
                cursor.copy_expert("COPY _iati_flat (data) FROM STDIN", fh)
        finally:
            cursor.close()
        return conn.execute(
            sa.text(
                "UPDATE iati.document SET flatten_end = now(), flatten_api_error = NULL, "
                "flattened_activities = (SELECT data FROM _iati_flat) WHERE id = :id AND hash = :hash"
            ),
            {"id": doc_id, "hash": doc_hash},
        ).rowcount

    return bool(_with_retry(engine, work))


def flatten_document(
    engine: Engine, store: BlobStore, doc_id: str, doc_hash: str, report: StageReport
) -> None:
    """Flatten one claimed document into ``flattened_activities``; failures go to its row."""
    fd, path = tempfile.mkstemp(prefix="iati-flat-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            count = _flatten_to_file(store, doc_hash, out)
        stored = _store_flattened(engine, doc_id, doc_hash, path)
    except BlobNotFound:
        if _update(engine, f"{RESET_TO_DOWNLOAD}, flatten_start = NULL", doc_id, doc_hash):
            report.sent_back.append((doc_id, doc_hash, "clean file missing: downloaded and cleaned again"))
        else:
            report.superseded += 1
        return
    except Exception as exc:  # FlattenError, a jsonb limit, a storage error: the document's row says so
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FlattenError) else str(exc)
        log.warning("flatten failed for %s: %s", doc_id, message)
        if _update(engine, "flatten_api_error = 1", doc_id, doc_hash):
            report.errors.append((doc_id, doc_hash, _clip(message)))
        else:
            report.superseded += 1
        return
    finally:
        if os.path.exists(path):
            os.unlink(path)
    if stored:
        report.done += 1
        report.activities += count
    else:
        report.superseded += 1


def run_flatten(
    engine: Engine,
    store: BlobStore,
    *,
    batch_size: int = 50,
    limit: int | None = None,
    progress: Progress = log.info,
) -> StageReport:
    """The flatten stage: recovery, selection, then every due document in batches."""
    started = time.perf_counter()
    report = StageReport("flatten")
    recovered = _recover(engine, FLATTEN_RECOVERY)
    report.retried_errors = sum(1 for error in recovered if error is not None)
    report.recovered = len(recovered) - report.retried_errors
    due = _due(
        engine, f"SELECT id, hash FROM iati.document WHERE {FLATTEN_DUE} ORDER BY downloaded, id", limit
    )
    report.due = len(due)
    batches = list(_chunks(due, batch_size))
    for number, batch in enumerate(batches, start=1):
        claimed = _claim(engine, "flatten_start = now(), flatten_api_error = NULL", FLATTEN_DUE, batch)
        report.superseded += len(batch) - len(claimed)
        for doc_id, doc_hash in claimed:
            flatten_document(engine, store, doc_id, doc_hash, report)
            report.processed += 1
        report.batches += 1
        _log_batch(progress, report, number, len(batches), len(batch), started)
    report.seconds = time.perf_counter() - started
    return report


# -- activity lake -----------------------------------------------------------------------------


class _BoundedWriter:
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
            return self.store.put_bytes(key, data, content_type)
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


def _write_lake(store: BlobStore, path: str, doc_id: str, workers: int) -> tuple[int, int, int]:
    """Write one document's lake from its clean file; returns (records, skipped, blobs deleted)."""
    prefix = lake_prefix(doc_id)
    deleted = store.delete_prefix(prefix)  # a rebuilt lake holds no record of an older version
    records = iter_lake_records(path)
    writer = _BoundedWriter(store, workers)
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
    engine: Engine, store: BlobStore, doc_id: str, doc_hash: str, report: StageReport, *, workers: int = 8
) -> None:
    """Split one claimed document into the lake; failures go to its row."""
    fd, path = tempfile.mkstemp(prefix="iati-lake-", suffix=".xml")
    os.close(fd)
    try:
        # The strict parser reads the file twice (root check, then records): a local copy.
        store.download_to(clean_key(doc_hash), path)
        records, skipped, deleted = _write_lake(store, path, doc_id, workers)
    except BlobNotFound:
        if _update(engine, f"{RESET_TO_DOWNLOAD}, {RESET_LAKE}", doc_id, doc_hash):
            report.sent_back.append((doc_id, doc_hash, "clean file missing: downloaded and cleaned again"))
        else:
            report.superseded += 1
        return
    except LakeParseError as exc:
        # The clean file does not parse strictly: clean it again from the source (refresher rule).
        log.warning("lake: %s cannot be parsed, sent back to clean: %s", doc_id, exc)
        if _update(engine, f"{RESET_TO_CLEAN}, {RESET_LAKE}", doc_id, doc_hash):
            report.sent_back.append((doc_id, doc_hash, _clip(f"clean file unreadable, cleaned again: {exc}")))
        else:
            report.superseded += 1
        return
    except LakeError as exc:
        if _update(engine, "lakify_error = :error", doc_id, doc_hash, error=_clip(str(exc))):
            report.errors.append((doc_id, doc_hash, _clip(str(exc))))
        else:
            report.superseded += 1
        return
    except Exception as exc:
        # Storage trouble: leave the row started, so the next run's recovery retries it.
        log.warning("lake: %s failed, retried next run: %s: %s", doc_id, type(exc).__name__, exc)
        report.errors.append((doc_id, doc_hash, _clip(f"{type(exc).__name__}: {exc} (retried next run)")))
        return
    finally:
        os.unlink(path)
    report.activities += records
    report.skipped_no_identifier += skipped
    report.blobs_written += 2 * records
    report.blobs_deleted += deleted
    if _update(engine, "lakify_end = now(), lakify_error = NULL", doc_id, doc_hash):
        report.done += 1
    else:
        report.superseded += 1


def run_lake(
    engine: Engine,
    store: BlobStore,
    *,
    batch_size: int = 50,
    limit: int | None = None,
    workers: int = 8,
    progress: Progress = log.info,
) -> StageReport:
    """The lake stage: recovery, selection, then every due document in batches."""
    started = time.perf_counter()
    report = StageReport("lake")
    report.recovered = len(_recover(engine, LAKE_RECOVERY))
    due = _due(engine, f"SELECT id, hash FROM iati.document WHERE {LAKE_DUE} ORDER BY downloaded, id", limit)
    report.due = len(due)
    batches = list(_chunks(due, batch_size))
    for number, batch in enumerate(batches, start=1):
        claimed = _claim(engine, "lakify_start = now()", LAKE_DUE, batch)
        report.superseded += len(batch) - len(claimed)
        for doc_id, doc_hash in claimed:
            lake_document(engine, store, doc_id, doc_hash, report, workers=workers)
            report.processed += 1
        report.batches += 1
        _log_batch(progress, report, number, len(batches), len(batch), started)
    report.seconds = time.perf_counter() - started
    return report


# -- Solr --------------------------------------------------------------------------------------


def _read_lake(
    store: BlobStore, doc_id: str, identifiers: dict[str, str], workers: int
) -> dict[str, LakeRecord]:
    """The lake records of the given stems (stem → identifier); missing ones are left out."""
    prefix = lake_prefix(doc_id)

    def read(stem: str) -> LakeRecord | None:
        try:
            xml = store.get_bytes(f"{prefix}{stem}.xml")
            json_text = store.get_bytes(f"{prefix}{stem}.json").decode("utf-8")
        except BlobNotFound:
            return None
        return LakeRecord(identifier=identifiers[stem], stem=stem, xml=xml, json_text=json_text)

    stems = list(identifiers)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="iati-lake-read") as pool:
        found = pool.map(read, stems)
        return {stem: record for stem, record in zip(stems, found, strict=True) if record is not None}


@dataclass
class _SolrOutcome:
    doc_id: str
    doc_hash: str
    # done; rejected (Solr refused it; its entries are deleted); failed (Solr unavailable);
    # invalid (no Solr document can be built; Solr untouched); lake_missing; superseded
    kind: str
    message: str = ""
    reindex: bool = False


def _build_docs(
    store: BlobStore, doc_id: str, doc_hash: str, flattened: list[dict[str, Any]], workers: int
) -> dict[str, list[dict[str, Any]]]:
    identifiers: dict[str, str] = {}
    for activity in flattened:
        identifier = activity.get("iati_identifier")
        if identifier and isinstance(identifier, str):
            identifiers[identifier_stem(identifier)] = identifier
    lake = _read_lake(store, doc_id, identifiers, workers)
    docs = {"activity": activity_docs(doc_id, flattened, document_hash=doc_hash, lake=lake.get)}
    for element in COLLECTIONS[1:]:
        docs[element] = exploded_docs(element, doc_id, flattened, document_hash=doc_hash)
    return docs


def solr_document(
    engine: Engine,
    store: BlobStore,
    solr: SolrTarget,
    doc_id: str,
    doc_hash: str,
    report: StageReport,
    *,
    workers: int = 8,
) -> _SolrOutcome:
    """Replace one document's entries in the three collections (not committed).

    Raises ``SolrUnavailable`` (after recording nothing) when Solr itself fails.
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT hash, flattened_activities, solrize_reindex FROM iati.document WHERE id = :id"),
            {"id": doc_id},
        ).one_or_none()
    if row is None or row[0] != doc_hash:
        return _SolrOutcome(doc_id, doc_hash, "superseded")
    flattened: list[dict[str, Any]] = row[1] or []
    reindex = bool(row[2])
    try:
        docs = _build_docs(store, doc_id, doc_hash, flattened, workers)
    except LakeRecordMissing as exc:
        return _SolrOutcome(doc_id, doc_hash, "lake_missing", str(exc), reindex)
    except SolrDocError as exc:
        return _SolrOutcome(doc_id, doc_hash, "invalid", str(exc), reindex)
    report.activities += len(docs["activity"])
    report.skipped_no_identifier += len(flattened) - len(docs["activity"])
    del flattened
    solr.delete_document(doc_id)
    added: dict[str, int] = {}
    try:
        for collection in COLLECTIONS:
            added[collection] = solr.add(collection, docs.pop(collection))
    except SolrRejected as exc:
        # What was added before the refused request would be a partial document: remove it all,
        # as the refresher did. Searchers keep seeing the old entries until the commit.
        solr.delete_document(doc_id)
        return _SolrOutcome(doc_id, doc_hash, "rejected", f"{exc.collection}: {exc}", reindex)
    for collection, count in added.items():
        report.solr_docs[collection] += count
    return _SolrOutcome(doc_id, doc_hash, "done", reindex=reindex)


def _record_solr_outcomes(engine: Engine, outcomes: Sequence[_SolrOutcome], report: StageReport) -> None:
    statements = {
        "done": (
            "solrize_end = now(), last_solrize_end = now(), solrize_reindex = false, solr_api_error = NULL"
        ),
        "rejected": "solrize_end = NULL, solr_api_error = :error",
        "failed": "solrize_end = NULL, solr_api_error = :error",
        "invalid": "solr_api_error = :error",
        "lake_missing": f"{RESET_LAKE}, solr_api_error = :error",
    }

    def work(conn: Connection) -> list[tuple[_SolrOutcome, int]]:
        written = []
        for outcome in outcomes:
            if outcome.kind == "superseded":
                written.append((outcome, 0))
                continue
            count = conn.execute(
                sa.text(
                    f"UPDATE iati.document SET {statements[outcome.kind]} WHERE id = :id AND hash = :hash"
                ),
                {"id": outcome.doc_id, "hash": outcome.doc_hash, "error": _clip(outcome.message)},
            ).rowcount
            written.append((outcome, count))
        return written

    for outcome, count in _with_retry(engine, work):
        if not count:
            report.superseded += 1
        elif outcome.kind == "done":
            report.done += 1
            report.reindexed += int(outcome.reindex)
        elif outcome.kind == "lake_missing":
            report.sent_back.append(
                (outcome.doc_id, outcome.doc_hash, _clip(f"lake rebuilt: {outcome.message}"))
            )
        else:
            report.errors.append((outcome.doc_id, outcome.doc_hash, _clip(outcome.message)))


def run_solr(
    engine: Engine,
    store: BlobStore,
    solr: SolrTarget,
    *,
    batch_size: int = 50,
    limit: int | None = None,
    reindex_all: bool = False,
    workers: int = 8,
    progress: Progress = log.info,
) -> StageReport:
    """The Solr stage: one commit per batch, then the batch's rows are marked (see module docs).

    Stops at the first ``SolrUnavailable`` (``report.aborted``): what the current batch had done
    is committed if Solr still takes a commit, and the documents not recorded stay due.
    """
    started = time.perf_counter()
    report = StageReport("solr")
    if reindex_all:
        with engine.begin() as conn:
            count = conn.execute(
                sa.text("UPDATE iati.document SET solrize_reindex = true WHERE solrize_end IS NOT NULL")
            ).rowcount
        progress(f"solr: re-index requested, {count} indexed documents flagged")
    with engine.connect() as conn:
        report.recovered = int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM iati.document WHERE solrize_start IS NOT NULL "
                    "AND (solrize_end IS NULL OR solrize_start > solrize_end) AND solr_api_error IS NULL"
                )
            ).scalar_one()
        )
    due_sql = (
        f"SELECT d.id, d.hash FROM iati.document d JOIN iati.validation v ON v.id = d.validation "
        f"WHERE {SOLR_DUE} ORDER BY d.solr_api_error IS NOT NULL, d.downloaded, d.id"
    )
    due = _due(engine, due_sql, limit)
    report.due = len(due)
    batches = list(_chunks(due, batch_size))
    for number, batch in enumerate(batches, start=1):
        claimed = _claim(engine, "solrize_start = now()", "true", batch)
        report.superseded += len(batch) - len(claimed)
        outcomes: list[_SolrOutcome] = []
        for doc_id, doc_hash in claimed:
            try:
                outcomes.append(solr_document(engine, store, solr, doc_id, doc_hash, report, workers=workers))
            except SolrUnavailable as exc:
                # Its old entries may be deleted already: it is not indexed until it is redone.
                report.aborted = f"{doc_id}: {exc}"
                outcomes.append(_SolrOutcome(doc_id, doc_hash, "failed", f"Solr unavailable: {exc}"))
                break
            report.processed += 1
        try:
            solr.commit()
            report.commits += 1
        except SolrUnavailable as exc:
            report.aborted = report.aborted or f"commit failed: {exc}"
            # Nothing of this batch is known to be visible: no document may be marked indexed.
            outcomes = [outcome for outcome in outcomes if outcome.kind != "done"]
        _record_solr_outcomes(engine, outcomes, report)
        report.batches += 1
        _log_batch(progress, report, number, len(batches), len(batch), started)
        if report.aborted:
            break
    report.seconds = time.perf_counter() - started
    return report
