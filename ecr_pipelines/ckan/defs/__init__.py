"""CKAN packager (group ``ckan``): download requests queued, built into ZIPs, stored, mailed,
cached and counted.

ckan_request_job (or a row from another system) → ckan.package_request → ckan_queue_sensor →
ckan_packages_job per queue (ckan_packages, then ckan_statistics); ckan_daily_cleanup_schedule
deletes expired packages.
"""

import dagster as dg

from ecr_pipelines.ckan.defs import packages, statistics
from ecr_pipelines.ckan.defs.jobs import (
    ckan_cleanup_job,
    ckan_daily_cleanup_schedule,
    ckan_packages_job,
    ckan_request_job,
)
from ecr_pipelines.ckan.defs.resources import build_ckan_resources
from ecr_pipelines.ckan.defs.sensors import ckan_queue_sensor

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions(
    assets=[packages.ckan_packages, statistics.ckan_statistics],
    asset_checks=[*packages.packages_checks, *statistics.statistics_checks],
    jobs=[ckan_packages_job, ckan_request_job, ckan_cleanup_job],
    schedules=[ckan_daily_cleanup_schedule],
    sensors=[ckan_queue_sensor],
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resources configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=build_ckan_resources()))
