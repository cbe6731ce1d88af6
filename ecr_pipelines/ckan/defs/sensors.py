"""``ckan_queue_sensor``: the Celery workers' job, one run per queue whenever it has requests.

The legacy web process put each request on the fast or slow Celery queue, and one worker per
queue took them one by one. Here the queue is ``ckan.package_request``; every
``CKAN_POLL_SECONDS`` the sensor asks, per queue, whether a request is waiting and no run of that
queue is on its way, and then requests one ``ckan_packages_job`` run for it (tag ``ckan/queue``;
``dagster.yaml`` lets one run per value go at a time). That run takes every request queued by
then, so a burst of requests costs one run, and a 3 M-row request on the slow queue never holds
up a 10-row one on the fast queue.
"""

import dagster as dg

from ecr_pipelines.automation import run_in_flight
from ecr_pipelines.ckan.defs.jobs import SERVICE, SERVICE_TAG, ckan_packages_job
from ecr_pipelines.ckan.defs.packages import QUEUE_TAG
from ecr_pipelines.ckan.defs.resources import POLL_SECONDS
from ecr_pipelines.ckan.stages.packages import QUEUES, STAGE
from ecr_pipelines.ckan.stages.requests import pending_admission
from ecr_pipelines.lib.batch import has_due
from ecr_pipelines.resources import DatabaseResource


def queue_run_request(speed: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_config={"ops": {"ckan_packages": {"config": {"speed": speed}}}},
        tags={**SERVICE_TAG, QUEUE_TAG: speed},
    )


@dg.sensor(
    name="ckan_queue_sensor",
    job=ckan_packages_job,
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every CKAN_POLL_SECONDS (15), per queue (fast, slow): when ckan.package_request has a request "
        "waiting and no run of that queue is queued or running, requests one ckan_packages_job run with "
        "tag ckan/queue=<queue> (the legacy's one Celery worker per queue). Rows other systems inserted "
        "without a speed count for the fast queue, whose run admits them."
    ),
)
def ckan_queue_sensor(
    context: dg.SensorEvaluationContext, db: DatabaseResource
) -> dg.SensorResult | dg.SkipReason:
    requests: list[dg.RunRequest] = []
    waiting: list[str] = []
    with db.connect() as conn:
        for speed in QUEUES:
            due = has_due(conn, STAGE, {"speed": speed}) or (speed == "fast" and pending_admission(conn))
            if not due:
                continue
            if run_in_flight(context.instance, SERVICE, tags={QUEUE_TAG: speed}):
                waiting.append(speed)
                continue
            requests.append(queue_run_request(speed))
    if not requests:
        if waiting:
            return dg.SkipReason(
                f"requests wait on {', '.join(waiting)}: its run is on its way and takes them"
            )
        return dg.SkipReason("no request is queued")
    context.log.info(f"requests queued on {', '.join(r.tags[QUEUE_TAG] for r in requests)}")
    return dg.SensorResult(run_requests=requests)
