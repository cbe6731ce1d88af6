"""The validate, safety-check and clean stages of the IATI pipeline on ``iati.document`` (no Dagster).

State lives in the refresher's columns, so SQL written against the legacy database keeps working.

Validate (the refresher's ``validate()``, per document, in batches):

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
at all) leaves the document untouched and due, and several in a row stop the run.

Safety check: a publisher with more than ``threshold`` schema-invalid documents downloaded within
``period_hours`` gets ``black_flag = now()`` (re-stamped while the condition holds, as before); a
flag is cleared only by hand (``unflag_publisher``). ``black_flag_notified`` records the mail.

Clean (``copy_valid`` / ``clean_invalid``): a valid 2.x activities file is copied to
``iati/clean/<hash>.xml`` as is; an invalid one with a meta list is rebuilt with its valid
activities only (``clean.clean_document``), or gets ``clean_error`` "Could not parse" / "No valid
activities". Organisation files, 1.x and unsupported versions are never selected: they go no
further. At the start, rows left in flight by a crash (``clean_start`` without ``clean_end`` or
error) are reset; rows with a ``clean_error`` are retried only when their report changes or with
``retry_errors`` (the refresher retried them every minute, forever).

Encodings: sources are validated and cleaned as stored (lxml honours the BOM and the XML
declaration; no declaration means UTF-8). When the download stage detected a non-Unicode encoding
in a file that declares none, that file is unreadable as XML as it stands, so it is transcoded to
UTF-8 first, and its clean copy is that UTF-8 text.
"""

import codecs
import json
import logging
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from ecr_pipelines.iati.clean import COULD_NOT_PARSE, clean_document
from ecr_pipelines.iati.sync import clean_key, source_key
from ecr_pipelines.iati.validate import ACTIVITIES, SUPPORTED_VERSIONS
from ecr_pipelines.iati.validator_api import EXPECTED_STATUSES, TOO_LARGE, Validator, ValidatorAnswer
from ecr_pipelines.resources.blobstore import BlobNotFound, BlobStore
from ecr_pipelines.resources.http import FetchError
from ecr_pipelines.resources.sql import Sql

log = logging.getLogger(__name__)

BATCH_SIZE = 50
# An answer without a usable body (a 200 that is not a report) is stored as a bad-gateway status:
# the validator answered, but with nothing the stage can use.
UNUSABLE_ANSWER = 502
# Transport failures in a row before the run gives up on the validator (the rest stays due).
MAX_CONSECUTIVE_FAILURES = 5
# Warnings per run in the log; the metadata has the full count and a preview.
MAX_LOGGED_PROBLEMS = 100
HEAD_BYTES = 4096
MESSAGE_CHARS = 500

Progress = Callable[[str], None]


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- encodings ------------------------------------------------------------------------------------
_UNICODE_CODECS = frozenset(
    {"utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "ascii"}
)
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
_DECLARES_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?\bencoding\s*=")


def needs_transcoding(head: bytes, encoding: str | None) -> bool:
    """Whether a file must be transcoded to UTF-8 before an XML parser can read it.

    ``encoding`` is what the download stage detected. Only a non-Unicode encoding in a file with
    neither a BOM nor an encoding declaration qualifies: XML parsers would read it as UTF-8.
    """
    if not encoding:
        return False
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    if name in _UNICODE_CODECS or head.startswith(_BOMS):
        return False
    return not _DECLARES_ENCODING.match(head)


def transcode_to_utf8(src: Path, dst: Path, encoding: str) -> None:
    """Stream ``src`` from ``encoding`` into UTF-8 at ``dst``; undecodable bytes become U+FFFD
    (the detection only saw the first bytes; the validator then judges what is left)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    with open(src, "rb") as source, open(dst, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(decoder.decode(chunk).encode("utf-8"))
        out.write(decoder.decode(b"", final=True).encode("utf-8"))


def fetch_source(store: BlobStore, doc_hash: str, encoding: str | None, folder: Path) -> Path:
    """Copy the source blob into ``folder`` (transcoded when needed) and return its path.

    Raises ``BlobNotFound`` when the blob is missing.
    """
    path = folder / f"{doc_hash}.xml"
    store.download_to(source_key(doc_hash), path)
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    if needs_transcoding(head, encoding):
        assert encoding is not None
        utf8 = folder / f"{doc_hash}.utf-8.xml"
        transcode_to_utf8(path, utf8, encoding)
        path.unlink()
        return utf8
    return path


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, Mapping):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _json_text(report: Mapping[str, Any]) -> str:
    text = json.dumps(report, ensure_ascii=False)
    # jsonb refuses U+0000 and UTF-8 refuses lone surrogates; an API report could quote either
    # from a broken file.
    if "\\u0000" in text:
        text = json.dumps(_without_nul(report), ensure_ascii=False)
    return text.encode("utf-8", "replace").decode("utf-8")


# -- validate -------------------------------------------------------------------------------------
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
        doc, "report", True, schema_valid, None if answer.ok else answer.status, report=answer.report
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
        [(o.doc.id, o.doc.hash, bool(o.report["valid"]), _json_text(o.report)) for o in with_report],  # type: ignore[index]
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


@dataclass
class ValidationRunReport:
    backend: str
    due: int = 0
    reports: int = 0
    valid: int = 0
    invalid: int = 0
    held_black_flag: int = 0
    held_recent: int = 0
    missing_source: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # validation_api_error stored, by status
    problems: list[tuple[str, str, str, int | None, str]] = field(
        default_factory=list
    )  # id, hash, kind, status, message
    unexpected: int = 0
    batches: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why the run stopped early, if it did

    @property
    def errors(self) -> int:
        return len(self.problems)

    def add(self, outcome: ValidationOutcome, stored: bool) -> None:
        if outcome.status is not None:
            self.statuses[outcome.status] += 1
        if outcome.kind == "report" and stored:
            self.reports += 1
            if outcome.report and outcome.report.get("valid") is True:
                self.valid += 1
            else:
                self.invalid += 1
        elif outcome.kind == "held_black_flag":
            self.held_black_flag += 1
        elif outcome.kind == "held_recent":
            self.held_recent += 1
        elif outcome.kind == "missing_source":
            self.missing_source += 1
        if outcome.kind == "unexpected":
            self.unexpected += 1
        if outcome.is_error:
            self.problems.append(
                (outcome.doc.id, outcome.doc.hash, outcome.kind, outcome.status, outcome.message)
            )

    def summary(self) -> str:
        return (
            f"{self.reports} reports stored ({self.valid} valid, {self.invalid} invalid), "
            f"{self.held_black_flag} held by a black flag, {self.held_recent} held for the safety check, "
            f"{self.missing_source} sources missing, {self.errors} errors, in {self.seconds:.1f} s"
        )


class ValidatorUnavailable(RuntimeError):
    """The validator could not be reached several times in a row; the run stopped."""

    def __init__(self, message: str, report: ValidationRunReport) -> None:
        super().__init__(message)
        self.report = report


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


# What the database (or the driver) says about a value it cannot take; a lost connection is
# something else and must stop the run.
_REFUSED_VALUE = (psycopg2.DataError, sa.exc.DataError, UnicodeError)
REFUSED_REPORT = "report could not be stored"


def _store_batch(engine: sa.Engine, outcomes: list[ValidationOutcome]) -> set[str]:
    """Store a batch; if the database refuses one report, store the others one by one and record
    the refused document as an unusable answer, so that one document never sinks its batch."""
    try:
        with engine.begin() as conn:
            return store_validation_outcomes(Sql(conn), outcomes)
    except _REFUSED_VALUE:
        log.warning("a report of this batch was refused by the database; storing documents one by one")
    stored: set[str] = set()
    for index, outcome in enumerate(outcomes):
        try:
            with engine.begin() as conn:
                stored |= store_validation_outcomes(Sql(conn), [outcome])
        except _REFUSED_VALUE as exc:
            message = f"{REFUSED_REPORT}: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
            refused = ValidationOutcome(
                outcome.doc,
                "api_error",
                outcome.requested,
                outcome.schema_valid,
                UNUSABLE_ANSWER,
                message=message,
            )
            with engine.begin() as conn:
                store_validation_outcomes(Sql(conn), [refused])
            outcomes[index] = refused
    return stored


def validate_due(
    engine: sa.Engine,
    store: BlobStore,
    validator: Validator,
    *,
    hold_hours: float,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
    retry_errors: bool = False,
    progress: Progress = log.info,
    warn: Progress = log.warning,
) -> ValidationRunReport:
    """Validate every due document in batches, each batch written back in its own transaction.

    Raises ``ValidatorUnavailable`` (after storing what was done) when the validator could not be
    reached ``MAX_CONSECUTIVE_FAILURES`` times in a row.
    """
    report = ValidationRunReport(validator.name)
    started = time.perf_counter()
    with engine.begin() as conn:
        due = select_validation_due(Sql(conn), hold_hours, retry_errors, limit)
    report.due = len(due)
    batches = _chunks(due, batch_size)
    progress(f"{len(due)} documents due for validation ({validator.name} validator), {len(batches)} batches")
    consecutive = 0
    logged = 0
    folder = Path(tempfile.mkdtemp(prefix="iati-validate-"))
    try:
        for number, batch in enumerate(batches, start=1):
            outcomes: list[ValidationOutcome] = []
            for doc in batch:
                outcome = _process_for_validation(doc, store, validator, folder)
                outcomes.append(outcome)
                consecutive = consecutive + 1 if outcome.kind == "unexpected" else 0
                if outcome.is_error and logged < MAX_LOGGED_PROBLEMS:
                    logged += 1
                    status = f" {outcome.status}" if outcome.status is not None else ""
                    warn(f"document {doc.id} ({doc.hash}): {outcome.kind}{status}: {outcome.message}")
                if consecutive >= MAX_CONSECUTIVE_FAILURES:
                    report.stopped = (
                        f"{consecutive} documents in a row failed for a reason not theirs: {outcome.message}"
                    )
                    break
            stored = _store_batch(engine, outcomes)
            for outcome in outcomes:
                if outcome.message.startswith(REFUSED_REPORT) and logged < MAX_LOGGED_PROBLEMS:
                    logged += 1
                    warn(f"document {outcome.doc.id} ({outcome.doc.hash}): {outcome.message}")
                report.add(outcome, stored=outcome.doc.id in stored)
            report.batches = number
            elapsed = time.perf_counter() - started
            done = sum(len(b) for b in batches[: number - 1]) + len(outcomes)
            progress(
                f"batch {number} of {len(batches)}: {done}/{len(due)} documents, {report.reports} reports, "
                f"{report.held_black_flag + report.held_recent} held, {report.errors} errors, "
                f"{done / elapsed if elapsed else 0:.1f} documents/s"
            )
            if report.stopped:
                break
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if logged < report.errors:
        warn(f"{report.errors - logged} more document errors not logged (see the metadata preview)")
    report.seconds = time.perf_counter() - started
    if report.stopped:
        raise ValidatorUnavailable(report.stopped, report)
    return report


# -- safety check ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlaggedPublisher:
    org_id: str
    name: str
    recent_invalid: int
    new: bool


def run_safety_check(sql: Sql, threshold: int, period_hours: float) -> list[FlaggedPublisher]:
    """Flag (or re-stamp) every publisher over the threshold; return them, new flags marked."""
    rows = sql.all(
        """
        WITH counts AS (
            SELECT publisher, count(*) AS invalid FROM iati.document
            WHERE file_schema_valid IS FALSE AND publisher IS NOT NULL
              AND downloaded > now() - make_interval(secs => :period)
            GROUP BY publisher HAVING count(*) > :threshold
        ), before AS (
            SELECT p.org_id, p.black_flag IS NULL AS new FROM iati.publisher p
            JOIN counts c ON c.publisher = p.org_id ORDER BY p.org_id FOR UPDATE OF p
        )
        UPDATE iati.publisher p SET black_flag = now(),
            black_flag_notified = CASE WHEN b.new THEN NULL ELSE p.black_flag_notified END
        FROM before b, counts c
        WHERE p.org_id = b.org_id AND c.publisher = p.org_id
        RETURNING p.org_id, p.name, c.invalid, b.new
        """,
        {"threshold": threshold, "period": max(0.0, period_hours) * 3600.0},
    )
    return sorted((FlaggedPublisher(r[0], r[1], int(r[2]), bool(r[3])) for r in rows), key=lambda f: f.org_id)


@dataclass(frozen=True)
class FlagNotice:
    org_id: str
    name: str
    title: str
    iati_id: str | None
    black_flag: datetime
    recent_invalid: int
    held_documents: int


def unnotified_flags(sql: Sql, period_hours: float) -> list[FlagNotice]:
    rows = sql.all(
        """
        SELECT p.org_id, p.name, p.title, p.iati_id, p.black_flag,
               count(d.id) FILTER (WHERE d.file_schema_valid IS FALSE
                                     AND d.downloaded > now() - make_interval(secs => :period)),
               count(d.id) FILTER (WHERE d.file_schema_valid IS FALSE AND d.validation IS NULL)
        FROM iati.publisher p LEFT JOIN iati.document d ON d.publisher = p.org_id
        WHERE p.black_flag IS NOT NULL AND p.black_flag_notified IS NULL
        GROUP BY p.org_id ORDER BY p.org_id
        """,
        {"period": max(0.0, period_hours) * 3600.0},
    )
    return [FlagNotice(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6])) for r in rows]


def mark_notified(sql: Sql, org_id: str) -> None:
    sql.exec("UPDATE iati.publisher SET black_flag_notified = true WHERE org_id = :o", {"o": org_id})


def flagged_publishers(sql: Sql) -> list[tuple[str, str, datetime, bool | None, int]]:
    """(org_id, name, black_flag, notified, held documents) of every flagged publisher."""
    rows = sql.all(
        """
        SELECT p.org_id, p.name, p.black_flag, p.black_flag_notified,
               count(d.id) FILTER (WHERE d.file_schema_valid IS FALSE AND d.validation IS NULL)
        FROM iati.publisher p LEFT JOIN iati.document d ON d.publisher = p.org_id
        WHERE p.black_flag IS NOT NULL GROUP BY p.org_id ORDER BY p.org_id
        """
    )
    return [(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]


def unflag_publisher(sql: Sql, publisher: str) -> tuple[str, str, datetime | None] | None:
    """Clear the flag of a publisher given by org_id or short name.

    Returns ``(org_id, name, previous black_flag)``, or None when no such publisher exists.
    """
    rows = sql.all(
        """
        WITH target AS (
            SELECT org_id, name, black_flag FROM iati.publisher
            WHERE org_id = :p OR (name = :p AND NOT EXISTS (SELECT 1 FROM iati.publisher WHERE org_id = :p))
            ORDER BY org_id FOR UPDATE
        )
        UPDATE iati.publisher p SET black_flag = NULL, black_flag_notified = NULL
        FROM target t WHERE p.org_id = t.org_id
        RETURNING t.org_id, t.name, t.black_flag
        """,
        {"p": publisher.strip()},
    )
    if len(rows) > 1:
        raise ValueError(f"{publisher!r} names {len(rows)} publishers; give the org_id")
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


# -- clean ----------------------------------------------------------------------------------------
# Selected for cleaning: a linked report of a supported 2.x activities file, valid (copied) or
# invalid with its per-activity meta list (rebuilt).
CLEANABLE = (
    "v.report->>'fileType' = '" + ACTIVITIES + "' AND v.report->>'iatiVersion' = ANY(:versions) "
    "AND (v.valid OR v.report->'" + ACTIVITIES + "' IS NOT NULL)"
)


def reset_in_flight_cleans(sql: Sql, retry_errors: bool = False) -> tuple[int, int]:
    """Crash recovery: unfinished cleans start again (and failed ones, with ``retry_errors``).

    Rows are locked in id order, as the refresher's fix for deadlocks between stage workers did.
    Returns ``(in flight, errors)`` reset.
    """
    rows = sql.all(
        """
        WITH target AS (
            SELECT id, clean_error IS NOT NULL AS errored FROM iati.document
            WHERE clean_end IS NULL AND clean_start IS NOT NULL AND (clean_error IS NULL OR :retry)
            ORDER BY id FOR UPDATE
        )
        UPDATE iati.document d SET clean_start = NULL, clean_error = NULL
        FROM target t WHERE d.id = t.id RETURNING t.errored
        """,
        {"retry": retry_errors},
    )
    errored = sum(1 for r in rows if r[0])
    return len(rows) - errored, errored


@dataclass(frozen=True)
class DueForClean:
    id: str
    hash: str
    encoding: str | None
    valid: bool


def select_clean_due(sql: Sql, limit: int | None = None) -> list[DueForClean]:
    rows = sql.all(
        f"""
        SELECT d.id, d.hash, d.download_encoding, v.valid
        FROM iati.document d JOIN iati.validation v ON v.id = d.validation
        WHERE d.downloaded IS NOT NULL AND d.hash <> '' AND d.clean_start IS NULL AND d.clean_end IS NULL
          AND {CLEANABLE}
        ORDER BY d.downloaded, d.id
        """
        + (" LIMIT :limit" if limit else ""),
        {"versions": list(SUPPORTED_VERSIONS), "limit": limit},
    )
    return [DueForClean(*row) for row in rows]


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


def claim_for_clean(sql: Sql, docs: Sequence[DueForClean]) -> set[str]:
    """Set ``clean_start`` on the batch; returns the ids claimed (not taken meanwhile)."""
    rows = sql.all(
        """
        UPDATE iati.document SET clean_start = now()
        WHERE id = ANY(:ids) AND clean_start IS NULL AND clean_end IS NULL RETURNING id
        """,
        {"ids": [d.id for d in docs]},
    )
    return {r[0] for r in rows}


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
        try:
            result = clean_document(path, report)
        except Exception as exc:  # clean_document only raises for a report it cannot use
            return CleanOutcome(doc, "error", error=COULD_NOT_PARSE, message=f"{type(exc).__name__}: {exc}")
        if result.action == "rebuilt" and result.data is not None:
            store.put_bytes(target, result.data, "application/xml")
            return CleanOutcome(doc, "rebuilt", kept=result.kept, dropped=result.dropped)
        if result.action == "copy" and result.data is not None:
            store.put_bytes(target, result.data, "application/xml")
            return CleanOutcome(doc, "copied", kept=result.kept)
        error = result.error or f"Not cleaned: {result.reason}"
        return CleanOutcome(
            doc, "error", dropped=result.dropped, error=error, message=result.reason[:MESSAGE_CHARS]
        )
    except BlobNotFound:
        return CleanOutcome(
            doc, "missing_source", message=f"source blob {source} missing: queued for download again"
        )
    except Exception as exc:  # the blob store, not the document
        return CleanOutcome(
            doc, "unexpected", message=f"blob store: {type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
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


@dataclass
class CleanRunReport:
    reset_in_flight: int = 0
    reset_errors: int = 0
    due: int = 0
    copied: int = 0
    rebuilt: int = 0
    kept: int = 0
    dropped: int = 0
    missing_source: int = 0
    unexpected: int = 0
    clean_errors: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # id, hash, kind, message
    batches: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return len(self.problems)

    def add(self, outcome: CleanOutcome) -> None:
        if outcome.kind == "copied":
            self.copied += 1
        elif outcome.kind == "rebuilt":
            self.rebuilt += 1
            self.kept += outcome.kept
            self.dropped += outcome.dropped
        elif outcome.kind == "error":
            self.clean_errors[outcome.error or ""] += 1
        elif outcome.kind == "missing_source":
            self.missing_source += 1
        elif outcome.kind == "unexpected":
            self.unexpected += 1
        if outcome.is_error:
            label = outcome.error or outcome.kind
            detail = f"{label}: {outcome.message}" if outcome.message else label
            self.problems.append((outcome.doc.id, outcome.doc.hash, outcome.kind, detail[:MESSAGE_CHARS]))

    def summary(self) -> str:
        return (
            f"{self.copied} copied, {self.rebuilt} rebuilt ({self.kept} activities kept, {self.dropped} dropped), "
            f"{sum(self.clean_errors.values())} clean errors, {self.missing_source} sources missing, "
            f"{self.unexpected} left due, in {self.seconds:.1f} s"
        )


def clean_due(
    engine: sa.Engine,
    store: BlobStore,
    *,
    batch_size: int = BATCH_SIZE,
    limit: int | None = None,
    retry_errors: bool = False,
    progress: Progress = log.info,
    warn: Progress = log.warning,
) -> CleanRunReport:
    """Crash recovery, then every due document in batches (claim, clean, record)."""
    report = CleanRunReport()
    started = time.perf_counter()
    with engine.begin() as conn:
        sql = Sql(conn)
        report.reset_in_flight, report.reset_errors = reset_in_flight_cleans(sql, retry_errors)
        due = select_clean_due(sql, limit)
    report.due = len(due)
    batches = _chunks(due, batch_size)
    progress(
        f"{len(due)} documents due for cleaning, {len(batches)} batches "
        f"({report.reset_in_flight} left in flight by an earlier run and {report.reset_errors} errors reset)"
    )
    logged = 0
    folder = Path(tempfile.mkdtemp(prefix="iati-clean-"))
    try:
        for number, batch in enumerate(batches, start=1):
            with engine.begin() as conn:
                sql = Sql(conn)
                claimed = claim_for_clean(sql, batch)
                reports = clean_reports(sql, [d.id for d in batch if d.id in claimed and not d.valid])
            outcomes = [
                clean_one(store, doc, reports.get(doc.id), folder) for doc in batch if doc.id in claimed
            ]
            with engine.begin() as conn:
                record_clean_outcomes(Sql(conn), outcomes)
            for outcome in outcomes:
                report.add(outcome)
                if outcome.is_error and logged < MAX_LOGGED_PROBLEMS:
                    logged += 1
                    warn(f"document {outcome.doc.id} ({outcome.doc.hash}): {report.problems[-1][3]}")
            report.batches = number
            elapsed = time.perf_counter() - started
            done = sum(len(b) for b in batches[:number])
            progress(
                f"batch {number} of {len(batches)}: {done}/{len(due)} documents, {report.copied} copied, "
                f"{report.rebuilt} rebuilt, {report.errors} errors, {done / elapsed if elapsed else 0:.1f} documents/s"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if logged < report.errors:
        warn(f"{report.errors - logged} more clean errors not logged (see the metadata preview)")
    report.seconds = time.perf_counter() - started
    return report


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
