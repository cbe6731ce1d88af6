"""Download due IATI documents into the blob store (``iati/source/<hash>.xml``), concurrently.

A document is due while ``downloaded IS NULL`` and it has no ``download_error`` (in "retry
errors" mode: no error other than 4). Each file is streamed from its cached URL into the store by
one of ``workers`` threads sharing one HTTP session; outcomes are written back in batches, each
batch in its own transaction, so a crash loses at most one batch of bookkeeping. A re-run finds
the same documents still due and overwrites the same content-addressed keys: nothing is
duplicated.

``download_error`` codes, as the refresher stored them (``error_code``):

=========  =====================================================================================
HTTP code  the cache answered with that status (404, 500, ...)
0          connection failed, was reset, or timed out
1          TLS handshake or certificate failure
2          character encoding undetectable (a PDF or other binary served as a dataset), or empty
3          unsupported URL scheme (``ftp://`` in the legacy registry)
4          no cached URL or no hash in the index: never retried
5          larger than ``HTTP_MAX_DOWNLOAD_BYTES`` (new: the refresher had no cap)
=========  =====================================================================================

A failure that is not the document's fault (the blob store is down, a bug) leaves the row due
and is reported separately; when every attempt of a run fails that way the run fails.
"""

import codecs
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
import sqlalchemy as sa
from charset_normalizer import from_bytes

from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, run_stage
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import HEAD_BYTES, ErrorKind, FetchError, download_to_blob
from ecr_pipelines.lib.sql import Sql

log = logging.getLogger(__name__)

CONNECTION_ERROR = 0
SSL_ERROR = 1
CHARSET_ERROR = 2
SCHEME_ERROR = 3
NO_SOURCE = 4
TOO_LARGE = 5
ERROR_LABELS = {
    CONNECTION_ERROR: "connection",
    SSL_ERROR: "ssl",
    CHARSET_ERROR: "charset",
    SCHEME_ERROR: "scheme",
    NO_SOURCE: "no_source",
    TOO_LARGE: "too_large",
}
NO_SOURCE_MESSAGE = "no cached URL or no hash in the index"
BATCH_SIZE = 200

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?\bencoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._\-]*)[\"']")


def error_label(code: int) -> str:
    return ERROR_LABELS.get(code, f"http_{code}")


def error_code(error: FetchError) -> int:
    """The refresher's ``download_error`` code for a classified fetch failure."""
    if error.kind is ErrorKind.HTTP_STATUS and error.status is not None:
        return error.status
    return {
        ErrorKind.CONNECTION: CONNECTION_ERROR,
        ErrorKind.TIMEOUT: CONNECTION_ERROR,
        ErrorKind.SSL: SSL_ERROR,
        ErrorKind.UNSUPPORTED_SCHEME: SCHEME_ERROR,
        ErrorKind.TOO_LARGE: TOO_LARGE,
    }.get(error.kind, CONNECTION_ERROR)


def detect_encoding(head: bytes, complete: bool = False) -> str | None:
    """The character encoding of a document from its first bytes, or None when undetectable.

    Order: byte-order mark, then the XML declaration's ``encoding`` (when Python knows it), then
    strict UTF-8 (XML's default), then charset-normalizer. ``complete`` says ``head`` is the
    whole file; otherwise a character cut at the end of the head is not held against UTF-8.
    """
    if not head:
        return None
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    match = _DECLARATION.match(head)
    if match:
        declared = match.group(1).decode("ascii").lower()
        try:
            codecs.lookup(declared)
            return declared
        except LookupError:
            pass
    if b"\x00" not in head:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
            return "utf-8"
        except UnicodeDecodeError:
            pass
    best = from_bytes(head).best()
    return best.encoding if best is not None else None


@dataclass(frozen=True)
class DueDocument:
    id: str
    hash: str
    url: str | None


@dataclass(frozen=True)
class DownloadOutcome:
    id: str
    hash: str
    url: str | None
    code: int | None = None  # None: downloaded
    message: str | None = None
    size: int | None = None
    encoding: str | None = None
    unexpected: bool = False  # not the document's fault: the row stays due

    @property
    def ok(self) -> bool:
        return self.code is None and not self.unexpected


STAGE = Stage(
    name="iati.download",
    table="iati.document",
    alias="d",
    due="d.downloaded IS NULL AND (d.download_error IS NULL OR (:retry AND d.download_error <> 4))",
    columns="d.id, d.hash, d.cached_dataset_url",
    order="d.first_seen, d.id",
    params={"retry": False},
)


def mark_without_source(sql: Sql, retry_errors: bool) -> list[tuple[str, str | None]]:
    """Give code 4 to due documents that cannot be downloaded (no URL or no hash)."""
    rows = sql.all(
        f"""
        UPDATE iati.document d SET download_error = 4, download_error_message = :message
        WHERE {STAGE.due} AND (coalesce(d.cached_dataset_url, '') = '' OR d.hash = '')
        RETURNING d.id, d.name
        """,
        {"message": NO_SOURCE_MESSAGE, "retry": retry_errors},
    )
    return [(r[0], r[1]) for r in rows]


def fetch_document(
    session: requests.Session, store: BlobStore, doc: DueDocument, max_bytes: int
) -> DownloadOutcome:
    """Download one document; every failure becomes an ``Outcome``, never an exception."""
    key = source_key(doc.hash)
    url = doc.url or ""
    try:
        result = download_to_blob(session, url, store, key, max_bytes=max_bytes)
    except FetchError as exc:
        return DownloadOutcome(doc.id, doc.hash, doc.url, error_code(exc), str(exc))
    except Exception as exc:  # the store or a bug, not the document
        return DownloadOutcome(
            doc.id, doc.hash, doc.url, None, f"{type(exc).__name__}: {exc}", unexpected=True
        )
    encoding = detect_encoding(result.head, complete=result.size <= HEAD_BYTES)
    if encoding is None:
        try:
            store.delete(key)
        except Exception as exc:
            log.warning("could not remove %s after a charset error: %s", key, exc)
        what = "empty file" if result.size == 0 else "character encoding undetectable"
        kind = f", Content-Type {result.content_type}" if result.content_type else ""
        return DownloadOutcome(
            doc.id, doc.hash, doc.url, CHARSET_ERROR, f"{what} ({result.size} bytes{kind})"
        )
    return DownloadOutcome(doc.id, doc.hash, doc.url, size=result.size, encoding=encoding)


def record_outcomes(sql: Sql, outcomes: Sequence[DownloadOutcome]) -> None:
    """Write a batch back; the hash guard ignores documents whose hash changed meanwhile."""
    done = [(o.id, o.hash, o.size, o.encoding) for o in outcomes if o.ok]
    failed = [(o.id, o.hash, o.code, (o.message or "")[:2000]) for o in outcomes if o.code is not None]
    sql.values(
        """
        UPDATE iati.document d SET downloaded = now(), download_error = NULL, download_error_message = NULL,
            download_attempts = d.download_attempts + 1, download_size = v.size, download_encoding = v.encoding
        FROM (VALUES %s) AS v (id, hash, size, encoding)
        WHERE d.id = v.id AND d.hash = v.hash
        """,
        done,
        template="(%s, %s, %s::bigint, %s)",
    )
    sql.values(
        """
        UPDATE iati.document d SET download_error = v.code, download_error_message = v.message,
            download_attempts = d.download_attempts + 1
        FROM (VALUES %s) AS v (id, hash, code, message)
        WHERE d.id = v.id AND d.hash = v.hash
        """,
        failed,
        template="(%s, %s, %s::integer, %s)",
    )


def _outcome(result: DownloadOutcome) -> Outcome:
    if result.unexpected:
        return Outcome(result.id, "left_due", error="unexpected", message=result.message or "", data=result)
    if result.code is not None:
        return Outcome(
            result.id, "error", error=error_label(result.code), message=result.message or "", data=result
        )
    return Outcome(result.id, "downloaded", data=result, counts={"bytes": result.size or 0})


def download_due(
    engine: sa.Engine,
    session: requests.Session,
    store: BlobStore,
    *,
    workers: int = 10,
    retry_errors: bool = False,
    limit: int | None = None,
    max_bytes: int = 500 * 1024 * 1024,
    batch_size: int = BATCH_SIZE,
    run_id: str = "",
    progress: Progress = log.info,
) -> tuple[StageReport, list[tuple[str, str | None]]]:
    """Download everything due; returns the report and the documents newly given code 4."""
    with engine.begin() as conn:
        without_source = mark_without_source(Sql(conn), retry_errors)
    if without_source:
        progress(f"{len(without_source)} documents without a cached URL or hash (code 4)")
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="iati-download")

    def process(rows: Sequence[sa.Row]) -> list[Outcome]:
        docs = [DueDocument(row.id, row.hash, row.cached_dataset_url) for row in rows]
        futures = [pool.submit(fetch_document, session, store, doc, max_bytes) for doc in docs]
        return [_outcome(future.result()) for future in futures]

    try:
        report = run_stage(
            engine,
            STAGE,
            process,
            lambda conn, outcomes: record_outcomes(Sql(conn), [o.data for o in outcomes]),
            params={"retry": retry_errors},
            batch_size=batch_size,
            limit=limit,
            run_id=run_id,
            progress=progress,
        )
    finally:
        # On an error (the database went away, the run was stopped) queued downloads are
        # dropped instead of finishing first; their rows simply stay due for the next run.
        pool.shutdown(wait=True, cancel_futures=True)
    report.counts["no_source"] = len(without_source)
    return report, without_source
