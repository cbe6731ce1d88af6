"""``iati_index_sensor``: one refresh run per change of the IATI index."""

import dagster as dg

from ecr_pipelines.iati.jobs import SERVICE_TAG, iati_refresh_job
from ecr_pipelines.iati.resources import IatiResource
from ecr_pipelines.resources import HttpResource

# A sensor tick must answer within 60 s; two HEAD requests need far less, even with a retry.
SENSOR_TIMEOUTS = {"connect_timeout": 5.0, "read_timeout": 20.0, "retries": 1}


@dg.sensor(
    name="iati_index_sensor",
    job=iati_refresh_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "HEADs the Bulk Data Service indices every minute and requests one iati_refresh_job run when their "
        "ETags changed (run_key = the ETags). An index without an ETag fails the tick with a clear message "
        "instead of refreshing blindly. In IATI_SOURCE=registry mode the change token is the registry's "
        "package count and newest metadata_modified."
    ),
)
def iati_index_sensor(
    context: dg.SensorEvaluationContext, iati: IatiResource, http: HttpResource
) -> dg.SensorResult | dg.SkipReason:
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
