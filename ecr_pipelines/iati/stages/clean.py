"""The clean stage: the clean copy of each validated activities file (no Dagster).

``copy_valid`` / ``clean_invalid`` of the refresher: a valid 2.x activities file is copied to
``iati/clean/<hash>.xml`` as is; an invalid one with a meta list is rebuilt with its valid
activities only (``ecr_pipelines.iati.clean.clean_document``), or gets ``clean_error`` "Could not
parse" / "No valid activities". Organisation files, 1.x and unsupported versions are never
selected: they go no further. Rows with a ``clean_error`` are retried only when their report
changes or with ``retry_errors`` (the refresher retried them every minute, forever). A file that
must be transcoded to be read as XML (see ``documents.needs_transcoding``) gets its UTF-8 text as
its clean copy.

A rebuilt (or copied) document is written to a scratch file and uploaded from there, so a 500 MB
document costs no more memory than a small one. The copying and rebuilding run in worker
processes (``IATI_PROCESSES``, ``ecr_pipelines.lib.workers``) when the due documents weigh enough;
the reports are read, the claims held and the outcomes recorded by the run itself.
"""

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.iati.blobkeys import clean_key, source_key
from ecr_pipelines.iati.clean import COULD_NOT_PARSE, clean_document
from ecr_pipelines.iati.stages.documents import (
    HEAD_BYTES,
    MESSAGE_CHARS,
    document_workers,
    fetch_source,
    needs_transcoding,
)
from ecr_pipelines.iati.validate import ACTIVITIES, SUPPORTED_VERSIONS
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, run_stage
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore
from ecr_pipelines.lib.scratch import scratch_dir
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.lib.workers import ItemWorkers, StageResources, WorkerFailure

log = logging.getLogger(__name__)

BATCH_SIZE = 50
OUTPUT_BUFFER = 1024 * 1024

# Selected for cleaning: a linked report of a supported 2.x activities file, valid (copied) or
# invalid with its per-activity meta list (rebuilt).
CLEANABLE = (
    "v.report->>'fileType' = '" + ACTIVITIES + "' AND v.report->>'iatiVersion' = ANY(:versions) "
    "AND (v.valid OR v.report->'" + ACTIVITIES + "' IS NOT NULL)"
)


@dataclass(frozen=True)
class DueForClean:
    id: str
    hash: str
    encoding: str | None
    valid: bool


def not_cleanable_count(sql: Sql) -> int:
    """Documents whose report stops them before the clean stage (organisation files, 1.x, ...)."""
    return int(
        sql.scalar(
            f"""
            SELECT count(*) FROM iati.document d JOIN iati.validation v ON v.id = d.validation
            WHERE d.downloaded IS NOT NULL AND d.hash <> '' AND NOT ({CLEANABLE})
            """,
            {"versions": list(SUPPORTED_VERSIONS)},
        )
    )


def clean_reports(sql: Sql, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The parts of each linked report the rebuild needs (the error list can be large)."""
    if not ids:
        return {}
    rows = sql.all(
        f"""
        SELECT d.id, jsonb_build_object('valid', v.report->'valid', 'fileType', v.report->'fileType',
               'iatiVersion', v.report->'iatiVersion', '{ACTIVITIES}', v.report->'{ACTIVITIES}')
        FROM iati.document d JOIN iati.validation v ON v.id = d.validation WHERE d.id = ANY(:ids)
        """,
        {"ids": list(ids)},
    )
    return {r[0]: r[1] for r in rows}


@dataclass
class CleanOutcome:
    doc: DueForClean
    kind: str  # copied | rebuilt | error | missing_source | unexpected
    kept: int = 0
    dropped: int = 0
    error: str | None = None  # clean_error to store
    message: str = ""

    @property
    def is_error(self) -> bool:
        return self.kind in ("error", "missing_source", "unexpected")


def _source_head(store: BlobStore, key: str) -> bytes:
    with store.open(key) as fh:
        return fh.read(HEAD_BYTES)


def clean_one(
    store: BlobStore, doc: DueForClean, report: Mapping[str, Any] | None, folder: Path
) -> CleanOutcome:
    """Copy or rebuild one document into ``iati/clean/<hash>.xml``; never raises."""
    source, target = source_key(doc.hash), clean_key(doc.hash)
    try:
        if doc.valid and not needs_transcoding(_source_head(store, source), doc.encoding):
            store.copy(source, target)  # server-side on S3; bytes unchanged
            return CleanOutcome(doc, "copied")
        path = fetch_source(store, doc.hash, doc.encoding, folder)
        if doc.valid:
            store.put_file(target, path, "application/xml")
            return CleanOutcome(doc, "copied", message="transcoded to UTF-8")
        if report is None:
            return CleanOutcome(doc, "unexpected", message="report vanished while cleaning")
        output = folder / "clean.xml"
        try:
            with open(output, "wb", buffering=OUTPUT_BUFFER) as out:
                result = clean_document(path, report, out)
        except OSError:
            raise  # the scratch disk, not the document: left due below
        except Exception as exc:  # clean_document only raises for a report it cannot use
            return CleanOutcome(doc, "error", error=COULD_NOT_PARSE, message=f"{type(exc).__name__}: {exc}")
        if result.action == "rebuilt":
            store.put_file(target, output, "application/xml")
            return CleanOutcome(doc, "rebuilt", kept=result.kept, dropped=result.dropped)
        if result.action == "copy":
            store.put_file(target, output, "application/xml")
            return CleanOutcome(doc, "copied", kept=result.kept)
        error = result.error or f"Not cleaned: {result.reason}"
        return CleanOutcome(
            doc, "error", dropped=result.dropped, error=error, message=result.reason[:MESSAGE_CHARS]
        )
    except BlobNotFound:
        return CleanOutcome(
            doc, "missing_source", message=f"source blob {source} missing: queued for download again"
        )
    except Exception as exc:  # the blob store or the scratch disk, not the document
        return CleanOutcome(
            doc, "unexpected", message=f"storage: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
        )
    finally:
        for leftover in folder.iterdir():
            leftover.unlink(missing_ok=True)


def record_clean_outcomes(sql: Sql, outcomes: Sequence[CleanOutcome]) -> None:
    """Write a batch back (hash-guarded, like the validate stage)."""
    sql.values(
        """
        UPDATE iati.document d SET clean_end = now(), clean_error = NULL
        FROM (VALUES %s) AS v (id, hash) WHERE d.id = v.id AND d.hash = v.hash AND d.clean_start IS NOT NULL
        """,
        [(o.doc.id, o.doc.hash) for o in outcomes if o.kind in ("copied", "rebuilt")],
    )
    sql.values(
        """
        UPDATE iati.document d SET clean_error = v.error
        FROM (VALUES %s) AS v (id, hash, error) WHERE d.id = v.id AND d.hash = v.hash
        """,
        [(o.doc.id, o.doc.hash, o.error) for o in outcomes if o.kind == "error"],
    )
    sql.values(
        """
        UPDATE iati.document d SET downloaded = NULL, clean_start = NULL, clean_error = NULL
        FROM (VALUES %s) AS v (id, hash) WHERE d.id = v.id AND d.hash = v.hash
        """,
        [(o.doc.id, o.doc.hash) for o in outcomes if o.kind == "missing_source"],
    )
    sql.values(
        """
        UPDATE iati.document d SET clean_start = NULL
        FROM (VALUES %s) AS v (id, hash) WHERE d.id = v.id AND d.hash = v.hash AND d.clean_end IS NULL
        """,
        [(o.doc.id, o.doc.hash) for o in outcomes if o.kind == "unexpected"],
    )


STAGE = Stage(
    name="iati.clean",
    table="iati.document",
    alias="d",
    joins="JOIN iati.validation v ON v.id = d.validation",
    due=(
        "d.downloaded IS NOT NULL AND d.hash <> '' AND d.clean_end IS NULL "
        f"AND (d.clean_error IS NULL OR :retry) AND {CLEANABLE}"
    ),
    columns="d.id, d.hash, d.download_encoding, v.valid",
    order="d.downloaded, d.id",
    on_claim="clean_start = now()",
    params={"versions": list(SUPPORTED_VERSIONS), "retry": False},
)


def _outcome(result: CleanOutcome) -> Outcome:
    error = None
    if result.kind == "error":
        error = "could_not_parse" if result.error == COULD_NOT_PARSE else "no_valid_activities"
    elif result.kind == "unexpected":
        error = "storage"
    kind = {"missing_source": "sent_back", "unexpected": "left_due"}.get(result.kind, result.kind)
    detail = (
        f"{result.error}: {result.message}"
        if result.error and result.message
        else result.error or result.message
    )
    counts = {"activities_kept": result.kept, "activities_dropped": result.dropped}
    return Outcome(result.doc.id, kind, error=error, message=detail or "", data=result, counts=counts)


def clean_item(resources: StageResources, item: tuple[DueForClean, Mapping[str, Any] | None]) -> Outcome:
    """One document (and its report) cleaned: in a worker process or in the run's own."""
    doc, report = item
    with scratch_dir("iati-clean-") as folder:
        return _outcome(clean_one(resources.store, doc, report, folder))


def _failed(item: tuple[DueForClean, Mapping[str, Any] | None], failure: WorkerFailure) -> Outcome:
    # Recorded as "unexpected": clean_start is cleared and the document stays due.
    outcome = _outcome(CleanOutcome(item[0], "unexpected", message=failure.message[:MESSAGE_CHARS]))
    outcome.error = failure.error
    return outcome


def _process(engine: Engine, workers: ItemWorkers):
    def process(rows: Sequence[sa.Row]) -> list[Outcome]:
        docs = [DueForClean(*row) for row in rows]
        with engine.connect() as conn:
            reports = clean_reports(Sql(conn), [d.id for d in docs if not d.valid])
        return workers.map([(doc, reports.get(doc.id)) for doc in docs])

    return process


def clean_due(
    engine: Engine,
    store: BlobStore,
    *,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
    retry_errors: bool = False,
    processes: int | None = None,
    run_id: str = "",
    progress: Progress = log.info,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """Every due document in batches (claim, clean, record) on the batch-stage runner.

    ``processes``: worker processes for the copies and rebuilds (default ``IATI_PROCESSES``);
    ``committed`` is called with each batch's outcomes once they are recorded.
    """
    workers = document_workers(clean_item, engine, store, STAGE, processes, failed=_failed)
    return run_stage(
        engine,
        STAGE,
        _process(engine, workers),
        lambda conn, outcomes: record_clean_outcomes(Sql(conn), [o.data for o in outcomes]),
        params={"retry": retry_errors},
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
        committed=committed,
        workers=workers,
    )


def clean_state(sql: Sql) -> dict[str, int]:
    row = sql.all(
        """
        SELECT count(*) FILTER (WHERE clean_end IS NOT NULL),
               count(*) FILTER (WHERE clean_end IS NULL AND clean_error IS NOT NULL)
        FROM iati.document
        """
    )[0]
    return {"clean_total": int(row[0]), "clean_error_total": int(row[1])}


def recent_clean_documents(sql: Sql, sample: int) -> Iterator[tuple[str, str]]:
    rows = sql.all(
        "SELECT id, hash FROM iati.document WHERE clean_end IS NOT NULL ORDER BY clean_end DESC, id LIMIT :n",
        {"n": sample},
    )
    for row in rows:
        yield row[0], row[1]
