"""IATI (group ``iati``): publisher and document sync from the Bulk Data Service or the legacy
CKAN registry, source downloads, the index ETag sensor and the daily retry-errors schedule."""

import dagster as dg

from ecr_pipelines.iati.assets import iati_source_files, iati_sync
from ecr_pipelines.iati.checks import iati_checks
from ecr_pipelines.iati.jobs import iati_refresh_job, iati_retry_errors_schedule
from ecr_pipelines.iati.resources import build_iati_resource
from ecr_pipelines.iati.sensors import iati_index_sensor

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions(
    assets=[iati_sync, iati_source_files],
    asset_checks=iati_checks,
    jobs=[iati_refresh_job],
    schedules=[iati_retry_errors_schedule],
    sensors=[iati_index_sensor],
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resource configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources={"iati": build_iati_resource()}))
