"""Jobs, schedules and sensors of the registry cache.

Hands-off operation: ``registry_poll_sensor`` starts an incremental ``registry_sync_job`` every
``REGISTRY_POLL_SECONDS`` (default 120) unless one is queued or running, and the automation
sensor runs the matching after every sync, so a company new in the F-gas / ODS registry is
synced, given its BDR collection and linked within minutes. The legacy schedules (daily sync,
weekly old companies, daily licences) run by default as well.
"""

from collections.abc import Sequence
from datetime import datetime

import dagster as dg

from ecr_pipelines.automation import IN_FLIGHT
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.registry.defs.collections import bdr_collections
from ecr_pipelines.registry.defs.licences import ods_licences
from ecr_pipelines.registry.defs.links import undertaking_company_links
from ecr_pipelines.registry.defs.old_companies import bdr_old_companies
from ecr_pipelines.registry.defs.operator import flush_links, manual_link, unverify, verify_link, verify_none
from ecr_pipelines.registry.defs.reference import registry_reference_tables
from ecr_pipelines.registry.defs.resources import SERVICE_TAG, TIMEZONE, RegistryResource
from ecr_pipelines.registry.defs.undertakings import fgas_undertakings, ods_undertakings
from ecr_pipelines.registry.reference import FGAS, ODS

POLL_SECONDS_ENV = "REGISTRY_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 120

# -- asset jobs ------------------------------------------------------------------------------------

registry_sync_job = dg.define_asset_job(
    "registry_sync_job",
    selection=dg.AssetSelection.assets(
        registry_reference_tables, fgas_undertakings, ods_undertakings, bdr_collections
    ),
    description=(
        "Sync F-gas and ODS undertakings, then create/bind/rename their BDR collections. Run config per "
        "domain (ops.fgas_undertakings.config / ops.ods_undertakings.config): sync (false leaves the "
        "domain out), days, updated_since, page_size, external_id, registration_id, force. The "
        "defaults are the incremental sync (since the newest stored date_updated minus one day)."
    ),
    tags=SERVICE_TAG,
)

registry_old_companies_job = dg.define_asset_job(
    "registry_old_companies_job",
    selection=dg.AssetSelection.assets(bdr_old_companies),
    description="Sync the old companies of the BDR registry (the matching's candidate pool).",
    tags=SERVICE_TAG,
)

registry_licences_job = dg.define_asset_job(
    "registry_licences_job",
    selection=dg.AssetSelection.assets(ods_licences),
    description="Sync and aggregate one year's ODS licences (run config ops.ods_licences.config.year, "
    "default the current year).",
    tags=SERVICE_TAG,
)

registry_match_job = dg.define_asset_job(
    "registry_match_job",
    selection=dg.AssetSelection.assets(undertaking_company_links),
    description="Run the matching now (it also runs by itself after every sync).",
    tags=SERVICE_TAG,
)

# -- operator jobs ---------------------------------------------------------------------------------


def _operator_job(name: str, op: dg.OpDefinition, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags=SERVICE_TAG)
    def _job() -> None:
        op()

    return _job


registry_verify_job = _operator_job(
    "registry_verify_job",
    verify_link,
    "Verify a link. Config: undertaking, old_company, user (domain if ambiguous).",
)
registry_verify_none_job = _operator_job(
    "registry_verify_none_job",
    verify_none,
    "Verify an undertaking as new. Config: undertaking, domain, user.",
)
registry_manual_link_job = _operator_job(
    "registry_manual_link_job",
    manual_link,
    "Verify with a chosen collection. Config: undertaking, domain, collection_account, user.",
)
registry_unverify_job = _operator_job(
    "registry_unverify_job", unverify, "Undo a verification. Config: undertaking, domain, user."
)
registry_flush_job = _operator_job(
    "registry_flush_job", flush_links, "Delete every proposed link. Config: user."
)

# -- what starts runs ------------------------------------------------------------------------------


def sync_run_config(configured: Sequence[str]) -> dict[str, object]:
    """Default run config of ``registry_sync_job``, with ``sync: false`` for each domain whose
    registry is not configured (its step would only fail on the missing URL)."""
    left_out = [d for d in (FGAS, ODS) if d not in configured]
    return (
        {"ops": {f"{d.lower()}_undertakings": {"config": {"sync": False}} for d in left_out}}
        if left_out
        else {}
    )


def sync_in_flight(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    """A queued or running run that syncs the undertakings: a ``registry_sync_job`` run, or a
    registry run of another job whose asset selection holds them (a bootstrap or a manual
    materialization from the asset graph)."""
    runs = instance.get_runs(dg.RunsFilter(job_name=registry_sync_job.name, statuses=IN_FLIGHT), limit=1)
    if runs:
        return runs[0]
    syncing = {fgas_undertakings.key, ods_undertakings.key}
    others = instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, tags=SERVICE_TAG))
    return next((r for r in others if r.asset_selection and r.asset_selection & syncing), None)


def sync_request(instance: dg.DagsterInstance, registry: RegistryResource) -> dg.RunRequest | dg.SkipReason:
    """An incremental sync run, unless there is nothing to sync or one is already on its way."""
    configured = registry.configured_domains()
    if not configured:
        return dg.SkipReason("Neither BASE_URL_FGAS nor BASE_URL_ODS is set: no registry to sync from.")
    running = sync_in_flight(instance)
    if running is not None:
        return dg.SkipReason(
            f"{running.job_name} run {running.run_id} is {running.status.value.lower()}: it syncs what a new "
            "run would."
        )
    return dg.RunRequest(run_config=sync_run_config(configured), tags=SERVICE_TAG)


def poll_interval_seconds() -> int:
    """``REGISTRY_POLL_SECONDS``, read when the definitions load."""
    text = env_str(POLL_SECONDS_ENV, str(DEFAULT_POLL_SECONDS)) or str(DEFAULT_POLL_SECONDS)
    try:
        seconds = int(text)
    except ValueError:
        raise ValueError(f"{POLL_SECONDS_ENV} must be a whole number of seconds, not {text!r}") from None
    if seconds < 1:
        raise ValueError(f"{POLL_SECONDS_ENV} must be at least 1, not {seconds}")
    return seconds


def build_poll_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="registry_poll_sensor",
        job=registry_sync_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {minimum_interval_seconds} s (REGISTRY_POLL_SECONDS): an incremental registry_sync_job "
            "run for the configured registries (BASE_URL_FGAS / BASE_URL_ODS; the others get sync: false), "
            "unless one is queued or running. The matching follows by itself (registry_automation_sensor)."
        ),
    )
    def registry_poll_sensor(
        context: dg.SensorEvaluationContext, registry: RegistryResource
    ) -> dg.RunRequest | dg.SkipReason:
        return sync_request(context.instance, registry)

    return registry_poll_sensor


registry_poll_sensor = build_poll_sensor(poll_interval_seconds())

registry_automation_sensor = dg.AutomationConditionSensorDefinition(
    "registry_automation_sensor",
    target=dg.AssetSelection.assets(undertaking_company_links),
    default_status=dg.DefaultSensorStatus.RUNNING,
    run_tags=SERVICE_TAG,  # its runs are the registry's like every other (alerts and queues key on it)
    description="Runs the matching after each undertaking or old-company sync.",
)


@dg.schedule(
    name="registry_daily_sync_schedule",
    job=registry_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "Daily F-gas and ODS sync (since the last sync minus one day), then BDR collections; skipped "
        "while a sync run is queued or running (the poll sensor keeps the cache current in between)."
    ),
)
def registry_daily_sync_schedule(
    context: dg.ScheduleEvaluationContext, registry: RegistryResource
) -> dg.RunRequest | dg.SkipReason:
    return sync_request(context.instance, registry)


@dg.schedule(
    name="registry_weekly_old_companies_schedule",
    job=registry_old_companies_job,
    cron_schedule="0 3 * * 1",
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly sync of the BDR registry's old companies (skipped while BDR_API_URL is not set).",
)
def registry_weekly_old_companies_schedule(
    context: dg.ScheduleEvaluationContext, registry: RegistryResource
) -> dg.RunRequest | dg.SkipReason:
    if not registry.bdr_api_url:
        return dg.SkipReason("BDR_API_URL is not set: no BDR registry to sync old companies from.")
    return dg.RunRequest()


@dg.schedule(
    name="registry_daily_licences_schedule",
    job=registry_licences_job,
    cron_schedule="30 3 * * *",
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily licences of the current year (skipped while BASE_URL_ODS is not set).",
)
def registry_daily_licences_schedule(
    context: dg.ScheduleEvaluationContext, registry: RegistryResource
) -> dg.RunRequest | dg.SkipReason:
    if not registry.base_url_ods:
        return dg.SkipReason("BASE_URL_ODS is not set: no ODS registry to sync licences from.")
    scheduled = context.scheduled_execution_time or datetime.now()
    return dg.RunRequest(run_config={"ops": {"ods_licences": {"config": {"year": scheduled.year}}}})


registry_jobs = [
    registry_sync_job,
    registry_old_companies_job,
    registry_licences_job,
    registry_match_job,
    registry_verify_job,
    registry_verify_none_job,
    registry_manual_link_job,
    registry_unverify_job,
    registry_flush_job,
]
registry_schedules = [
    registry_daily_sync_schedule,
    registry_weekly_old_companies_schedule,
    registry_daily_licences_schedule,
]
registry_sensors = [registry_poll_sensor, registry_automation_sensor]
