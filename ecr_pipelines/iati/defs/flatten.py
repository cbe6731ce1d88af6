"""``iati_flattened_activities``: the flatten stage (``ecr_pipelines.iati.stages.flatten``)."""

import dagster as dg
import sqlalchemy as sa

from ecr_pipelines.iati.defs.sync import GROUP
from ecr_pipelines.iati.stages.flatten import run_flatten
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines.stages import ProcessesConfig, RetryBatchConfig, log_stage, row_count, stage_metadata

CLEAN_FILES = dg.AssetKey("iati_clean_files")


class FlattenConfig(RetryBatchConfig, ProcessesConfig):
    """Run config of the flatten stage (ops.iati_flattened_activities.config)."""


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "xml"},
    deps=[CLEAN_FILES],
    pool="iati_flatten",
    description=(
        "Flattened activities of every cleaned IATI document (iati.document.flattened_activities, jsonb): one "
        "flat dict per activity, exactly as the refresher's Flattener wrote them (ecr_pipelines.iati.flatten), "
        "streamed from iati/clean/<hash>.xml. Legacy columns flatten_start / flatten_end / flatten_api_error "
        "(1 = the file could not be flattened; retried with retry_errors, which the retry schedule sets). A "
        "document whose clean file is missing goes back to download and clean."
    ),
)
def iati_flattened_activities(
    context: dg.AssetExecutionContext,
    config: FlattenConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
) -> dg.MaterializeResult:
    report = run_flatten(
        db.engine,
        blobs.store,
        batch_size=config.batch_size,
        limit=config.limit,
        retry_errors=config.retry_errors,
        processes=config.processes,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    total = row_count(db, "SELECT count(*) FROM iati.document WHERE flatten_end IS NOT NULL")
    return dg.MaterializeResult(metadata=stage_metadata(report, total))


@dg.asset_check(
    asset=iati_flattened_activities,
    description="No document is both flattened (flatten_end) and failed (flatten_api_error).",
)
def iati_flatten_outcome_exclusive(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, hash FROM iati.document WHERE flatten_end IS NOT NULL AND flatten_api_error IS NOT NULL "
                "ORDER BY id LIMIT 20"
            )
        ).all()
    return dg.AssetCheckResult(
        passed=not rows, metadata={"both": len(rows), "preview": md_table(["id", "hash"], rows)}
    )


flatten_checks = [iati_flatten_outcome_exclusive]
