"""The CKAN packager's jobs and the daily clean-up schedule."""

import dagster as dg

from ecr_pipelines.automation import service_tags
from ecr_pipelines.ckan.defs.cleanup import ckan_delete_expired_packages
from ecr_pipelines.ckan.defs.packages import GROUP
from ecr_pipelines.ckan.defs.requests import ckan_request

SERVICE = GROUP
SERVICE_TAG = service_tags(SERVICE)

ckan_packages_job = dg.define_asset_job(
    "ckan_packages_job",
    selection=dg.AssetSelection.groups(GROUP),
    description=(
        "Drain one request queue (ops.ckan_packages.config.speed: fast or slow), then refresh the "
        "statistics. ckan_queue_sensor starts it with tag ckan/queue=<speed>; dagster.yaml lets one run "
        "per queue go at a time, as the legacy's one Celery worker per queue."
    ),
    tags=SERVICE_TAG,
)


@dg.job(
    tags=SERVICE_TAG,
    description=(
        "Queue one CKAN download request; its run config is the request "
        "(ops.ckan_request.config: kind, resource_id, email, api_url or resource_url, filters, q, limit, "
        "offset, fields, sort, format, doi, eml, for_gbif). No API key: CKAN_API_KEY is the portal's."
    ),
)
def ckan_request_job() -> None:
    ckan_request()


@dg.job(
    tags=SERVICE_TAG, description="Delete the packages older than CKAN_PACKAGE_TTL_DAYS (pinned ones kept)."
)
def ckan_cleanup_job() -> None:
    ckan_delete_expired_packages()


ckan_daily_cleanup_schedule = dg.ScheduleDefinition(
    name="ckan_daily_cleanup_schedule",
    job=ckan_cleanup_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="04:30 UTC daily: packages older than CKAN_PACKAGE_TTL_DAYS leave the blob store (the legacy caretaker).",
)
