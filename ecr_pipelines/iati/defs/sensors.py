"""The IATI sensors: one refresh per change of the index, one stages run whenever work is due.

The refresher's stages each polled the database every 60 s; here one sensor asks the same
questions (is anything due for download, validate, clean, flatten, lake or Solr?) and starts one
``iati_stages_job`` run when the answer is yes and no IATI run is on its way already.
"""

import dagster as dg

from ecr_pipelines.automation import run_in_flight
from ecr_pipelines.iati.defs.jobs import SERVICE, SERVICE_TAG, iati_refresh_job, iati_stages_job
from ecr_pipelines.iati.defs.resources import IatiResource, IatiValidatorResource, SolrResource
from ecr_pipelines.iati.stages import clean, download, flatten, lake, solr, validate
from ecr_pipelines.lib.batch import has_due
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources import DatabaseResource, HttpResource

# A sensor tick must answer within 60 s; two HEAD requests need far less, even with a retry.
SENSOR_TIMEOUTS = {"connect_timeout": 5.0, "read_timeout": 20.0, "retries": 1}
POLL_SECONDS = int(env_str("IATI_POLL_SECONDS", "60") or 60)


@dg.sensor(
    name="iati_index_sensor",
    job=iati_refresh_job,
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "HEADs the Bulk Data Service indices every minute (IATI_POLL_SECONDS) and requests one "
        "iati_refresh_job run when their ETags changed (run_key = the ETags). An index without an ETag "
        "fails the tick with a clear message instead of refreshing blindly. In IATI_SOURCE=registry mode the "
        "change token is the registry's package count and newest metadata_modified. Skips while the index "
        "URLs are not set."
    ),
)
def iati_index_sensor(
    context: dg.SensorEvaluationContext, iati: IatiResource, http: HttpResource
) -> dg.SensorResult | dg.SkipReason:
    missing = iati.missing_settings()
    if missing:
        return dg.SkipReason(f"the IATI index is not configured: set {' and '.join(missing)}")
    # IndexProblem (unreachable, no ETag) propagates: the tick fails with its message, the cursor
    # stays, and the next tick tries again.
    token = iati.change_token(http.session(**SENSOR_TIMEOUTS))
    if token == context.cursor:
        return dg.SkipReason(f"index unchanged ({token})")
    context.log.info(f"index changed: {context.cursor or '(first tick)'} -> {token}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=token, tags={**SERVICE_TAG, "iati/index": token[:200]})],
        cursor=token,
    )


def due_stages(db: DatabaseResource, validator: IatiValidatorResource, solr_configured: bool) -> list[str]:
    """The stages with due work, each asked with the selection its asset uses by default."""
    checks = [
        (download.STAGE, {}),
        (validate.STAGE, {"hold": validator.hold_hours * 3600.0}),
        (clean.STAGE, {}),
        (flatten.STAGE, {}),
        (lake.STAGE, {}),
    ]
    if solr_configured:
        checks.append((solr.STAGE, {}))
    with db.connect() as conn:
        return [stage.name for stage, params in checks if has_due(conn, stage, params)]


@dg.sensor(
    name="iati_work_sensor",
    job=iati_stages_job,
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every minute (IATI_POLL_SECONDS), asks which IATI stages have due documents and, when any has and "
        "no IATI run is queued or running, requests one iati_stages_job run (the refresher's stages polled "
        "every 60 s). The Solr stage counts only when SOLR_URL is set."
    ),
)
def iati_work_sensor(
    context: dg.SensorEvaluationContext,
    db: DatabaseResource,
    iati_validator: IatiValidatorResource,
    solr: SolrResource,
) -> dg.RunRequest | dg.SkipReason:
    if run_in_flight(context.instance, SERVICE):
        return dg.SkipReason("an IATI run is queued or running; it takes what is due")
    due = due_stages(db, iati_validator, solr.configured)
    if not due:
        return dg.SkipReason("no IATI stage has due work")
    context.log.info(f"due work in {', '.join(due)}")
    return dg.RunRequest(tags={**SERVICE_TAG, "iati/due": ",".join(due)[:200]})
