"""The flatten stage: each cleaned document's activities into ``flattened_activities`` (no Dagster).

Due (the refresher's selection, without its ``flatten_start`` test: a live claim says "in flight"
now): downloaded, cleaned, not flattened, no error (errors too with ``retry_errors``, which the
retry schedule sets; the refresher retried them every loop). The output goes to Postgres
through ``COPY`` from a temporary file, so the stage's memory does not grow with the file (the
jsonb value itself is limited to 256 MB by Postgres; a larger document fails with
``flatten_api_error = 1`` as it did before). A document whose clean file is missing goes back to
download and clean.

Each document is flattened and stored by a worker process (``IATI_PROCESSES``,
``ecr_pipelines.lib.workers``) when the due documents weigh enough, each worker with its own
database connection; the run holds the claims and counts the outcomes.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.iati.blobkeys import clean_key
from ecr_pipelines.iati.flatten import FlattenError, iter_flattened_activities
from ecr_pipelines.iati.stages.documents import RESET_TO_DOWNLOAD, document_workers, update_document
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, run_stage, with_retry
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore
from ecr_pipelines.lib.scratch import scratch_file
from ecr_pipelines.lib.workers import StageResources

log = logging.getLogger(__name__)

STAGE = Stage(
    name="iati.flatten",
    table="iati.document",
    alias="d",
    due=(
        "d.downloaded IS NOT NULL AND d.clean_end IS NOT NULL AND d.flatten_end IS NULL "
        "AND (d.flatten_api_error IS NULL OR :retry)"
    ),
    columns="d.id, d.hash",
    order="d.downloaded, d.id",
    on_claim="flatten_start = now()",
    params={"retry": False},
)


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

    return bool(with_retry(engine, work))


def flatten_document(engine: Engine, store: BlobStore, doc_id: str, doc_hash: str) -> Outcome:
    """Flatten one claimed document into ``flattened_activities``; failures go to its row."""
    with scratch_file("iati-flat-", ".json") as path:
        try:
            with open(path, "w", encoding="ascii") as out:
                count = _flatten_to_file(store, doc_hash, out)
            stored = _store_flattened(engine, doc_id, doc_hash, path)
        except BlobNotFound:
            if update_document(engine, f"{RESET_TO_DOWNLOAD}, flatten_start = NULL", doc_id, doc_hash):
                return Outcome(
                    doc_id, "sent_back", message="clean file missing: downloaded and cleaned again"
                )
            return Outcome(doc_id, "superseded")
        except Exception as exc:  # FlattenError, a jsonb limit, storage: the document's row says so
            message = str(exc) if isinstance(exc, FlattenError) else f"{type(exc).__name__}: {exc}"
            if update_document(engine, "flatten_api_error = 1", doc_id, doc_hash):
                return Outcome(doc_id, "error", error=type(exc).__name__, message=message)
            return Outcome(doc_id, "superseded")
    if not stored:
        return Outcome(doc_id, "superseded")
    return Outcome(doc_id, "done", counts={"activities": count})


def flatten_item(resources: StageResources, item: tuple[str, str]) -> Outcome:
    """One claimed document (id, hash): in a worker process or in the run's own."""
    doc_id, doc_hash = item
    return flatten_document(resources.engine, resources.store, doc_id, doc_hash)


def run_flatten(
    engine: Engine,
    store: BlobStore,
    *,
    batch_size: int = 50,
    limit: int | None = None,
    retry_errors: bool = False,
    processes: int | None = None,
    run_id: str = "",
    progress: Progress = log.info,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """The flatten stage over every due document (``ecr_pipelines.lib.batch.run_stage``).

    ``processes``: worker processes (default ``IATI_PROCESSES``); a document whose worker fails
    or dies is left due. ``committed`` is called with each batch's outcomes.
    """
    workers = document_workers(flatten_item, engine, store, STAGE, processes)
    return run_stage(
        engine,
        STAGE,
        workers.rows,
        lambda conn, outcomes: None,  # each document's result is written as it is flattened (COPY)
        params={"retry": retry_errors},
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
        committed=committed,
        workers=workers,
    )
