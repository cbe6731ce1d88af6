"""The IATI jobs and the schedule that retries failed documents."""

import dagster as dg

from ecr_pipelines.automation import service_tags
from ecr_pipelines.iati.defs.download import iati_source_files
from ecr_pipelines.iati.defs.sync import DOCUMENTS, PUBLISHERS

SERVICE = "iati"
SERVICE_TAG = service_tags(SERVICE)
# The legacy retried failed downloads about every 30 minutes; clean, flatten and Solr errors were
# retried every loop. One schedule retries them all on the download cadence.
RETRY_ERRORS_CONFIG = {
    "ops": {
        asset: {"config": {"retry_errors": True}}
        for asset in ("iati_source_files", "iati_clean_files", "iati_flattened_activities", "iati_solr_index")
    }
}

iati_refresh_job = dg.define_asset_job(
    "iati_refresh_job",
    selection=dg.AssetSelection.assets(PUBLISHERS, DOCUMENTS, iati_source_files),
    description=(
        "Sync IATI publishers and documents from the index (IATI_SOURCE), then download every due "
        "document. Run config: ops.iati_sync.config.ignore_safety_valve (accept an index much smaller "
        "than what is stored), ops.iati_source_files.config.retry_errors / limit / workers."
    ),
    tags=SERVICE_TAG,
)

iati_stages_job = dg.define_asset_job(
    "iati_stages_job",
    selection=dg.AssetSelection.groups(SERVICE) - dg.AssetSelection.assets(PUBLISHERS, DOCUMENTS),
    description=(
        "Every IATI stage after the sync, in order: download, validate, safety check, clean, flatten, "
        "lake, Solr. Each stage works on the documents that are due, so re-running is safe; "
        "iati_work_sensor launches it whenever a stage has due work."
    ),
    tags=SERVICE_TAG,
)

iati_job = dg.define_asset_job(
    "iati_job",
    selection=dg.AssetSelection.groups(SERVICE),
    description=(
        "Every IATI stage in order: sync, download, validate, safety check, clean, flatten, lake, Solr. "
        "Each stage works on the documents that are due, so re-running is safe."
    ),
    tags=SERVICE_TAG,
)

iati_retry_errors_schedule = dg.ScheduleDefinition(
    name="iati_retry_errors_schedule",
    job=iati_stages_job,
    cron_schedule="*/30 * * * *",
    execution_timezone="UTC",
    run_config=RETRY_ERRORS_CONFIG,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Every 30 minutes, the IATI stages in retry-errors mode: failed downloads (any code but 4), "
        "clean, flatten and Solr errors are tried again (the refresher's cadence for downloads)."
    ),
)
