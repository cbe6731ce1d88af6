"""Data store (group ``datastore``): public source files and CSV uploads into object storage and
Postgres, file by file, with L0/L1 tables.

datastore_nightly_schedule / datastore_files_sensor → datastore_sources_job: for the three
downloaded sources a ``files`` asset fetches the newest file, then every source's asset loads its
due files (``operations.datafile_registry``); datastore_uploads_sensor → datastore_uploads_job:
uploads registered and checked (``datastore.pipeline_data_file``), verified ones loaded;
datastore_upload_job verifies one file with its column types and loads it;
datastore_stuck_uploads_schedule fails uploads stuck for a day.
"""

import dagster as dg

from ecr_pipelines.datastore.defs import uploads
from ecr_pipelines.datastore.defs.jobs import (
    datastore_nightly_schedule,
    datastore_sources_job,
    datastore_stuck_uploads_job,
    datastore_stuck_uploads_schedule,
    datastore_upload_job,
    datastore_uploads_job,
)
from ecr_pipelines.datastore.defs.resources import build_datastore_resources
from ecr_pipelines.datastore.defs.sensors import datastore_files_sensor, datastore_uploads_sensor
from ecr_pipelines.datastore.defs.sources import source_file_assets, source_table_assets

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions(
    assets=[
        *source_file_assets,
        *source_table_assets,
        uploads.datastore_uploads,
        uploads.datastore_upload_tables,
    ],
    asset_checks=uploads.uploads_checks,
    jobs=[
        datastore_sources_job,
        datastore_uploads_job,
        datastore_upload_job,
        datastore_stuck_uploads_job,
    ],
    schedules=[datastore_nightly_schedule, datastore_stuck_uploads_schedule],
    sensors=[datastore_files_sensor, datastore_uploads_sensor],
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resources configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=build_datastore_resources()))
