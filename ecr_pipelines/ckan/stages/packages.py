"""The packaging stage: every queued request of one queue built, stored, mailed and counted (no
Dagster).

One item is one ``ckan.package_request`` row of the run's queue (``fast`` or ``slow``, the
legacy's two Celery queues). For each: validate it again (a row may come from another system),
reuse a stored package of the same request younger than ``CKAN_CACHE_TIME`` or build one into
the blob store (``ckan/packages/<cache key>-<request id>.zip``, so a run that crashed mid-way
rebuilds the same object), then, in one transaction, mark the request done or failed, record the
package, count the request or the error in the legacy statistics and queue the mail. The mail is
sent after that commit (``committed``), once. A request that fails is the requester's alone: the
others of the run go on.
"""

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.ckan import statistics
from ecr_pipelines.ckan.datastore import DEFAULT_PAGE_SIZE, DEFAULT_WORKERS, DatastoreError
from ecr_pipelines.ckan.dwc import DwcConfig
from ecr_pipelines.ckan.formats import FormatError
from ecr_pipelines.ckan.mails import MailTemplates, ckan_host, failure_mail, package_mail
from ecr_pipelines.ckan.package import BadRequest, PackageRequest, store_package
from ecr_pipelines.ckan.stages.requests import DEFAULT_CACHE_TIME, live_package, request_of
from ecr_pipelines.lib.batch import Outcome, Stage, StageReport, clip, per_item, run_stage
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import FetchError
from ecr_pipelines.lib.outbox import queue_mail

log = logging.getLogger(__name__)

PREFIX = "ckan/packages/"
DEFAULT_TTL_DAYS = 7
QUEUES = ("fast", "slow")
# Each request is committed (and mailed) on its own: a 10-row download never waits for the
# 3 M-row one queued before it in the same run to be recorded.
BATCH_SIZE = 1

STAGE = Stage(
    name="ckan_package",
    table="ckan.package_request",
    # "running" with no live claim is a request whose run died mid-way: it is built again.
    due="t.status IN ('queued', 'running') AND t.speed = :speed",
    columns="t.id, t.kind, t.resource_id, t.email, t.params, t.api_key",
    order="t.id",
    on_claim="status = 'running', started = now()",
    params={"speed": "fast"},
)


@dataclass(frozen=True)
class PackagerSettings:
    """How requests are built and answered; the Dagster resource fills it from the environment."""

    api_key: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    cache_time: int = DEFAULT_CACHE_TIME
    ttl_days: int = DEFAULT_TTL_DAYS
    download_url_template: str | None = None
    workers: int = DEFAULT_WORKERS
    max_bytes: int | None = None
    anonymize_emails: bool = False
    templates: MailTemplates = field(default_factory=MailTemplates)
    dwc_config: DwcConfig | None = None


def package_key(cache_key: str, request_id: int) -> str:
    return f"{PREFIX}{cache_key}-{request_id}.zip"


def download_url(
    store: BlobStore, settings: PackagerSettings, key: str, *, ckan_host: str, age_seconds: float = 0.0
) -> str:
    """The link in the mail: a presigned URL that lives as long as the package is kept, or the
    deployment's template for a store without them (a local folder), or the blob's own URI."""
    remaining = settings.ttl_days * 86_400 - int(age_seconds)
    presigned = store.presigned_url(key, max(remaining, 3600))
    if presigned:
        return presigned
    name = PurePosixPath(key).name
    if settings.download_url_template:
        return settings.download_url_template.format(zip_file_name=name, key=key, ckan_host=ckan_host)
    return store.uri(key)


@dataclass
class Result:
    """What ``record`` writes for one request (``Outcome.data``)."""

    request_id: int
    resource_id: str
    email: str
    count: int | None = None  # the request's limit: the legacy statistics' `count`
    package_id: int | None = None  # set: a cached package was reused
    blob_key: str | None = None
    zip_file_name: str | None = None
    cache_key: str | None = None
    zip_bytes: int = 0
    rows: int | None = None
    pinned: bool = False
    mail: tuple[str, str, str] | None = None  # subject, text, html
    trace: str = ""


def _failed(
    row: Any, kind: str, message: str, host: str, settings: PackagerSettings, trace: str = ""
) -> Outcome:
    result = Result(row.id, row.resource_id, row.email, trace=trace or message)
    result.mail = failure_mail(settings.templates, resource_id=row.resource_id, ckan_host=host, error=message)
    return Outcome(str(row.id), "failed", error=kind, message=clip(message), data=result)


def build_one(
    row: Any,
    *,
    engine: Engine,
    session: requests.Session,
    store: BlobStore,
    settings: PackagerSettings,
    progress: Callable[[str], None] = log.info,
) -> Outcome:
    """One request: cached package or a new one; never raises for the request's own trouble."""
    try:
        pkg = request_of(row)
    except BadRequest as exc:
        return _failed(row, "bad_request", str(exc), ckan_host(row.params or {}), settings)
    host = ckan_host(pkg.params)
    result = Result(
        row.id,
        str(pkg.params["resource_id"]),
        str(pkg.params["email"]),
        count=pkg.params.get("limit"),
        cache_key=pkg.cache_key,
        pinned=bool(pkg.params.get("for_gbif")),
    )
    doi = str(pkg.params.get("doi") or "")
    with engine.connect() as conn:
        hit = live_package(conn, pkg.cache_key, settings.cache_time)
    if hit is not None:
        result.package_id, result.blob_key, result.zip_file_name, result.rows = (
            hit.id,
            hit.blob_key,
            hit.zip_file_name,
            hit.rows,
        )
        url = download_url(store, settings, hit.blob_key, ckan_host=host, age_seconds=float(hit.age))
        result.mail = package_mail(
            settings.templates,
            resource_id=result.resource_id,
            zip_file_name=hit.zip_file_name,
            ckan_host=host,
            doi=doi,
            download_url=url,
        )
        progress(f"request {row.id}: found in cache ({hit.zip_file_name})")
        return Outcome(str(row.id), "cached", message=f"package {hit.id} reused", data=result)

    key = package_key(pkg.cache_key, row.id)
    build = _with_portal_key(pkg, settings.api_key)
    what = pkg.kind if pkg.kind == "url" else f"{pkg.kind}, {pkg.format}"
    started = f"request {row.id} ({what}, resource {result.resource_id})"
    progress(f"{started}: building")
    try:
        report = store_package(
            build,
            session,
            store,
            key,
            page_size=settings.page_size,
            workers=settings.workers,
            max_bytes=settings.max_bytes,
            dwc_config=settings.dwc_config,
            progress=_throttled(progress, started),
        )
    except (DatastoreError, FetchError, FormatError) as exc:
        return _failed(row, str(exc.kind), str(exc), host, settings)
    except BadRequest as exc:
        return _failed(row, "bad_request", str(exc), host, settings)
    except Exception as exc:  # one request's trouble never fails the run: recorded with its trace
        log.exception("request %s failed", row.id)
        return _failed(
            row, "internal", f"{type(exc).__name__}: {exc}", host, settings, traceback.format_exc()
        )
    result.blob_key, result.zip_file_name = key, PurePosixPath(key).name
    result.zip_bytes, result.rows = report.zip_bytes, report.rows if report.kind != "url" else None
    result.mail = package_mail(
        settings.templates,
        resource_id=result.resource_id,
        zip_file_name=result.zip_file_name,
        ckan_host=host,
        doi=doi,
        download_url=download_url(store, settings, key, ckan_host=host),
    )
    size = (
        f"{report.source_bytes:,} bytes"
        if report.kind == "url"
        else f"{report.rows:,} rows ({report.rows_per_second:,.0f} rows/s)"
    )
    progress(f"{started}: {size}, {report.zip_bytes:,} bytes zipped in {report.seconds:.1f} s")
    return Outcome(
        str(row.id),
        "done",
        data=result,
        counts={"rows": report.rows, "zip_bytes": report.zip_bytes, "calls": report.calls},
    )


def _with_portal_key(pkg: PackageRequest, api_key: str | None) -> PackageRequest:
    """The request with the deployment's CKAN key when it brought none (the cache key is the
    request's own, so the portal key never splits or merges cache entries)."""
    if pkg.params.get("key") or not api_key:
        return pkg
    return replace(pkg, params={**pkg.params, "key": api_key})


def _throttled(
    progress: Callable[[str], None], label: str, every_rows: int = 250_000
) -> Callable[[Any], None]:
    next_at = [every_rows]

    def report(package_report: Any) -> None:
        if package_report.rows >= next_at[0]:
            next_at[0] = package_report.rows + every_rows
            progress(f"{label}: {package_report.rows:,} rows so far")

    return report


def record(conn: Connection, outcomes: Sequence[Outcome], *, settings: PackagerSettings, run_id: str) -> None:
    """Request status, package, statistics and mail of each outcome, in the caller's transaction."""
    for outcome in outcomes:
        result: Result = outcome.data
        if outcome.error is None:
            package_id = result.package_id
            if package_id is None:
                package_id = conn.execute(
                    sa.text(
                        "INSERT INTO ckan.package (cache_key, blob_key, zip_file_name, bytes, rows, pinned) "
                        "VALUES (:cache_key, :blob_key, :name, :bytes, :rows, :pinned) "
                        "ON CONFLICT (blob_key) DO UPDATE SET bytes = EXCLUDED.bytes, rows = EXCLUDED.rows, "
                        "pinned = EXCLUDED.pinned, created = now(), deleted = NULL RETURNING id"
                    ),
                    {
                        "cache_key": result.cache_key,
                        "blob_key": result.blob_key,
                        "name": result.zip_file_name,
                        "bytes": result.zip_bytes,
                        "rows": result.rows,
                        "pinned": result.pinned,
                    },
                ).scalar_one()
            conn.execute(
                sa.text(
                    "UPDATE ckan.package_request SET status = 'done', package_id = :package, cached = :cached, "
                    "rows = :rows, error = NULL, error_kind = NULL, api_key = NULL, finished = now() WHERE id = :id"
                ),
                {
                    "id": result.request_id,
                    "package": package_id,
                    "cached": outcome.kind == "cached",
                    "rows": result.rows,
                },
            )
            statistics.log_request(
                conn,
                resource_id=result.resource_id,
                email=result.email,
                count=result.count,
                anonymize=settings.anonymize_emails,
            )
        else:
            conn.execute(
                sa.text(
                    "UPDATE ckan.package_request SET status = 'failed', error = :error, error_kind = :kind, "
                    "api_key = NULL, finished = now() WHERE id = :id"
                ),
                {"id": result.request_id, "error": outcome.message, "kind": outcome.error},
            )
            statistics.log_error(
                conn,
                resource_id=result.resource_id,
                email=result.email,
                message=clip(result.trace, 20_000),
                anonymize=settings.anonymize_emails,
            )
        if result.mail is not None:
            subject, text, html = result.mail
            queue_mail(
                conn, f"ckan/request/{result.request_id}/{run_id}", [result.email], subject, text, html
            )


def refused(outcome: Outcome, error: BaseException) -> Outcome:
    """A result the database would not take (a NUL byte in CKAN's error text, say): the request
    fails with that reason instead of staying due for ever."""
    result: Result = outcome.data
    message = f"the database refused this request's result: {type(error).__name__}"
    clean = [value.replace("\x00", "") for value in (result.resource_id, result.email)]
    failed = Result(result.request_id, clean[0], clean[1], trace=message)
    return Outcome(outcome.key, "failed", error="refused", message=message, data=failed)


def package_due(
    engine: Engine,
    session: requests.Session,
    store: BlobStore,
    settings: PackagerSettings,
    *,
    speed: str,
    after_commit: Callable[[list[Outcome]], None] | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    run_id: str = "",
    progress: Callable[[str], None] = log.info,
) -> StageReport:
    """Build every due request of queue ``speed``."""
    if speed not in QUEUES:
        raise ValueError(f"speed must be one of {', '.join(QUEUES)}, not {speed!r}")
    report = StageReport(f"{STAGE.name}_{speed}")
    return run_stage(
        engine,
        STAGE,
        per_item(
            lambda row: build_one(
                row, engine=engine, session=session, store=store, settings=settings, progress=progress
            )
        ),
        lambda conn, outcomes: record(conn, outcomes, settings=settings, run_id=run_id),
        params={"speed": speed},
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
        report=report,
        refused=refused,
        committed=after_commit,
    )
