"""The data store's jobs and schedules: the nightly source run (the legacy's Jenkins tasks), the
upload jobs, and the hourly look for uploads stuck mid-load."""

import dagster as dg

from ecr_pipelines.automation import service_tags
from ecr_pipelines.datastore.defs.sources import GROUP, SOURCE_KEYS, source_file_assets
from ecr_pipelines.datastore.defs.uploads import (
    datastore_fail_stuck_uploads,
    datastore_upload_tables,
    datastore_uploads,
)

SERVICE = GROUP
SERVICE_TAG = service_tags(SERVICE)
# The source runs and the upload runs never wait for each other: each sensor only looks for runs
# of its own part.
PART_TAG = "datastore/part"
SOURCES_TAGS = {**SERVICE_TAG, PART_TAG: "sources"}
UPLOADS_TAGS = {**SERVICE_TAG, PART_TAG: "uploads"}

SOURCES_SELECTION = dg.AssetSelection.assets(*SOURCE_KEYS.values()) | dg.AssetSelection.assets(
    *source_file_assets
)

datastore_sources_job = dg.define_asset_job(
    "datastore_sources_job",
    selection=SOURCES_SELECTION,
    description=(
        "Every data store source: download the newest file of Companies House accounts, HMRC exporters and "
        "the ONS postcode directory when it is new, then load every stored file not yet processed into its "
        "L0/L1 tables (and SPIRE, and the World Bank tariff transform when an input changed). "
        "ops.<source op>.config.force reloads a source's files."
    ),
    tags=SOURCES_TAGS,
)

datastore_uploads_job = dg.define_asset_job(
    "datastore_uploads_job",
    selection=dg.AssetSelection.assets(datastore_uploads, datastore_upload_tables),
    description=(
        "Register the CSV files put under datastore/uploads/<org>/<dataset>/, check them and infer their "
        "column types, then load the verified ones (datastore_uploads_sensor starts it)."
    ),
    tags=UPLOADS_TAGS,
)

datastore_upload_job = dg.define_asset_job(
    "datastore_upload_job",
    selection=dg.AssetSelection.assets(datastore_upload_tables),
    description=(
        'Verify one uploaded file and load it into "<org>.<dataset>"."L0": '
        "ops.datastore__upload_tables.config.file (its id or blob key) and column_types ({column: integer|"
        "numeric|boolean|date|timestamp|text}, overriding the inferred ones). The same on an older file "
        "restores that version."
    ),
    tags=UPLOADS_TAGS,
)


@dg.job(
    tags=SERVICE_TAG,
    description="Mark uploads stuck in verified or processing for more than 24 hours as failed.",
)
def datastore_stuck_uploads_job() -> None:
    datastore_fail_stuck_uploads()


datastore_nightly_schedule = dg.ScheduleDefinition(
    name="datastore_nightly_schedule",
    job=datastore_sources_job,
    cron_schedule="0 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "01:00 UTC daily: the legacy's nightly Jenkins tasks (datafiles_to_s3_by_source, then "
        "datafiles_to_db_by_source --all): new downloads, and every due or failed file tried again."
    ),
)

datastore_stuck_uploads_schedule = dg.ScheduleDefinition(
    name="datastore_stuck_uploads_schedule",
    job=datastore_stuck_uploads_job,
    cron_schedule="17 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly, as the legacy's scheduler: uploads stuck for more than 24 hours are marked failed.",
)
