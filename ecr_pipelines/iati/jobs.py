"""The IATI refresh job and its daily "retry errors" schedule."""

import dagster as dg

from ecr_pipelines.iati.assets import DOCUMENTS, PUBLISHERS, iati_source_files

TIMEZONE = "Europe/Copenhagen"
SERVICE_TAG = {"ecr/service": "iati"}
RETRY_ERRORS_CONFIG = {"ops": {"iati_source_files": {"config": {"retry_errors": True}}}}

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

iati_retry_errors_schedule = dg.ScheduleDefinition(
    name="iati_retry_errors_schedule",
    job=iati_refresh_job,
    cron_schedule="30 4 * * *",
    execution_timezone=TIMEZONE,
    run_config=RETRY_ERRORS_CONFIG,
    description=(
        "Daily refresh in retry-errors mode: documents whose download failed (any code but 4, no cached "
        "URL) are downloaded again, as the refresher did every 30 loops."
    ),
)

iati_job = dg.define_asset_job(
    "iati_job",
    selection=dg.AssetSelection.groups("iati"),
    description=(
        "Every IATI stage in order: sync, download, validate, safety check, clean (and the later "
        "stages as they exist). Each stage works on the documents that are due, so re-running is safe."
    ),
    tags=SERVICE_TAG,
)
