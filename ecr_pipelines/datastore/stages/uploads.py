"""CSV uploads (the legacy's upload wizard, B6) as batch stages, without Dagster.

A person puts a CSV file at ``datastore/uploads/<organisation>/<dataset>/<file name>`` in the blob
store; from there:

1. ``register_uploads`` lists that folder and gives every new key its ``datastore.pipeline`` row
   (one per organisation and dataset) and its ``datastore.pipeline_data_file`` row (``uploaded``).
2. The check stage (``check_uploads``, stage ``datastore_upload_check``) reads each new file once
   with ``uploads.check_csv``: header rules, row lengths, the types inferred from the first rows,
   a sample. A file that passes stays ``uploaded`` (checked, waiting for its types to be
   confirmed); one that does not becomes ``failed`` with the reasons. With ``auto_verify`` a file
   that passes becomes ``verified`` at once, with the inferred types.
3. ``verify_upload`` is the person confirming (or correcting) the types: ``verified``.
4. The load stage (``load_verified``, stage ``datastore_upload_load``) replaces the dataset's
   ``"<org>.<dataset>"."L0"`` with the verified file in one transaction: ``completed``, or
   ``failed`` naming the line and column of a value its type refuses (the previous L0 stays).

States (column ``state``), and who moves a file between them::

    uploaded --check--> uploaded, checked --verify_upload--> verified --load claim--> processing_dss
    uploaded --check--> failed                                  processing_dss --load--> completed | failed
    completed | failed --verify_upload--> verified (restore an older version, retry a failed load)
    processing_dss --load, with a data-flow callback--> processing_dataflow --callback--> completed | failed
    verified | processing_* left for 24 h --fail_stuck_uploads--> failed
    uploaded | failed --recheck_upload--> uploaded, not checked (another delimiter or quote, say)

Versions: a load REPLACES L0 (the table holds one version, the legacy's upload pipeline appended
instead); every file stays in the blob store with its row, and "the latest version" is the newest
``completed`` file by ``processed_at``, as in the legacy. Restoring an older version is
``verify_upload`` of that file, which the next load run loads again.

The load. The new L0 is built beside the old one (``"L0.new"``), filled with one ``COPY``, given
its primary key, and renamed over the old one at the end of the same transaction, so readers keep
the old table until the commit and a failure leaves it untouched. L0 is ``id integer`` (its own
sequence), ``datafile_created text`` (the file name), then the file's columns with the chosen
types. Grants on L0 are not carried over to the new table: give readers the schema's default
privileges (``ALTER DEFAULT PRIVILEGES IN SCHEMA``) instead.

What COPY reads: by default (``encoder="text"``) the file is parsed by the same ``csv`` reader
and rules as the check (header as checked, columns without a name left out, null tokens as whole
values) and sent in COPY's text format, built with C-level ``str.join`` per row and a few scans
per 2,000-row chunk, in this thread, while another one sends (``lib/copy.copy_chunks``).
``uploads.normalised_csv`` (``encoder="csv"``) gives the same rows, but quotes each value in
Python: on 1,000,000 rows x 20 columns (280 MB) its load took 20.9 s, the text one 9.4 s, and
Postgres alone 6.2 s to COPY the same rows from a file (``benchmarks/datastore_load.py``). It
stays the reference the tests compare the text encoder against. The bytes read are hashed on
the way: a file replaced under the same key since its check is refused (``recheck_upload``
checks it again).
"""

import csv
import functools
import hashlib
import io
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.datastore.uploads import (
    COLUMN_TYPES,
    NAME_PATTERN,
    NULL_TOKENS,
    Problem,
    Records,
    UploadCheck,
    UploadError,
    check_csv,
    csv_reader,
    infer_lines_setting,
    normalised_csv,
)
from ecr_pipelines.lib.batch import (
    LIVE_OWNER,
    Outcome,
    Stage,
    StageReport,
    clip,
    has_due,
    per_item,
    run_stage,
)
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore
from ecr_pipelines.lib.copy import copy_chunks

log = logging.getLogger(__name__)

UPLOAD_ROOT = "datastore/uploads/"
FILES = "datastore.pipeline_data_file"
PIPELINES = "datastore.pipeline"
STATES = (
    "uploading",
    "uploaded",
    "verified",
    "processing_dss",
    "processing_dataflow",
    "completed",
    "failed",
)
PROCESSING = ("processing_dss", "processing_dataflow")
# verified: the types may be chosen again until the load claims the file; completed and failed:
# restoring an older version, retrying a failed load.
VERIFIABLE = ("uploaded", "verified", "completed", "failed")
RECHECKABLE = ("uploaded", "failed")
L0 = "L0"
NEW_L0 = "L0.new"
STUCK_HOURS = 24
# The legacy's rule for organisation and dataset names (its form validator).
LEGACY_NAME = re.compile(r"[a-zA-Z0-9_.]+")
# The legacy's upload form accepted .csv files only.
UPLOAD_SUFFIX = ".csv"
MAX_NAME_BYTES = 63  # Postgres cuts longer identifiers, so two schemas could become one
NEWEST_FILES = 10
Encoder = Literal["text", "csv"]
Dataflow = Callable[[str, str], None]

# pg_advisory_xact_lock(key1, key2): key1 says "an upload load", key2 is the pipeline id. Loads of
# one dataset take turns, so the last verified file is the one left in L0.
_LOCK_CLASS = 0x44535550
_CHUNK_ROWS = 2000
_COPY_CONTEXT = re.compile(r"COPY [^,]+, line (\d+)(?:, column ([a-z][a-z0-9_]*))?")
_CONNECTION_LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)

# Kinds of error (``error_kind``) written here; the check's own are uploads.py's problem kinds.
MISSING = "missing"  # the blob is gone
DIALECT = "dialect"  # a delimiter or quote check_csv refuses
CHANGED = "changed"  # the file is not the one checked
VALUE = "value"  # a value the column's type refuses
NOT_READY = "not_ready"  # verified by hand without what the load needs
DATABASE = "database"  # Postgres refused a statement (a view depending on L0, rights)
DATAFLOW = "dataflow"  # the data-flow callback failed
STUCK = "stuck"
INTERNAL = "internal"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(schema: str, name: str) -> str:
    return f"{_ident(schema)}.{_ident(name)}"


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


# --- names ----------------------------------------------------------------------------------------


def pipeline_name(name: str) -> str:
    """An organisation or dataset name as the legacy stored it: lower case, ``.`` as ``_``."""
    return name.lower().replace(".", "_")


def slugify(organisation: str, dataset: str) -> str:
    """python-slugify's ``slugify(f"{organisation} {dataset}")`` (the legacy's slug) for names of
    the legacy's characters: lower case, every run of other characters one ``-``, none at the ends."""
    return re.sub(r"[^a-z0-9]+", "-", f"{organisation} {dataset}".lower()).strip("-")


class UploadRefused(ValueError):
    """The request cannot be done (a key outside the layout, unknown columns or types, a file in
    the wrong state); the message says why."""


class UnknownUpload(LookupError):
    """No upload with that id or blob key."""


@dataclass(frozen=True)
class UploadKey:
    """A blob key of an upload, with its pipeline's names as stored."""

    key: str
    organisation: str
    dataset: str
    file_name: str

    @property
    def schema(self) -> str:
        return f"{self.organisation}.{self.dataset}"

    @property
    def slug(self) -> str:
        return slugify(self.organisation, self.dataset)


@functools.cache
def _source_schemas() -> dict[str, str]:
    return {spec.schema: spec.id for spec in SOURCES.values()}


def parse_upload_key(key: str) -> UploadKey | None:
    """The upload a key stands for; None for a dot file (``.DS_Store``, a folder of them);
    ``UploadRefused`` for a key that is not ``<root><organisation>/<dataset>/<file>.csv`` with the
    legacy's names, or whose schema Postgres or another pipeline would not let it have."""
    if not key.startswith(UPLOAD_ROOT):
        raise UploadRefused(f"not under {UPLOAD_ROOT}")
    parts = key[len(UPLOAD_ROOT) :].split("/")
    if any(part.startswith(".") for part in parts):
        return None
    if len(parts) != 3 or not all(parts):
        raise UploadRefused(f"not {UPLOAD_ROOT}<organisation>/<dataset>/<file name>")
    organisation, dataset, file_name = parts
    bad = [name for name in (organisation, dataset) if not LEGACY_NAME.fullmatch(name)]
    if bad:
        names = ", ".join(repr(name) for name in bad)
        raise UploadRefused(
            f"{names}: organisation and dataset names hold only letters, digits, _ and . (^[a-zA-Z0-9_\\.]+$)"
        )
    if not file_name.lower().endswith(UPLOAD_SUFFIX):
        raise UploadRefused(f"only {UPLOAD_SUFFIX} files are uploads")
    upload = UploadKey(key, pipeline_name(organisation), pipeline_name(dataset), file_name)
    if upload.organisation.startswith("pg_"):
        raise UploadRefused(f"schema {upload.schema!r}: Postgres reserves names starting with pg_")
    if len(upload.schema.encode("utf-8")) > MAX_NAME_BYTES:
        raise UploadRefused(
            f"schema {upload.schema!r} is longer than Postgres keeps ({MAX_NAME_BYTES} bytes)"
        )
    source = _source_schemas().get(upload.schema)
    if source is not None:
        # Its L0 would be replaced by the upload's.
        raise UploadRefused(f"schema {upload.schema!r} belongs to the data store source {source}")
    return upload


# --- registration ---------------------------------------------------------------------------------


@dataclass
class RegisterReport:
    """One listing of the upload folder: ``registered`` new files (``new_ids``), ``known`` ones
    already registered, ``ignored`` dot files, ``refused`` keys with the reason."""

    listed: int = 0
    registered: int = 0
    known: int = 0
    ignored: int = 0
    pipelines_created: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "registered": self.registered,
            "known": self.known,
            "ignored": self.ignored,
            "refused": len(self.refused),
            "pipelines_created": self.pipelines_created,
        }


def _pipeline_id(conn: Connection, upload: UploadKey) -> tuple[int | None, bool]:
    """Get or create the pipeline of ``upload``: (id, created); id None when its slug is taken by
    another pipeline. ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same names to
    commit, so two registrations never create it twice nor fail on each other."""
    created = conn.execute(
        sa.text(
            f"INSERT INTO {PIPELINES} (organisation, dataset, slug) VALUES (:organisation, :dataset, :slug) "
            "ON CONFLICT DO NOTHING RETURNING id"
        ),
        {"organisation": upload.organisation, "dataset": upload.dataset, "slug": upload.slug},
    ).scalar()
    if created is not None:
        return created, True
    found = conn.execute(
        sa.text(f"SELECT id FROM {PIPELINES} WHERE organisation = :organisation AND dataset = :dataset"),
        {"organisation": upload.organisation, "dataset": upload.dataset},
    ).scalar()
    return found, False


def register_uploads(
    engine: Engine, store: BlobStore, *, progress: Callable[[str], None] = log.info
) -> RegisterReport:
    """Register every new upload key (idempotent: a key already registered is left as it is)."""
    report = RegisterReport()
    uploads: list[UploadKey] = []
    for key in store.list(UPLOAD_ROOT):
        report.listed += 1
        try:
            upload = parse_upload_key(key)
        except UploadRefused as exc:
            report.refused.append((key, str(exc)))
            continue
        if upload is None:
            report.ignored += 1
        else:
            uploads.append(upload)
    with engine.begin() as conn:
        known = set(
            conn.execute(
                sa.text(f"SELECT data_file_url FROM {FILES} WHERE data_file_url = ANY(:keys)"),
                {"keys": [upload.key for upload in uploads]},
            ).scalars()
        )
        pipelines: dict[tuple[str, str], int | None] = {}
        for upload in uploads:
            if upload.key in known:
                report.known += 1
                continue
            names = (upload.organisation, upload.dataset)
            if names not in pipelines:
                pipelines[names], created = _pipeline_id(conn, upload)
                report.pipelines_created += created
            pipeline_id = pipelines[names]
            if pipeline_id is None:
                report.refused.append(
                    (upload.key, f"the slug {upload.slug!r} of {upload.schema!r} is another pipeline's")
                )
                continue
            new_id = conn.execute(
                sa.text(
                    f"INSERT INTO {FILES} (id, data_file_url, pipeline_id, state) "
                    "VALUES (CAST(:id AS uuid), :key, :pipeline, 'uploaded') "
                    "ON CONFLICT (data_file_url) DO NOTHING RETURNING id::text"
                ),
                {"id": str(uuid.uuid4()), "key": upload.key, "pipeline": pipeline_id},
            ).scalar()
            if new_id is None:  # registered by a concurrent run meanwhile
                report.known += 1
            else:
                report.registered += 1
                report.new_ids.append(new_id)
    progress(
        f"uploads: {report.listed} keys listed, {report.registered} new, {report.known} known, "
        f"{len(report.refused)} refused, {report.ignored} ignored"
    )
    return report


# --- reading a blob -------------------------------------------------------------------------------


class _Digest(io.RawIOBase):
    """The blob's bytes as they are read, hashed and counted on the way."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self._hash.update(data)
        self.size += size
        return size

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _csv_rows(stream: io.RawIOBase, delimiter: str, quote: str) -> Records:
    """The file's records read by the same code as ``check_csv``'s (``uploads.csv_reader``: UTF-8,
    a BOM dropped, no NUL, lines ending in ``\\n``, ``\\r\\n`` or ``\\r``, the csv module's strict
    reader), so the load takes the rows, and counts the lines, as the check did."""
    return csv_reader(stream, delimiter, quote)


# --- the check stage ------------------------------------------------------------------------------

CHECK_STAGE = Stage(
    name="datastore_upload_check",
    table=FILES,
    # The key is the uuid's text: the runner binds keys as text.
    key="id::text",
    due="t.state = 'uploaded' AND t.checked_at IS NULL",
    columns="t.id::text AS id, t.data_file_url, t.delimiter, t.quote",
    order="t.uploaded_at, t.id",
)


@dataclass
class CheckResult:
    """What the check of one file found (``Outcome.data``); ``check`` is None when the file could
    not be read at all (``problem`` says why)."""

    file_id: str
    check: UploadCheck | None = None
    problem: Problem | None = None
    sha256: str | None = None
    size: int | None = None
    verify: bool = False


def _check_failed(file_id: str, kind: str, message: str) -> Outcome:
    result = CheckResult(file_id, problem=Problem(kind, message))
    return Outcome(file_id, "failed", error=kind, message=clip(message), data=result)


def check_one(row: Any, *, store: BlobStore, infer_lines: int, auto_verify: bool = False) -> Outcome:
    """Check one uploaded file; never raises for the file's own trouble."""
    file_id = row.id
    try:
        with store.open(row.data_file_url) as blob:
            digest = _Digest(blob)
            check = check_csv(digest, delimiter=row.delimiter, quote=row.quote, infer_lines=infer_lines)
    except BlobNotFound:
        return _check_failed(file_id, MISSING, f"the file {row.data_file_url} is no longer in the blob store")
    except ValueError as exc:  # the delimiter or quote (check_csv reports the file's problems itself)
        return _check_failed(file_id, DIALECT, str(exc))
    except Exception as exc:  # one file's trouble never stops the others: recorded, retried by recheck
        log.exception("upload %s: the check failed", file_id)
        return _check_failed(file_id, INTERNAL, f"the check failed: {type(exc).__name__}: {exc}")
    result = CheckResult(file_id, check, sha256=digest.hexdigest(), size=digest.size)
    if not check.ok:
        message = "; ".join(problem.message for problem in check.errors)
        return Outcome(file_id, "failed", error=check.errors[0].kind, message=clip(message), data=result)
    result.verify = auto_verify
    columns = len(check.columns)
    return Outcome(
        file_id,
        "verified" if auto_verify else "checked",
        message=f"{check.rows} rows, {columns} columns",
        data=result,
        counts={"rows": check.rows},
    )


def _check_report(check: UploadCheck | None, problem: Problem | None) -> dict[str, Any]:
    errors = check.errors if check is not None else [problem] if problem is not None else []
    return {
        "errors": [{"kind": p.kind, "message": p.message} for p in errors],
        "notes": [{"kind": p.kind, "message": p.message} for p in (check.notes if check else [])],
        "source_columns": check.source_columns if check else [],
        "kept": check.kept if check else [],
        "inferred_rows": check.inferred_rows if check else 0,
    }


def record_checks(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    """The checks' results, in the caller's transaction. Only a file still ``uploaded`` and
    unchecked is written: one changed meanwhile (by hand, by another run) keeps its state."""
    for outcome in outcomes:
        result: CheckResult | None = outcome.data
        file_id = result.file_id if result is not None else outcome.key
        check = result.check if result is not None else None
        passed = outcome.error is None and check is not None
        verify = passed and result is not None and result.verify
        state = "verified" if verify else "uploaded" if passed else "failed"
        pairs = (
            [[name, kind] for name, kind in zip(check.columns, check.types, strict=True)] if check else None
        )
        conn.execute(
            sa.text(
                f"UPDATE {FILES} SET checked_at = now(), check_passed = :passed, "
                "check_report = CAST(:report AS jsonb), inferred_types = CAST(:types AS jsonb), "
                "sample = CAST(:sample AS jsonb), row_count = :rows, content_sha256 = :sha256, "
                "content_bytes = :size, state = :state, error_message = :error, error_kind = :kind, "
                "column_types = :column_types, "
                "verified_at = CASE WHEN :state = 'verified' THEN now() ELSE verified_at END "
                "WHERE id = CAST(:id AS uuid) AND state = 'uploaded' AND checked_at IS NULL"
            ),
            {
                "id": file_id,
                "passed": passed,
                "report": json.dumps(_check_report(check, result.problem if result else None)),
                "types": json.dumps(pairs) if pairs is not None else None,
                "sample": json.dumps(check.describe()) if check else None,
                "rows": check.rows if check else None,
                "sha256": result.sha256 if passed and result else None,
                "size": result.size if passed and result else None,
                "state": state,
                "error": None if passed else outcome.message,
                "kind": None if passed else outcome.error,
                "column_types": pairs if state == "verified" else None,
            },
        )


def _refused(outcome: Outcome, error: BaseException) -> Outcome:
    """A result the database would not store: the file fails with that reason instead of staying
    due for ever."""
    message = f"the database refused this file's result: {type(error).__name__}: {error}"
    return Outcome(outcome.key, "failed", error="refused", message=clip(message), data=None)


def check_uploads(
    engine: Engine,
    store: BlobStore,
    *,
    infer_lines: int | None = None,
    auto_verify: bool = False,
    limit: int | None = None,
    batch_size: int = 1,
    run_id: str = "",
    progress: Callable[[str], None] = log.info,
) -> StageReport:
    """Check every registered, unchecked upload (``infer_lines``: ``CSV_SAMPLE_INFER_LINES``)."""
    lines = infer_lines_setting() if infer_lines is None else infer_lines
    if lines < 0:  # else every file would fail as if its delimiter were wrong
        raise ValueError(f"infer_lines must be >= 0, not {lines}")
    return run_stage(
        engine,
        CHECK_STAGE,
        per_item(lambda row: check_one(row, store=store, infer_lines=lines, auto_verify=auto_verify)),
        record_checks,
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
        refused=_refused,
    )


def recheck_upload(
    engine: Engine, file: str | uuid.UUID, *, delimiter: str | None = None, quote: str | None = None
) -> None:
    """Have the check stage read a file again, with another delimiter or quote if given (the
    legacy's upload form asked for them; a file registered from the blob store has , and ")."""
    for label, char in (("delimiter", delimiter), ("quote", quote)):
        if char is not None and (len(char) != 1 or char in "\r\n"):
            raise UploadRefused(f"the {label} must be one character other than a line break, not {char!r}")
    with engine.begin() as conn:
        row = _file_row(conn, file, lock=True)
        if row.state not in RECHECKABLE:
            raise UploadRefused(
                f"{row.data_file_url} is {row.state}: only an {' or '.join(RECHECKABLE)} file is checked again"
            )
        new_delimiter = delimiter if delimiter is not None else row.delimiter
        new_quote = quote if quote is not None else row.quote
        if new_delimiter == new_quote:
            raise UploadRefused(f"the delimiter and the quote must differ (both are {new_delimiter!r})")
        conn.execute(
            sa.text(
                f"UPDATE {FILES} SET state = 'uploaded', delimiter = :delimiter, quote = :quote, "
                "checked_at = NULL, check_passed = NULL, check_report = NULL, inferred_types = NULL, "
                "sample = NULL, row_count = NULL, content_sha256 = NULL, content_bytes = NULL, "
                "column_types = NULL, verified_at = NULL, error_message = NULL, error_kind = NULL "
                "WHERE id = CAST(:id AS uuid)"
            ),
            {"id": row.id, "delimiter": new_delimiter, "quote": new_quote},
        )


# --- verification ---------------------------------------------------------------------------------

_FILE_COLUMNS = (
    "t.id::text AS id, t.data_file_url, t.state, t.error_message, t.error_kind, t.uploaded_at, "
    "t.checked_at, t.check_passed, t.check_report, t.inferred_types, t.sample, t.column_types, "
    "t.row_count, t.delimiter, t.quote, t.verified_at, t.started_processing_at, t.loaded_at, "
    "t.processed_at, t.pipeline_id, p.organisation, p.dataset"
)


def _file_filter(file: str | uuid.UUID) -> tuple[str, str]:
    """The condition finding ``file`` (its uuid, or its blob key) and the value to bind."""
    try:
        return "t.id = CAST(:file AS uuid)", str(uuid.UUID(str(file)))
    except ValueError:
        return "t.data_file_url = :file", str(file)


def _find_file(conn: Connection, file: str | uuid.UUID, *, lock: bool = False) -> Any:
    condition, value = _file_filter(file)
    return conn.execute(
        sa.text(
            f"SELECT {_FILE_COLUMNS} FROM {FILES} t JOIN {PIPELINES} p ON p.id = t.pipeline_id "
            f"WHERE {condition}" + (" FOR UPDATE OF t" if lock else "")
        ),
        {"file": value},
    ).one_or_none()


def _file_row(conn: Connection, file: str | uuid.UUID, *, lock: bool = False) -> Any:
    row = _find_file(conn, file, lock=lock)
    if row is None:
        raise UnknownUpload(f"no upload {file}")
    return row


@dataclass
class VerifyResult:
    """A verified file: the types its load will use, and what changed from the latest version
    (the newest completed file of the dataset)."""

    file_id: str
    key: str
    schema: str
    previous_state: str
    column_types: list[tuple[str, str]]
    overridden: dict[str, str] = field(default_factory=dict)
    previous_file: str | None = None
    missing_columns: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        if not self.missing_columns:
            return []
        names = ", ".join(f'"{name}"' for name in self.missing_columns)
        return [f"columns of the latest version missing from this file: {names}"]


def _pairs(value: Any) -> list[tuple[str, str]]:
    return [(str(name), str(kind)) for name, kind in value or []]


def latest_version(conn: Connection, pipeline_id: int, *, other_than: str | None = None) -> Any:
    """The dataset's newest completed file (the legacy's "latest version"), or None."""
    return conn.execute(
        sa.text(
            f"SELECT t.id::text AS id, t.data_file_url, t.column_types, t.inferred_types FROM {FILES} t "
            "WHERE t.pipeline_id = :pipeline AND t.state = 'completed' "
            "AND (CAST(:other AS uuid) IS NULL OR t.id <> CAST(:other AS uuid)) "
            "ORDER BY t.processed_at DESC NULLS LAST, t.id LIMIT 1"
        ),
        {"pipeline": pipeline_id, "other": other_than},
    ).one_or_none()


def verify_upload(
    engine: Engine, file: str | uuid.UUID, column_types: Mapping[str, str] | None = None
) -> VerifyResult:
    """Confirm a checked file's column types (``column_types`` overrides the inferred type of the
    columns it names, with ``COLUMN_TYPES`` names); the next load run loads it. ``UploadRefused``
    when the file did not pass its check, is being processed, or names unknown columns or types."""
    overrides = dict(column_types or {})
    with engine.begin() as conn:
        row = _file_row(conn, file, lock=True)
        label = row.data_file_url
        if row.state not in VERIFIABLE:
            raise UploadRefused(
                f"{label} is {row.state}: a file is verified when it is {', '.join(VERIFIABLE)}"
                + (" (its load is running)" if row.state in PROCESSING else "")
            )
        if row.checked_at is None:
            raise UploadRefused(f"{label} has not been checked yet: the check stage reads it first")
        if not row.check_passed:
            errors = (row.check_report or {}).get("errors") or []
            reason = "; ".join(error["message"] for error in errors) or row.error_message or "unknown"
            raise UploadRefused(f"{label} did not pass its check: {reason}")
        inferred = _pairs(row.inferred_types)
        names = [name for name, _ in inferred]
        unknown_columns = [name for name in overrides if name not in names]
        unknown_types = list(dict.fromkeys(kind for kind in overrides.values() if kind not in COLUMN_TYPES))
        problems = []
        if unknown_columns:
            problems.append(
                "unknown columns: "
                + ", ".join(f'"{name}"' for name in unknown_columns)
                + f" (the file's are {', '.join(names)})"
            )
        if unknown_types:
            problems.append(
                "unknown types: "
                + ", ".join(f'"{kind}"' for kind in unknown_types)
                + f" (types are {', '.join(COLUMN_TYPES)})"
            )
        if problems:
            raise UploadRefused(f"{label}: " + "; ".join(problems))
        chosen = [(name, overrides.get(name, kind)) for name, kind in inferred]
        previous = latest_version(conn, row.pipeline_id, other_than=row.id)
        missing: list[str] = []
        if previous is not None:
            earlier = _pairs(previous.column_types) or _pairs(previous.inferred_types)
            missing = [name for name, _ in earlier if name not in names]
        conn.execute(
            sa.text(
                f"UPDATE {FILES} SET state = 'verified', column_types = :column_types, verified_at = now(), "
                "started_processing_at = NULL, error_message = NULL, error_kind = NULL "
                "WHERE id = CAST(:id AS uuid)"
            ),
            {"id": row.id, "column_types": [list(pair) for pair in chosen]},
        )
    return VerifyResult(
        file_id=row.id,
        key=row.data_file_url,
        schema=f"{row.organisation}.{row.dataset}",
        previous_state=row.state,
        column_types=chosen,
        overridden={name: kind for name, kind in overrides.items() if dict(inferred)[name] != kind},
        previous_file=previous.id if previous is not None else None,
        missing_columns=missing,
    )


# --- the load stage -------------------------------------------------------------------------------

LOAD_STAGE = Stage(
    name="datastore_upload_load",
    table=FILES,
    key="id::text",
    joins=f"JOIN {PIPELINES} p ON p.id = t.pipeline_id",
    # processing_dss without a live claim was left by a run that died: its transaction was rolled
    # back with it, so loading it again is safe.
    due="t.state IN ('verified', 'processing_dss')",
    columns=(
        "t.id::text AS id, t.data_file_url, t.pipeline_id, p.organisation, p.dataset, t.column_types, "
        "t.inferred_types, t.check_report, t.content_sha256, t.row_count, t.delimiter, t.quote"
    ),
    order="t.verified_at NULLS FIRST, t.id",
    on_claim="state = 'processing_dss', started_processing_at = now()",
)


class _LoadFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class _Job:
    """One verified file, as the load needs it."""

    file_id: str
    key: str
    pipeline_id: int
    schema: str
    file_name: str
    names: list[str]
    types: list[str]
    source_columns: list[str]
    kept: list[int]
    delimiter: str
    quote: str
    sha256: str | None
    rows: int | None

    def check(self) -> UploadCheck:
        """The check ``normalised_csv`` needs, rebuilt from what the check stage stored."""
        return UploadCheck(
            columns=self.names,
            types=self.types,
            sample=[],
            rows=self.rows or 0,
            errors=[],
            delimiter=self.delimiter,
            quote=self.quote,
            source_columns=self.source_columns,
            kept=self.kept,
        )


def _job(row: Any) -> _Job:
    """The load's view of a claimed row; ``_LoadFailure`` when it lacks what a load needs (a row
    set verified by hand). Names and types are checked again: they become SQL."""
    chosen = _pairs(row.column_types)
    inferred = _pairs(row.inferred_types)
    report = row.check_report or {}
    if not chosen or not report.get("source_columns"):
        raise _LoadFailure(
            NOT_READY, "the file was verified without a passed check: check and verify it again"
        )
    names = [name for name, _ in chosen]
    if inferred and names != [name for name, _ in inferred]:
        raise _LoadFailure(NOT_READY, "the verified columns are not the checked file's: verify it again")
    bad = [
        f"{name} {kind}"
        for name, kind in chosen
        if not NAME_PATTERN.fullmatch(name) or kind not in COLUMN_TYPES
    ]
    schema_names = (row.organisation, row.dataset)
    if bad or not all(re.fullmatch(r"[a-z0-9_]+", name) for name in schema_names):
        raise _LoadFailure(NOT_READY, f"invalid names or types: {', '.join(bad) or '.'.join(schema_names)}")
    kept = [int(index) for index in report.get("kept") or []]
    if len(kept) != len(names):
        raise _LoadFailure(NOT_READY, "the check's header layout is missing: check and verify it again")
    return _Job(
        file_id=row.id,
        key=row.data_file_url,
        pipeline_id=row.pipeline_id,
        schema=f"{row.organisation}.{row.dataset}",
        file_name=row.data_file_url.rsplit("/", 1)[-1],
        names=names,
        types=[kind for _, kind in chosen],
        source_columns=list(report["source_columns"]),
        kept=kept,
        delimiter=row.delimiter,
        quote=row.quote,
        sha256=row.content_sha256,
        rows=row.row_count,
    )


def _token_pattern(tokens: Iterable[str]) -> re.Pattern[str]:
    """A whole value equal to a null token in COPY text lines (values end at a tab or a line end).
    When every token starts with the same character, the pattern starts with it as a literal,
    which lets the regex engine skip to the candidates (a lookbehind first made the substitution
    over 1,000,000 rows take 7 s instead of 1)."""
    words = sorted(token for token in tokens if token)
    boundary_after = r"(?![^\t\n])"
    if len({word[0] for word in words}) == 1:
        first = re.escape(words[0][0])
        rests = "|".join(re.escape(word[1:]) for word in words)
        return re.compile(rf"{first}(?<![^\t\n]{first})(?:{rests}){boundary_after}")
    return re.compile(r"(?<![^\t\n])(?:" + "|".join(map(re.escape, words)) + ")" + boundary_after)


# COPY's text format with NULL '': an empty value is NULL, so a null token becomes empty.
_TOKENS = _token_pattern(NULL_TOKENS)
_TOKEN_WORDS = tuple(token for token in NULL_TOKENS if token)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _escape_line(line: str) -> str:
    # A line whose tabs are all separators: the same as escaping each of its values.
    return line.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _text_chunk(lines: list[str], escaped: list[int]) -> bytes:
    """Lines (values joined by tabs) as a chunk of COPY text. Values rarely hold a backslash or a
    line break, so the whole chunk is checked once, and only a chunk with one is escaped line by
    line; rows with a tab in a value (``escaped``) were escaped value by value already."""
    count = len(lines)
    lines.append("")
    chunk = "\n".join(lines)
    if "\\" in chunk or "\r" in chunk or chunk.count("\n") != count:
        done = set(escaped)
        chunk = "\n".join(line if index in done else _escape_line(line) for index, line in enumerate(lines))
    if any(token in chunk for token in _TOKEN_WORDS):
        chunk = _TOKENS.sub("", chunk)
    return chunk.encode("utf-8")


def _text_chunks(stream: io.RawIOBase, job: _Job) -> Iterator[bytes]:
    """The checked file as COPY text-format rows (no header): what ``normalised_csv`` sends as CSV,
    the same reader, header, kept columns and null tokens, built with C-level joins."""
    reader = _csv_rows(stream, job.delimiter, job.quote)
    header = next((row for row in reader if row), None)
    if header != job.source_columns:
        raise _LoadFailure(CHANGED, "the file's header is not the one checked: check it again")
    width = len(job.source_columns)
    kept = None if job.kept == list(range(width)) else job.kept
    tabs = len(job.names) - 1
    join = "\t".join
    lines: list[str] = []
    escaped: list[int] = []
    for row in reader:
        if len(row) != width:
            if not row:  # a blank line, skipped as the check did
                continue
            raise _LoadFailure(
                CHANGED,
                f"the row ending on line {reader.line_num} has {len(row)} values, not {width}: "
                "the file is not the one checked",
            )
        if kept is not None:
            row = [row[index] for index in kept]
        line = join(row)
        if line.count("\t") != tabs:
            escaped.append(len(lines))
            line = join([_escape(value) for value in row])
        lines.append(line)
        if len(lines) == _CHUNK_ROWS:
            yield _text_chunk(lines, escaped)
            lines, escaped = [], []
    if lines:
        yield _text_chunk(lines, escaped)


def _locate(store: BlobStore, job: _Job, copy_line: int, encoder: Encoder) -> tuple[int | None, int | None]:
    """(data row, line of the file where it starts) of the line COPY names. COPY knows neither the
    file's header, nor its blank lines, nor its line breaks inside quoted values: a text-format
    row is one line, so its line is the data row; in the normalised CSV the header is line 1 and
    each line break inside a value starts another line (Postgres counts them)."""
    data_row = copy_line if encoder == "text" else None
    try:
        with store.open(job.key) as blob:
            reader = _csv_rows(_Digest(blob), job.delimiter, job.quote)
            header_seen, count, last, normalised = False, 0, 0, 1
            for row in reader:
                start, last = last + 1, reader.line_num
                if not row:
                    continue
                if not header_seen:
                    header_seen = True
                    continue
                count += 1
                if data_row is None:
                    first = normalised + 1
                    normalised += 1 + sum(row[index].count("\n") for index in job.kept)
                    if first <= copy_line <= normalised:
                        return count, start
                elif count == data_row:
                    return count, start
    except Exception:  # only the message loses its line number
        log.warning(
            "upload %s: could not find the line of COPY line %d", job.file_id, copy_line, exc_info=True
        )
    return data_row, None


def _database_error(error: psycopg2.Error, store: BlobStore, job: _Job, encoder: Encoder) -> _LoadFailure:
    diag = error.diag
    primary = (diag.message_primary or str(error)).strip()
    match = _COPY_CONTEXT.search(diag.context or "")
    if isinstance(error, psycopg2.DataError) and match:
        data_row, line = _locate(store, job, int(match.group(1)), encoder)
        column = match.group(2)
        where = f"line {line}" if line is not None else f"COPY line {match.group(1)}"
        if column:
            kind = dict(zip(job.names, job.types, strict=True)).get(column, "?")
            where += f', column "{column}" ({kind})'
        row_note = f" (data row {data_row})" if data_row is not None else ""
        return _LoadFailure(VALUE, f"{where}: {primary}{row_note}; fix the value or choose another type")
    parts = [primary, diag.message_detail, diag.message_hint]
    code = f" {error.pgcode}" if error.pgcode else ""
    return _LoadFailure(DATABASE, f"database error{code}: " + "; ".join(p.strip() for p in parts if p))


@dataclass
class LoadResult:
    """One load (``Outcome.data``): where the file went and how many rows it brought."""

    file_id: str
    schema: str
    file_name: str
    rows: int = 0
    seconds: float = 0.0
    dataflow: bool = False


def _copy(cursor: Any, job: _Job, new: str, digest: _Digest, encoder: Encoder) -> int:
    """COPY the file into ``new``; returns the rows copied."""
    columns = ", ".join(_ident(name) for name in job.names)
    if encoder == "text":
        chunks: Iterator[bytes] = _text_chunks(digest, job)
        options = "FORMAT text, NULL '', ENCODING 'UTF8'"
    else:
        chunks = normalised_csv(digest, job.check())
        options = "FORMAT csv, HEADER true, ENCODING 'UTF8'"
    return copy_chunks(cursor, f"COPY {new} ({columns}) FROM STDIN WITH ({options})", chunks)


def _replace_l0(engine: Engine, store: BlobStore, job: _Job, *, final_state: str, encoder: Encoder) -> int:
    """Build the new L0 from the file and put it in the old one's place, with the file's new
    state, in one transaction; returns the rows loaded."""
    schema = _ident(job.schema)
    new, old = _table(job.schema, NEW_L0), _table(job.schema, L0)
    new_sequence, old_sequence = _table(job.schema, f"{NEW_L0}_id_seq"), _table(job.schema, f"{L0}_id_seq")
    types = ", ".join(
        f"{_ident(name)} {COLUMN_TYPES[kind]}" for name, kind in zip(job.names, job.types, strict=True)
    )
    try:
        with store.open(job.key) as blob, engine.begin() as conn:
            digest = _Digest(blob)
            raw = conn.connection.dbapi_connection
            with raw.cursor() as cursor:  # type: ignore[union-attr]
                # As the legacy: a big file may take hours, whatever the server's default limit.
                cursor.execute("SET LOCAL statement_timeout = '20h'")
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, job.pipeline_id))
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                # Left by nothing (a failed load rolls back, a good one renames it), but a table
                # made by hand under this name would stop every load.
                cursor.execute(f"DROP TABLE IF EXISTS {new}")
                cursor.execute(f"DROP SEQUENCE IF EXISTS {new_sequence}")
                cursor.execute(f"CREATE SEQUENCE {new_sequence} AS integer")
                # The key comes after the COPY: one index build is faster than a row-by-row one.
                cursor.execute(
                    f"CREATE TABLE {new} (id integer NOT NULL DEFAULT nextval(%(sequence)s::regclass), "
                    f"datafile_created text NOT NULL DEFAULT %(file)s, {types})",
                    {"sequence": new_sequence, "file": job.file_name},
                )
                cursor.execute(f"ALTER SEQUENCE {new_sequence} OWNED BY {new}.id")
                rows = _copy(cursor, job, new, digest, encoder)
                if job.sha256 and digest.hexdigest() != job.sha256:
                    raise _LoadFailure(CHANGED, "the file was replaced since its check: check it again")
                if job.rows is not None and rows != job.rows:
                    raise _LoadFailure(INTERNAL, f"{rows} rows loaded, the check counted {job.rows}")
                cursor.execute(f"ALTER TABLE {new} ALTER COLUMN datafile_created DROP DEFAULT")
                cursor.execute(
                    f"ALTER TABLE {new} ADD CONSTRAINT {_ident(NEW_L0 + '_pkey')} PRIMARY KEY (id)"
                )
                # No CASCADE: a view on L0 stops the load with Postgres's message rather than
                # disappearing with the old table.
                cursor.execute(f"DROP TABLE IF EXISTS {old}")
                cursor.execute(f"DROP SEQUENCE IF EXISTS {old_sequence}")
                cursor.execute(f"ALTER TABLE {new} RENAME TO {_ident(L0)}")
                cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {_ident(L0 + '_id_seq')}")
                cursor.execute(
                    f"ALTER INDEX {_table(job.schema, NEW_L0 + '_pkey')} RENAME TO {_ident(L0 + '_pkey')}"
                )
                cursor.execute(
                    f"COMMENT ON TABLE {old} IS %(comment)s",
                    {"comment": f"upload {job.file_name} ({job.file_id})"},
                )
                # Readers get plans from real statistics at once, not after autovacuum's turn.
                cursor.execute(f"ANALYZE {old}")
                # The state commits with the table, so a file is never completed without its rows.
                cursor.execute(
                    f"UPDATE {FILES} SET state = %(state)s, loaded_at = clock_timestamp(), "
                    "processed_at = CASE WHEN %(state)s = 'completed' THEN clock_timestamp() ELSE processed_at END, "
                    "row_count = %(rows)s, error_message = NULL, error_kind = NULL "
                    "WHERE id = %(id)s AND state = 'processing_dss'",
                    {"state": final_state, "rows": rows, "id": job.file_id},
                )
                if cursor.rowcount != 1:
                    raise _LoadFailure(INTERNAL, "the file's state changed while it was loading")
    except _CONNECTION_LOST:
        raise
    except psycopg2.Error as exc:
        raise _database_error(exc, store, job, encoder) from exc
    except sa.exc.DBAPIError as exc:  # the commit, through SQLAlchemy
        if exc.connection_invalidated or isinstance(exc.orig, _CONNECTION_LOST):
            raise
        if isinstance(exc.orig, psycopg2.Error):
            raise _database_error(exc.orig, store, job, encoder) from exc
        raise
    except (UploadError, UnicodeDecodeError, csv.Error) as exc:
        raise _LoadFailure(
            CHANGED, f"the file cannot be read as it was checked ({exc}): check it again"
        ) from exc
    return rows


def load_one(
    row: Any,
    *,
    engine: Engine,
    store: BlobStore,
    dataflow: bool = False,
    encoder: Encoder = "text",
    progress: Callable[[str], None] = log.info,
) -> Outcome:
    """Load one claimed file into its dataset's L0; never raises for the file's own trouble (a
    lost database connection stops the run: the file stays due)."""
    file_id = row.id
    started = time.perf_counter()
    try:
        job = _job(row)
        final_state = "processing_dataflow" if dataflow else "completed"
        rows = _replace_l0(engine, store, job, final_state=final_state, encoder=encoder)
    except _LoadFailure as exc:
        return Outcome(file_id, "failed", error=exc.kind, message=clip(str(exc)))
    except BlobNotFound:
        return Outcome(
            file_id,
            "failed",
            error=MISSING,
            message=f"the file {row.data_file_url} is no longer in the blob store",
        )
    except _CONNECTION_LOST:
        raise
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated or isinstance(exc.orig, _CONNECTION_LOST):
            raise
        log.exception("upload %s: the load failed", file_id)
        return Outcome(file_id, "failed", error=DATABASE, message=clip(f"database error: {exc.orig}"))
    except Exception as exc:  # one file's trouble never stops the others: recorded with its trace
        log.exception("upload %s: the load failed", file_id)
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        return Outcome(file_id, "failed", error=INTERNAL, message=clip(message))
    seconds = time.perf_counter() - started
    result = LoadResult(file_id, job.schema, job.file_name, rows, seconds, dataflow)
    progress(
        f'{job.schema}: {job.file_name} loaded into "L0", {rows:,} rows in {seconds:.1f} s '
        f"({rows / seconds if seconds else 0:,.0f} rows/s)"
    )
    return Outcome(file_id, "dataflow" if dataflow else "done", data=result, counts={"rows": rows})


def record_loads(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    """A failed load's reason (a load that worked wrote its state with its table)."""
    for outcome in outcomes:
        if outcome.error is None:
            continue
        conn.execute(
            sa.text(
                f"UPDATE {FILES} SET state = 'failed', error_message = :message, error_kind = :kind "
                "WHERE id = CAST(:id AS uuid) AND state = 'processing_dss'"
            ),
            {"id": outcome.key, "message": outcome.message, "kind": outcome.error},
        )


def finish_dataflow(engine: Engine, file: str | uuid.UUID, error: str | None = None) -> bool:
    """End a file's ``processing_dataflow``: ``completed`` (and ``processed_at``), or ``failed``
    with ``error``. Returns whether the file was waiting for data-flow."""
    condition, value = _file_filter(file)
    with engine.begin() as conn:
        return (
            conn.execute(
                sa.text(
                    f"UPDATE {FILES} t SET state = CASE WHEN CAST(:error AS text) IS NULL THEN 'completed' "
                    "ELSE 'failed' END, processed_at = CASE WHEN CAST(:error AS text) IS NULL "
                    "THEN clock_timestamp() ELSE t.processed_at END, error_message = :error, "
                    f"error_kind = CASE WHEN CAST(:error AS text) IS NULL THEN NULL ELSE '{DATAFLOW}' END "
                    f"WHERE {condition} AND t.state = 'processing_dataflow'"
                ),
                {"file": value, "error": clip(error) if error is not None else None},
            ).rowcount
            == 1
        )


def _announce(
    engine: Engine, dataflow: Dataflow, progress: Callable[[str], None]
) -> Callable[[list[Outcome]], None]:
    """The runner's ``committed`` hook: after a load committed, the callback is told (schema,
    "L0"); its return means data-flow took the new table (``completed``), its exception that it
    did not (``failed``)."""

    def after_commit(outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.kind != "dataflow":
                continue
            result: LoadResult = outcome.data
            try:
                dataflow(result.schema, L0)
            except Exception as exc:
                message = f"data-flow: {type(exc).__name__}: {exc}"
                log.warning("upload %s: %s", result.file_id, message)
                finish_dataflow(engine, result.file_id, message)
                progress(f"{result.schema}: {result.file_name} failed in data-flow: {exc}")
            else:
                finish_dataflow(engine, result.file_id)
                progress(f"{result.schema}: {result.file_name} completed by data-flow")

    return after_commit


def load_verified(
    engine: Engine,
    store: BlobStore,
    *,
    dataflow: Dataflow | None = None,
    encoder: Encoder = "text",
    limit: int | None = None,
    run_id: str = "",
    progress: Callable[[str], None] = log.info,
) -> StageReport:
    """Load every verified file (one per batch: each is committed, and announced, on its own).

    ``dataflow``: called as ``dataflow(schema, "L0")`` after a file's load committed (the legacy
    triggered its DSSGenericPipeline DAG there and waited for it). The file is then
    ``processing_dataflow`` until the callback returns (``completed``) or raises (``failed``, with
    its message); a caller that waits elsewhere may return at once and end the state later with
    ``finish_dataflow``. Without it a file is ``completed`` with its load."""
    return run_stage(
        engine,
        LOAD_STAGE,
        per_item(
            lambda row: load_one(
                row,
                engine=engine,
                store=store,
                dataflow=dataflow is not None,
                encoder=encoder,
                progress=progress,
            )
        ),
        record_loads,
        batch_size=1,
        limit=limit,
        run_id=run_id,
        progress=progress,
        refused=_refused,
        committed=_announce(engine, dataflow, progress) if dataflow is not None else None,
    )


# --- the legacy scheduler's rule ------------------------------------------------------------------


def fail_stuck_uploads(engine: Engine, hours: float = STUCK_HOURS) -> list[str]:
    """Fail the files ``verified`` or ``processing_*`` for ``hours`` (the legacy scheduler's hourly
    rule); returns their ids.

    The legacy set ``started_processing_at`` when the person verified the file (its load started
    in the same request), so a verified file without one had lost its load. Here a verified file
    waits for the next load run (minutes), so the clock starts at ``verified_at``: a file is
    stuck when nothing started it within ``hours`` of its verification, or its load (or data-flow)
    started that long ago. A file held by a live run of the load stage is being worked on, not
    stuck (the legacy could not tell)."""
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                f"UPDATE {FILES} t SET state = 'failed', error_kind = '{STUCK}', error_message = :message "
                "WHERE t.state IN ('verified', 'processing_dss', 'processing_dataflow') "
                "AND (coalesce(t.started_processing_at, t.verified_at) IS NULL "
                "OR coalesce(t.started_processing_at, t.verified_at) <= now() - :hours * interval '1 hour') "
                "AND NOT EXISTS (SELECT 1 FROM pipeline.stage_claim c WHERE c.stage = :stage "
                f"AND c.item = t.id::text AND {LIVE_OWNER.format(c='c')}) "
                "RETURNING t.id::text"
            ),
            {
                "hours": hours,
                "stage": LOAD_STAGE.name,
                "message": (
                    "Failed for an unknown reason. The upload was automatically marked as failed because "
                    f"it did not complete within {hours:g} hours."
                ),
            },
        ).scalars()
        return list(rows)


# --- state for metadata ---------------------------------------------------------------------------


def _file_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "organisation": row.organisation,
        "dataset": row.dataset,
        "file": row.data_file_url.rsplit("/", 1)[-1],
        "state": row.state,
        "rows": row.row_count,
        "error": row.error_message,
        "uploaded_at": _iso(row.uploaded_at),
    }


def upload_summary(conn: Connection) -> dict[str, Any]:
    """Files per state (every state listed), pipelines, and the newest files."""
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(sa.text(f"SELECT state, count(*) FROM {FILES} GROUP BY state")).all():
        counts[state] = count
    newest = conn.execute(
        sa.text(
            f"SELECT {_FILE_COLUMNS} FROM {FILES} t JOIN {PIPELINES} p ON p.id = t.pipeline_id "
            "ORDER BY t.uploaded_at DESC, t.id LIMIT :limit"
        ),
        {"limit": NEWEST_FILES},
    ).all()
    return {
        "files": sum(counts.values()),
        "pipelines": conn.execute(sa.text(f"SELECT count(*) FROM {PIPELINES}")).scalar_one(),
        "by_state": counts,
        "newest": [_file_summary(row) for row in newest],
    }


def file_details(conn: Connection, file: str | uuid.UUID) -> dict[str, Any] | None:
    """One file: where it goes, its state, what its check found (header, types, sample, notes)."""
    row = _find_file(conn, file)
    if row is None:
        return None
    report = row.check_report or {}
    return {
        **_file_summary(row),
        "key": row.data_file_url,
        "schema": f"{row.organisation}.{row.dataset}",
        "error_kind": row.error_kind,
        "delimiter": row.delimiter,
        "quote": row.quote,
        "checked_at": _iso(row.checked_at),
        "check_passed": row.check_passed,
        "verified_at": _iso(row.verified_at),
        "started_processing_at": _iso(row.started_processing_at),
        "loaded_at": _iso(row.loaded_at),
        "processed_at": _iso(row.processed_at),
        "header": [name for name, _ in _pairs(row.inferred_types)],
        "inferred_types": _pairs(row.inferred_types),
        "column_types": _pairs(row.column_types) or None,
        "sample": row.sample,
        "problems": report.get("errors", []),
        "notes": report.get("notes", []),
    }


def uploads_waiting(conn: Connection, keys: Sequence[str]) -> str | None:
    """What an upload run would find to do, for a sensor: keys to register (refused and dot-file
    keys left out, or they would start a run every time), files to check, verified files to load
    (not those a live run holds). None when there is nothing."""
    candidates = []
    for key in keys:
        try:
            upload = parse_upload_key(key)
        except UploadRefused:
            continue
        if upload is not None:
            candidates.append(upload.key)
    known = set(
        conn.execute(
            sa.text(f"SELECT data_file_url FROM {FILES} WHERE data_file_url = ANY(:keys)"),
            {"keys": candidates},
        ).scalars()
    )
    new = len([key for key in candidates if key not in known])
    to_check = has_due(conn, CHECK_STAGE)
    to_load = has_due(conn, LOAD_STAGE)
    parts = []
    if new:
        parts.append(f"{new} new upload file{'s' if new != 1 else ''}")
    if to_check:
        parts.append("uploads to check")
    if to_load:
        parts.append("verified uploads to load")
    return ", ".join(parts) if parts else None
