"""IATI (group ``iati``): the refresher's stages as assets.

sync (Bulk Data Service or the legacy CKAN registry) → download → validate → safety check →
clean → flatten and activity lake → Solr; the index sensor refreshes on every index change, the
work sensor runs the stages whenever documents are due, the retry schedule retries failures every
30 minutes, and the unflag job clears a black flag.
"""

import dagster as dg

from ecr_pipelines.iati.defs import clean, download, flatten, lake, safety, solr, sync, validate
from ecr_pipelines.iati.defs.jobs import (
    iati_job,
    iati_refresh_job,
    iati_retry_errors_schedule,
    iati_stages_job,
)
from ecr_pipelines.iati.defs.resources import build_iati_resources
from ecr_pipelines.iati.defs.sensors import iati_index_sensor, iati_work_sensor

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions(
    assets=[
        sync.iati_sync,
        download.iati_source_files,
        validate.iati_validation_reports,
        safety.iati_publisher_flags,
        clean.iati_clean_files,
        flatten.iati_flattened_activities,
        lake.iati_activity_lake,
        solr.iati_solr_index,
    ],
    asset_checks=[
        *sync.sync_checks,
        *download.download_checks,
        *validate.validate_checks,
        *safety.safety_checks,
        *clean.clean_checks,
        *flatten.flatten_checks,
        *lake.lake_checks,
        *solr.solr_checks,
    ],
    jobs=[iati_refresh_job, iati_stages_job, iati_job, safety.iati_unflag_publisher_job],
    schedules=[iati_retry_errors_schedule],
    sensors=[iati_index_sensor, iati_work_sensor],
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resources configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=build_iati_resources()))
