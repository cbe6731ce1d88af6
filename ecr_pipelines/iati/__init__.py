"""IATI (group ``iati``): the refresher's stages as assets.

sync (Bulk Data Service or the legacy CKAN registry) → download → validate → safety check →
clean → flatten and activity lake → Solr, with the index ETag sensor, the daily retry-errors
schedule and the operator's unflag job.
"""

import dagster as dg

from ecr_pipelines.iati import index_assets, validation_assets
from ecr_pipelines.iati.assets import iati_source_files, iati_sync
from ecr_pipelines.iati.checks import iati_checks
from ecr_pipelines.iati.jobs import iati_job, iati_refresh_job, iati_retry_errors_schedule
from ecr_pipelines.iati.resources import build_iati_resource
from ecr_pipelines.iati.sensors import iati_index_sensor

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[iati_sync, iati_source_files],
        asset_checks=iati_checks,
        jobs=[iati_refresh_job, iati_job],
        schedules=[iati_retry_errors_schedule],
        sensors=[iati_index_sensor],
    ),
    validation_assets.validation_defs,
    index_assets.index_defs,
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resources configured from the current environment."""
    resources = {
        "iati": build_iati_resource(),
        **validation_assets.build_validation_resources(),
        **index_assets.build_index_resources(),
    }
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=resources))
