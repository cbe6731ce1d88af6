"""``energy_work_sensor``: the legacy's Celery triggers (onboarding, the fallback imports, a new
disclosure's compile) as one run per kind of due work, never one per customer or disclosure."""

import dagster as dg

from ecr_pipelines.automation import run_in_flight
from ecr_pipelines.energy.defs.jobs import (
    SERVICE,
    SERVICE_TAG,
    energy_disclosures_job,
    energy_meteringpoints_job,
)
from ecr_pipelines.energy.defs.resources import NOT_CONFIGURED, POLL_SECONDS, EnergyResource
from ecr_pipelines.energy.stages import disclosures, meteringpoints
from ecr_pipelines.lib.batch import has_due
from ecr_pipelines.resources import DatabaseResource

METERINGPOINT_JOBS = ["energy_meteringpoints_job", "energy_onboard_job"]
DISCLOSURE_JOBS = ["energy_disclosures_job"]


@dg.sensor(
    name="energy_work_sensor",
    jobs=[energy_meteringpoints_job, energy_disclosures_job],
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every ENERGY_POLL_SECONDS (60): energy_meteringpoints_job when a customer's import (at onboarding, "
        "then 10 min, 30 min, 1 h, 2 h and 6 h later) is due, and energy_disclosures_job when a disclosure "
        "waits to be compiled; never while a run of the same job is on its way."
    ),
)
def energy_work_sensor(
    context: dg.SensorEvaluationContext, db: DatabaseResource, energy: EnergyResource
) -> dg.SensorResult | dg.SkipReason:
    requests: list[dg.RunRequest] = []
    reasons: list[str] = []
    with db.connect() as conn:
        customers_due = has_due(conn, meteringpoints.STAGE)
        disclosures_due = has_due(conn, disclosures.STAGE)
    if customers_due:
        if not energy.configured:
            reasons.append(f"customers wait, but {NOT_CONFIGURED}")
        elif run_in_flight(context.instance, SERVICE, job_names=METERINGPOINT_JOBS):
            reasons.append("customers wait: a metering-point import is on its way")
        else:
            requests.append(dg.RunRequest(job_name=energy_meteringpoints_job.name, tags=SERVICE_TAG))
    if disclosures_due:
        if run_in_flight(context.instance, SERVICE, job_names=DISCLOSURE_JOBS):
            reasons.append("disclosures wait: a compile is on its way")
        else:
            requests.append(dg.RunRequest(job_name=energy_disclosures_job.name, tags=SERVICE_TAG))
    if requests:
        return dg.SensorResult(run_requests=requests)
    return dg.SkipReason("; ".join(reasons) or "no customer import or disclosure is due")
