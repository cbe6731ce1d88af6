"""Registry cache (group ``registry``): F-gas / ODS undertakings, BDR old companies and
collections, ODS licences, with the legacy schedules."""

from datetime import datetime

import dagster as dg

from ecr_pipelines.registry.assets import (
    bdr_collections,
    bdr_old_companies,
    fgas_undertakings,
    ods_licences,
    ods_undertakings,
    registry_reference_tables,
)
from ecr_pipelines.registry.checks import registry_checks
from ecr_pipelines.registry.linking import linking_defs
from ecr_pipelines.registry.resources import build_registry_resource

TIMEZONE = "Europe/Copenhagen"
SERVICE_TAG = {"ecr/service": "registry"}

registry_sync_job = dg.define_asset_job(
    "registry_sync_job",
    selection=dg.AssetSelection.assets(
        registry_reference_tables, fgas_undertakings, ods_undertakings, bdr_collections
    ),
    description=(
        "Sync F-gas and ODS undertakings, then create/bind/rename their BDR collections. Run config per "
        "domain (ops.fgas_undertakings.config / ops.ods_undertakings.config): sync (false leaves the "
        "domain out), days, updated_since, page_size, external_id, registration_id, force."
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
    description="Sync and aggregate one year's ODS licences (run config ops.ods_licences.config.year).",
    tags=SERVICE_TAG,
)

registry_daily_sync_schedule = dg.ScheduleDefinition(
    name="registry_daily_sync_schedule",
    job=registry_sync_job,
    cron_schedule="0 2 * * *",
    execution_timezone=TIMEZONE,
    description="Daily F-gas and ODS sync (since the last sync minus one day), then BDR collections.",
)

registry_weekly_old_companies_schedule = dg.ScheduleDefinition(
    name="registry_weekly_old_companies_schedule",
    job=registry_old_companies_job,
    cron_schedule="0 3 * * 1",
    execution_timezone=TIMEZONE,
    description="Weekly sync of the BDR registry's old companies.",
)


@dg.schedule(
    name="registry_daily_licences_schedule",
    job=registry_licences_job,
    cron_schedule="30 3 * * *",
    execution_timezone=TIMEZONE,
    description="Daily licences of the current year.",
)
def registry_daily_licences_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    scheduled = context.scheduled_execution_time or datetime.now()
    return dg.RunRequest(run_config={"ops": {"ods_licences": {"config": {"year": scheduled.year}}}})


_sync_defs = dg.Definitions(
    assets=[
        registry_reference_tables,
        fgas_undertakings,
        ods_undertakings,
        bdr_old_companies,
        bdr_collections,
        ods_licences,
    ],
    asset_checks=registry_checks,
    jobs=[registry_sync_job, registry_old_companies_job, registry_licences_job],
    schedules=[
        registry_daily_sync_schedule,
        registry_weekly_old_companies_schedule,
        registry_daily_licences_schedule,
    ],
)


# Everything but the resources (tests bind their own).
core_defs = dg.Definitions.merge(_sync_defs, linking_defs)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resource configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources={"registry": build_registry_resource()}))
