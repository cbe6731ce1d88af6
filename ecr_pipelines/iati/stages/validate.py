"""The validate stage: a validation report for each downloaded document (no Dagster).

The refresher's ``validate()``, per document, on the batch-stage runner. State lives in the
refresher's columns, so SQL written against the legacy database keeps working.

* due: ``downloaded IS NOT NULL AND download_error IS NULL AND hash <> '' AND (validation IS NULL
  OR regenerate_validation_report)``, re-validate requests first, then by ``downloaded``;
* a document whose ``file_schema_valid`` is unknown gets the schema-only check first
  (``validation_request``, ``file_schema_valid``; a failed call stores its status in
  ``validation_api_error``);
* a schema-invalid document is not fully validated while its publisher is black-flagged, nor
  within ``hold_hours`` of its download (time for the safety check to count it); such documents
  are *held* and leave the work list until the flag is cleared or the hold is over;
* the full check asks for the per-activity meta only for schema-invalid documents (only they
  are rebuilt by the clean stage); 400/413/422 answers are stored in ``validation_api_error`` and
  their report, if any, kept; a stored report is appended to ``iati.validation`` and linked from
  ``document.validation``, and ``regenerate_validation_report`` is reset;
* a missing source blob sets ``downloaded = NULL`` so the download stage fetches it again.

Departures from the refresher, both to avoid its retry storms: a 413 (file too large for the
validator) is not re-sent every run but only with ``retry_errors``; a transport failure (no answer
at all) leaves the document untouched and due, and several in a row stop the stage.

Files too large for the Validator API: by default the API back end validates them locally instead
(schema only, see ``validator_api``), so they get a report, are cleaned and indexed; such answers
are counted as ``validated_locally_too_large`` and the report's ``apiVersion`` says so. With
``IATI_VALIDATOR_TOO_LARGE=skip`` the 413 is stored without a report, as the refresher stored it.

Encodings: sources are validated as stored (lxml honours the BOM and the XML declaration; no
declaration means UTF-8). When the download stage detected a non-Unicode encoding in a file that
declares none, that file is transcoded to UTF-8 first (``documents.fetch_source``).

With the local validator the documents are validated by worker processes (``IATI_PROCESSES``,
``ecr_pipelines.lib.workers``) when the due documents weigh enough, each worker with its own
validator; the run holds the claims and stores the reports. The API validator waits on the
network, not the CPU: it stays in the run's own process.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.iati.stages.documents import MESSAGE_CHARS, document_workers, fetch_source, json_text
from ecr_pipelines.iati.validator_api import (
    EXPECTED_STATUSES,
    TOO_LARGE,
    LocalValidator,
    Validator,
    ValidatorAnswer,
)
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, run_stage
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore
from ecr_pipelines.lib.http import FetchError
from ecr_pipelines.lib.scratch import scratch_dir
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.lib.workers import ItemWorkers, StageResources, WorkerFailure

log = logging.getLogger(__name__)

BATCH_SIZE = 50
# An answer without a usable body (a 200 that is not a report) is stored as a bad-gateway status:
# the validator answered, but with nothing the stage can use.
UNUSABLE_ANSWER = 502
# Transport failures in a row before the stage gives up on the validator (the rest stays due).
MAX_CONSECUTIVE_FAILURES = 5
REFUSED_REPORT = "report could not be stored"


@dataclass(frozen=True)
class DueForValidation:
    id: str
    hash: str
    publisher: str | None
    file_schema_valid: bool | None
    regenerate: bool
    encoding: str | None
    recent: bool  # downloaded within the hold time
    flagged: bool  # publisher black-flagged


def _hold_seconds(hold_hours: float) -> float:
    return max(0.0, hold_hours) * 3600.0


# The legacy work-selection predicate (see module docstring), on ``d`` = iati.document.
VALIDATE_DUE = (
    "d.downloaded IS NOT NULL AND d.download_error IS NULL AND d.hash <> '' "
    "AND (d.validation IS NULL OR d.regenerate_validation_report)"
)
# Held: schema-invalid and (black-flagged publisher or downloaded within the hold).
HELD_BY_FLAG = "d.file_schema_valid IS FALSE AND p.black_flag IS NOT NULL"
HELD_RECENT = "d.file_schema_valid IS FALSE AND d.downloaded > now() - make_interval(secs => :hold)"


def select_validation_due(
    sql: Sql, hold_hours: float, retry_errors: bool = False, limit: int | None = None
) -> list[DueForValidation]:
    rows = sql.all(
        f"""
        SELECT d.id, d.hash, d.publisher, d.file_schema_valid, d.regenerate_validation_report,
               d.download_encoding, coalesce(d.downloaded > now() - make_interval(secs => :hold), false),
               p.black_flag IS NOT NULL
        FROM iati.document d LEFT JOIN iati.publisher p ON p.org_id = d.publisher
        WHERE {VALIDATE_DUE}
          AND NOT ({HELD_BY_FLAG}) AND NOT ({HELD_RECENT})
          AND (d.validation_api_error IS DISTINCT FROM {TOO_LARGE} OR :retry)
        ORDER BY d.regenerate_validation_report DESC, d.downloaded, d.id
        """
        + (" LIMIT :limit" if limit else ""),
        {"hold": _hold_seconds(hold_hours), "retry": retry_errors, "limit": limit},
    )
    return [DueForValidation(*row) for row in rows]


@dataclass(frozen=True)
class ValidationState:
    """Where every downloaded, hash-bearing document stands (for metadata and checks)."""

    candidates: int
    with_report: int
    api_error: int
    held_by_flag: int
    held_recent: int
    unaccounted: int


def validation_state(sql: Sql, hold_hours: float) -> ValidationState:
    row = sql.all(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE d.validation IS NOT NULL),
               count(*) FILTER (WHERE d.validation IS NULL AND d.validation_api_error IS NOT NULL),
               count(*) FILTER (WHERE d.validation IS NULL AND d.validation_api_error IS NULL AND {HELD_BY_FLAG}),
               count(*) FILTER (WHERE d.validation IS NULL AND d.validation_api_error IS NULL
                                  AND NOT coalesce({HELD_BY_FLAG}, false) AND {HELD_RECENT}),
               count(*) FILTER (WHERE d.validation IS NULL AND d.validation_api_error IS NULL
                                  AND NOT coalesce({HELD_BY_FLAG}, false) AND NOT coalesce({HELD_RECENT}, false))
        FROM iati.document d LEFT JOIN iati.publisher p ON p.org_id = d.publisher
        WHERE d.downloaded IS NOT NULL AND d.download_error IS NULL AND d.hash <> ''
        """,
        {"hold": _hold_seconds(hold_hours)},
    )[0]
    return ValidationState(*(int(v) for v in row))


def unaccounted_documents_query() -> str:
    """Downloaded, hash-bearing documents with neither a report, an API error nor a hold."""
    return f"""
        SELECT d.id, d.hash, d.publisher, d.downloaded, d.file_schema_valid
        FROM iati.document d LEFT JOIN iati.publisher p ON p.org_id = d.publisher
        WHERE d.downloaded IS NOT NULL AND d.download_error IS NULL AND d.hash <> ''
          AND d.validation IS NULL AND d.validation_api_error IS NULL
          AND NOT coalesce({HELD_BY_FLAG}, false) AND NOT coalesce({HELD_RECENT}, false)
        ORDER BY d.downloaded, d.id
    """


@dataclass
class ValidationOutcome:
    """What validating one document gave, ready to be written back."""

    doc: DueForValidation
    kind: str  # report | held_black_flag | held_recent | api_error | missing_source | unexpected
    requested: bool = False
    schema_valid: bool | None = None
    status: int | None = None  # validation_api_error to store (None: the last call succeeded)
    report: dict[str, Any] | None = None
    message: str = ""
    fallback: str = ""  # why the local validator answered instead of the API ("" if it did not)

    @property
    def is_error(self) -> bool:
        return self.kind in ("api_error", "missing_source", "unexpected")


def _answer_message(answer: ValidatorAnswer, what: str) -> str:
    detail = answer.message or f"HTTP {answer.status}"
    return f"{what}: {detail}"[:MESSAGE_CHARS]


def validate_document(doc: DueForValidation, path: Path, validator: Validator) -> ValidationOutcome:
    """The refresher's per-document decision, on a local copy of the source.

    Raises ``FetchError`` when the API cannot be reached (the caller leaves the document due).
    """
    schema_valid = doc.file_schema_valid
    requested = False
    if schema_valid is None:
        answer = validator.schema_check(path)
        requested = True
        if not answer.ok or answer.report is None:
            status = answer.status if not answer.ok else UNUSABLE_ANSWER
            return ValidationOutcome(
                doc, "api_error", True, None, status, message=_answer_message(answer, "schema check")
            )
        schema_valid = bool(answer.report["valid"])
    if schema_valid is False and doc.flagged:
        return ValidationOutcome(doc, "held_black_flag", requested, schema_valid)
    if schema_valid is False and doc.recent:
        return ValidationOutcome(doc, "held_recent", requested, schema_valid)

    answer = validator.full_check(path, meta=not schema_valid)
    if answer.report is None or (not answer.ok and answer.status not in EXPECTED_STATUSES):
        status = UNUSABLE_ANSWER if answer.ok else answer.status
        return ValidationOutcome(
            doc, "api_error", True, schema_valid, status, message=_answer_message(answer, "full validation")
        )
    return ValidationOutcome(
        doc,
        "report",
        True,
        schema_valid,
        None if answer.ok else answer.status,
        report=answer.report,
        # Only a stored report made locally counts as a fallback (the schema check may have been
        # answered locally and the full check by the API).
        message=answer.message if answer.fallback else "",
        fallback=answer.fallback,
    )


def store_validation_outcomes(sql: Sql, outcomes: Sequence[ValidationOutcome]) -> set[str]:
    """Write one batch back, set-based; returns the ids of the documents whose report was stored.

    Every statement is guarded by the hash: a document whose hash changed meanwhile (the sync
    reset it) is left alone and its report is not stored.
    """
    with_report = [o for o in outcomes if o.kind == "report" and o.report is not None]
    inserted = sql.values(
        """
        INSERT INTO iati.validation (document_id, document_hash, document_url, valid, report, publisher, publisher_name)
        SELECT d.id, d.hash, d.url, v.valid, v.report::jsonb, d.publisher, p.name
        FROM (VALUES %s) AS v (id, hash, valid, report)
        JOIN iati.document d ON d.id = v.id AND d.hash = v.hash
        LEFT JOIN iati.publisher p ON p.org_id = d.publisher
        RETURNING id, document_id
        """,
        [(o.doc.id, o.doc.hash, bool(o.report["valid"]), json_text(o.report)) for o in with_report],  # type: ignore[index]
        fetch=True,
        template="(%s, %s, %s::boolean, %s::text)",
        page_size=50,
    )
    report_ids = {doc_id: report_id for report_id, doc_id in inserted}
    # A new report invalidates an unfinished or failed clean (it was decided on the old report);
    # a finished clean is kept, so nothing already published downstream disappears.
    sql.values(
        """
        UPDATE iati.document d SET validation = v.report_id, validation_api_error = v.status,
            file_schema_valid = coalesce(v.schema_valid, d.file_schema_valid),
            validation_request = CASE WHEN v.requested THEN now() ELSE d.validation_request END,
            regenerate_validation_report = false,
            clean_start = CASE WHEN d.clean_end IS NULL THEN NULL ELSE d.clean_start END,
            clean_error = CASE WHEN d.clean_end IS NULL THEN NULL ELSE d.clean_error END
        FROM (VALUES %s) AS v (id, hash, report_id, status, schema_valid, requested)
        WHERE d.id = v.id AND d.hash = v.hash
        """,
        [
            (o.doc.id, o.doc.hash, report_ids[o.doc.id], o.status, o.schema_valid, o.requested)
            for o in with_report
            if o.doc.id in report_ids
        ],
        template="(%s, %s, %s::integer, %s::integer, %s::boolean, %s::boolean)",
    )
    # Held documents and API errors: the schema result and the status; the report link stays
    # (a failed re-validation keeps the previous report).
    sql.values(
        """
        UPDATE iati.document d SET validation_api_error = v.status,
            file_schema_valid = coalesce(v.schema_valid, d.file_schema_valid),
            validation_request = CASE WHEN v.requested THEN now() ELSE d.validation_request END
        FROM (VALUES %s) AS v (id, hash, status, schema_valid, requested)
        WHERE d.id = v.id AND d.hash = v.hash
        """,
        [
            (o.doc.id, o.doc.hash, o.status, o.schema_valid, o.requested)
            for o in outcomes
            if o.kind in ("api_error", "held_black_flag", "held_recent")
        ],
        template="(%s, %s, %s::integer, %s::boolean, %s::boolean)",
    )
    # The download stage fetches a document again once ``downloaded`` is NULL.
    sql.values(
        """
        UPDATE iati.document d SET downloaded = NULL
        FROM (VALUES %s) AS v (id, hash) WHERE d.id = v.id AND d.hash = v.hash
        """,
        [(o.doc.id, o.doc.hash) for o in outcomes if o.kind == "missing_source"],
    )
    return set(report_ids)


def _process_for_validation(
    doc: DueForValidation, store: BlobStore, validator: Validator, folder: Path
) -> ValidationOutcome:
    try:
        path = fetch_source(store, doc.hash, doc.encoding, folder)
    except BlobNotFound:
        message = f"source blob {source_key(doc.hash)} missing: queued for download again"
        return ValidationOutcome(doc, "missing_source", message=message)
    except Exception as exc:  # the blob store, not the document
        return ValidationOutcome(
            doc, "unexpected", message=f"blob store: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
        )
    try:
        return validate_document(doc, path, validator)
    except FetchError as exc:
        return ValidationOutcome(doc, "unexpected", message=f"validator unreachable: {exc}"[:MESSAGE_CHARS])
    except Exception as exc:  # a bug in a back end must not stop the batch
        return ValidationOutcome(
            doc, "unexpected", message=f"validator failed: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
        )
    finally:
        for leftover in folder.iterdir():
            leftover.unlink(missing_ok=True)


STAGE = Stage(
    name="iati.validate",
    table="iati.document",
    alias="d",
    joins="LEFT JOIN iati.publisher p ON p.org_id = d.publisher",
    due=(
        f"{VALIDATE_DUE} AND NOT coalesce({HELD_BY_FLAG}, false) AND NOT coalesce({HELD_RECENT}, false) "
        f"AND (d.validation_api_error IS DISTINCT FROM {TOO_LARGE} OR :retry)"
    ),
    columns=(
        "d.id, d.hash, d.publisher, d.file_schema_valid, d.regenerate_validation_report, d.download_encoding, "
        "coalesce(d.downloaded > now() - make_interval(secs => :hold), false), p.black_flag IS NOT NULL"
    ),
    order="d.regenerate_validation_report DESC, d.downloaded, d.id",
    params={"retry": False},  # and "hold": the safety check's hold, in seconds, from the settings
)


def _outcome(result: ValidationOutcome) -> Outcome:
    doc = result.doc
    if result.kind == "report":
        valid = bool(result.report and result.report.get("valid") is True)
        kind, error = ("valid" if valid else "invalid"), None
    elif result.kind == "api_error":
        kind, error = "api_error", f"validator_{result.status}"
    elif result.kind == "unexpected":
        kind, error = "left_due", "validator_unreachable" if "unreachable" in result.message else "storage"
    elif result.kind == "missing_source":
        kind, error = "sent_back", None
    else:
        kind, error = result.kind, None
    counts = {f"validation_api_error_{result.status}": 1} if result.status is not None else {}
    if result.fallback:
        counts["validated_locally_too_large"] = 1
    return Outcome(doc.id, kind, error=error, message=result.message, data=result, counts=counts)


def _until_stopped(results: Iterable[Outcome], consecutive: list[int]) -> list[Outcome]:
    """The outcomes up to the one that stops the stage: ``MAX_CONSECUTIVE_FAILURES`` documents in
    a row that failed for a reason not theirs (``consecutive`` carries the count across batches).
    The results are consumed lazily, so in this process the documents after that one are not
    even validated; from workers they were, but are dropped unrecorded and stay due."""
    outcomes: list[Outcome] = []
    for outcome in results:
        outcomes.append(outcome)
        result: ValidationOutcome = outcome.data
        consecutive[0] = consecutive[0] + 1 if result.kind == "unexpected" else 0
        if consecutive[0] >= MAX_CONSECUTIVE_FAILURES:
            outcome.stop = (
                f"{consecutive[0]} documents in a row failed for a reason not theirs: {result.message}"
            )
            break
    return outcomes


def _process_batch(store: BlobStore, validator: Validator):
    consecutive = [0]

    def process(rows: Sequence[sa.Row]) -> list[Outcome]:
        with scratch_dir("iati-validate-") as folder:
            results = (
                _outcome(_process_for_validation(DueForValidation(*row), store, validator, folder))
                for row in rows
            )
            return _until_stopped(results, consecutive)

    return process


def validate_item(resources: StageResources, doc: DueForValidation) -> Outcome:
    """One document validated by the local validator, in a worker process or in the run's own."""
    validator = resources.options["validator"]
    with scratch_dir("iati-validate-") as folder:
        return _outcome(_process_for_validation(doc, resources.store, validator, folder))


def _failed(doc: DueForValidation, failure: WorkerFailure) -> Outcome:
    # Stored as "unexpected": nothing is written and the document stays due.
    outcome = _outcome(ValidationOutcome(doc, "unexpected", message=failure.message[:MESSAGE_CHARS]))
    outcome.error = failure.error
    return outcome


def _process_in(workers: ItemWorkers):
    consecutive = [0]

    def process(rows: Sequence[sa.Row]) -> list[Outcome]:
        return _until_stopped(workers.map([DueForValidation(*row) for row in rows]), consecutive)

    return process


def _record(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    stored = store_validation_outcomes(Sql(conn), [o.data for o in outcomes])
    for outcome in outcomes:
        if outcome.data.kind == "report" and outcome.key not in stored:
            outcome.kind, outcome.error = "superseded", None


def _refused(outcome: Outcome, exc: BaseException) -> Outcome:
    result: ValidationOutcome = outcome.data
    message = f"{REFUSED_REPORT}: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
    refused = ValidationOutcome(
        result.doc, "api_error", result.requested, result.schema_valid, UNUSABLE_ANSWER, message=message
    )
    return _outcome(refused)


def validate_due(
    engine: Engine,
    store: BlobStore,
    validator: Validator,
    *,
    hold_hours: float,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
    retry_errors: bool = False,
    processes: int | None = None,
    run_id: str = "",
    progress: Progress = log.info,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """Validate every due document in batches, each batch written back in its own transaction.

    ``report.stopped`` says why the stage stopped early (the validator could not be reached
    ``MAX_CONSECUTIVE_FAILURES`` times in a row); what was done before is stored. ``processes``:
    worker processes for the local validator (default ``IATI_PROCESSES``; the API validator
    ignores it). ``committed`` is called with each batch's outcomes once they are stored.
    """
    workers = None
    process = _process_batch(store, validator)
    if isinstance(validator, LocalValidator):
        workers = document_workers(
            validate_item,
            engine,
            store,
            STAGE,
            processes,
            failed=_failed,
            # Pickled: each worker gets a copy of its own (it keeps the last report between calls).
            validator=validator,
        )
        process = _process_in(workers)
    return run_stage(
        engine,
        STAGE,
        process,
        _record,
        params={"hold": _hold_seconds(hold_hours), "retry": retry_errors},
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
        refused=_refused,
        committed=committed,
        workers=workers,
        # The API back end works in this process alone; the metadata says so all the same.
        report=StageReport(STAGE.name, processes=1) if workers is None else None,
    )
