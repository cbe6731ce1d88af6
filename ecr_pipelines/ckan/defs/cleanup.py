"""``ckan_cleanup_job``: the daily deletion of expired packages (``ecr_pipelines.ckan.stages.cleanup``)."""

import dagster as dg

from ecr_pipelines.ckan.defs.resources import CkanResource
from ecr_pipelines.ckan.stages.cleanup import delete_expired
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource


@dg.op(
    description=(
        "Delete the packages older than CKAN_PACKAGE_TTL_DAYS from the blob store and mark them deleted in "
        "ckan.package (the cache stops offering them); pinned packages (GBIF exports) are kept, as the "
        "legacy's caretaker kept its symlinked export. A package the store refuses to delete is kept and "
        "tried again the next day."
    )
)
def ckan_delete_expired_packages(
    context: dg.OpExecutionContext, db: DatabaseResource, blobs: BlobStoreResource, ckan: CkanResource
) -> dg.Output[int]:
    report = delete_expired(db.engine, blobs.store, ckan.package_ttl_days)
    context.log.info(
        f"{report.deleted} packages older than {ckan.package_ttl_days} days deleted "
        f"({report.freed_bytes:,} bytes), {report.kept_pinned} pinned kept, {len(report.failed)} failed"
    )
    for key, error in report.failed:
        context.log.warning(f"{key} not deleted (tried again tomorrow): {error}")
    return dg.Output(
        report.deleted,
        metadata={
            "deleted": report.deleted,
            "freed_bytes": report.freed_bytes,
            "kept_pinned": report.kept_pinned,
            "failed": len(report.failed),
            "failures": md_table(["key", "error"], report.failed),
        },
    )
