"""``ckan_packages``: the queued requests of one queue built, stored, mailed and counted
(``ecr_pipelines.ckan.stages.packages``)."""

from typing import Literal

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check, stored_blobs_check
from ecr_pipelines.ckan.defs.resources import CkanResource
from ecr_pipelines.ckan.stages.packages import BATCH_SIZE, package_due
from ecr_pipelines.ckan.stages.requests import admit
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource
from ecr_pipelines.stages import BatchConfig, log_stage, send_queued_mail, stage_metadata

GROUP = "ckan"
BLOB_SAMPLE = 25
QUEUE_TAG = "ckan/queue"


class CkanPackagesConfig(BatchConfig):
    """Run config of the packaging (ops.ckan_packages.config)."""

    speed: Literal["fast", "slow"] = Field(
        default="fast", description="The queue this run drains: fast or slow (ckan_queue_sensor sets it)."
    )
    batch_size: int = Field(default=BATCH_SIZE, description="Requests per claim and commit.")


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    description=(
        "CKAN download packages: every queued request of one queue (run config speed: fast or slow, the "
        "legacy's two Celery queues) is validated again, served from a package of the same request younger "
        "than CKAN_CACHE_TIME or streamed from CKAN into a ZIP in the blob store (ckan/packages/), and "
        "mailed to the requester after its commit; failures are mailed a short notice. Each request counts "
        "in the legacy statistics (ckan.requests, ckan.errors, ckan.totals). A fast run first admits rows "
        "that other systems inserted without a cache key or speed. One failing request never fails the others."
    ),
)
def ckan_packages(
    context: dg.AssetExecutionContext,
    config: CkanPackagesConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    http: HttpResource,
    mail: MailResource,
    ckan: CkanResource,
) -> dg.MaterializeResult:
    admitted = refused = 0
    if config.speed == "fast":
        admission = admit(db.engine, slow_request=ckan.slow_request, cache_time=ckan.cache_time)
        admitted, refused = admission.admitted, len(admission.refused)
        for request_id, reason in admission.refused:
            context.log.warning(f"request {request_id} refused: {reason}")
    report = package_due(
        db.engine,
        http.session(),
        blobs.store,
        ckan.settings(max_bytes=http.max_download_bytes),
        speed=config.speed,
        after_commit=lambda _outcomes: send_queued_mail(context.log, db, mail),
        limit=config.limit,
        batch_size=config.batch_size,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    with db.connect() as conn:
        stored, queued = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM ckan.package WHERE deleted IS NULL), "
            "(SELECT count(*) FROM ckan.package_request WHERE status IN ('queued', 'running'))"
        ).one()
        newest = conn.exec_driver_sql(
            "SELECT r.id, r.kind, r.status, r.resource_id, coalesce(p.zip_file_name, ''), r.rows, "
            "coalesce(r.error_kind, '') FROM ckan.package_request r LEFT JOIN ckan.package p ON p.id = r.package_id "
            "ORDER BY r.id DESC LIMIT 10"
        ).all()
    return dg.MaterializeResult(
        metadata=stage_metadata(
            report,
            stored,
            queue=config.speed,
            admitted=admitted,
            refused_on_admission=refused,
            packages_stored=stored,
            requests_waiting=queued,
            newest_requests=md_table(["id", "kind", "status", "resource", "zip", "rows", "error"], newest),
        )
    )


@dg.asset_check(
    asset=ckan_packages,
    description=(
        "No request is left 'running' without a live run holding it (warns: the next run of its queue "
        "builds it again)."
    ),
)
def ckan_no_orphaned_requests(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT r.id, r.kind, r.resource_id, r.started FROM ckan.package_request r WHERE r.status = 'running' "
        "AND NOT EXISTS (SELECT 1 FROM pipeline.stage_claim c JOIN pg_stat_activity a "
        "ON a.pid = c.owner_pid AND a.backend_start = c.owner_started "
        "WHERE c.stage = 'ckan_package' AND c.item = r.id::text) ORDER BY r.id",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=ckan_packages,
    description=f"The {BLOB_SAMPLE} newest packages that are kept have their ZIP in the blob store.",
)
def ckan_packages_stored(db: DatabaseResource, blobs: BlobStoreResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT id, blob_key FROM ckan.package WHERE deleted IS NULL ORDER BY created DESC LIMIT {BLOB_SAMPLE}"
        ).all()
    return stored_blobs_check(blobs.store, rows, item="package")


@dg.asset_check(
    asset=ckan_packages,
    description="No request that ended still holds a per-request CKAN API key.",
)
def ckan_no_api_key_kept(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT id, kind, status, finished FROM ckan.package_request "
        "WHERE status IN ('done', 'failed') AND api_key IS NOT NULL ORDER BY id",
    )


packages_checks = [ckan_no_orphaned_requests, ckan_packages_stored, ckan_no_api_key_kept]
