"""What every service's sensors share: is a run of the service already on its way, which assets
were never materialized, and the sensor that fills a fresh deployment.

The services' sensors ask for one run per change, never one per item, and never while a run of
the same service is queued or in progress: the per-item state in Postgres is the queue, and the
next run takes whatever is due then.
"""

from collections.abc import Iterable, Sequence

import dagster as dg
import sqlalchemy as sa

from ecr_pipelines.lib.batch import dead_runs, forget_runs
from ecr_pipelines.lib.database import engine_for
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources import DatabaseResource, MailResource
from ecr_pipelines.stages import send_queued_mail

SERVICE_TAG = "ecr/service"
BOOTSTRAP_TAG = {"ecr/bootstrap": "true"}
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def service_tags(service: str) -> dict[str, str]:
    return {SERVICE_TAG: service}


def run_in_flight(
    instance: dg.DagsterInstance,
    service: str,
    job_names: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
) -> bool:
    """Whether a run of ``service`` (optionally: of one of ``job_names``, with ``tags``) is queued
    or running."""
    filters = dg.RunsFilter(statuses=IN_FLIGHT, tags={SERVICE_TAG: service, **(tags or {})})
    runs = instance.get_runs(filters=filters, limit=50)
    return any(job_names is None or run.job_name in job_names for run in runs)


def never_materialized(instance: dg.DagsterInstance, keys: Iterable[dg.AssetKey]) -> list[dg.AssetKey]:
    keys = list(keys)
    records = {record.asset_entry.asset_key: record for record in instance.get_asset_records(keys)}
    return [
        key
        for key in keys
        if key not in records or records[key].asset_entry.last_materialization_record is None
    ]


def bootstrap_sensor(groups: dict[str, list[dg.AssetKey]]) -> dg.SensorDefinition:
    """One sensor that materializes, once per service, every asset that never was.

    A fresh deployment thus fills itself (old companies included, not only on their weekly
    schedule); afterwards schedules, sensors and automation keep it current. The run key is the
    set of missing assets, so a failed bootstrap is not repeated every tick (its failure is in the
    run log and mailed by the failure sensor); it is tried again when the set changes.
    """

    @dg.sensor(
        name="bootstrap_sensor",
        target=dg.AssetSelection.all(),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Materializes, once, every asset that was never materialized (one run per service, tagged "
            "ecr/service and ecr/bootstrap), so a fresh deployment fills itself without a person."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        requests = []
        for service, keys in groups.items():
            missing = never_materialized(context.instance, keys)
            # Only an earlier bootstrap holds this one back: the service's own sensors may keep it
            # busy all the time, and pools keep the steps that must not overlap apart.
            if not missing or run_in_flight(context.instance, service, tags=BOOTSTRAP_TAG):
                continue
            names = sorted(key.to_user_string() for key in missing)
            requests.append(
                dg.RunRequest(
                    run_key=f"bootstrap:{service}:{','.join(names)}"[:1000],
                    asset_selection=missing,
                    tags={**service_tags(service), **BOOTSTRAP_TAG},
                )
            )
        if not requests:
            return dg.SkipReason("every asset has been materialized (or its service is busy)")
        return dg.SensorResult(run_requests=requests)

    return _sensor


def reap_dead_runs(instance: dg.DagsterInstance, engine: sa.Engine) -> list[str]:
    """Runs whose process died mid-stage (their Postgres backend is gone) are marked failed and
    their pool slots freed, so the next run is not left waiting for slots nobody will return.

    Dagster's run monitoring cannot see these (the default run launcher has no health check, and
    ``dagster job execute`` is no launcher at all): the claim owner in ``pipeline.run_owner`` can.
    """
    with engine.begin() as conn:
        dead = dead_runs(conn)
        reaped = []
        for run_id in dead:
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_failed(
                    run,
                    "the run's process died mid-stage (its database connection is gone); its items are due again",
                )
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            reaped.append(run_id)
        forget_runs(conn, reaped)
    return reaped


@dg.sensor(
    name="housekeeping_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 30 s: marks runs whose process died mid-stage as failed and frees their pool slots, and "
        "sends the mails still pending in pipeline.mail_outbox (queued by a run that crashed before "
        "sending them). Requests no runs."
    ),
)
def housekeeping_sensor(
    context: dg.SensorEvaluationContext, db: DatabaseResource, mail: MailResource
) -> dg.SkipReason:
    reaped = reap_dead_runs(context.instance, db.engine)
    for run_id in reaped:
        context.log.warning(f"run {run_id} died mid-stage: marked failed, pool slots freed")
    sent = send_queued_mail(context.log, db, mail)
    return dg.SkipReason(
        f"{len(reaped)} dead runs reaped, {sent.sent} pending mails sent, {len(sent.failed)} mails failed"
    )


def _reaping_in_process(init_context: dg.InitExecutorContext) -> dg.Executor:
    # Before any step asks for a pool slot: a run killed mid-stage (SIGKILL, OOM) still holds its
    # slots, and nothing else returns them for runs that no daemon launched.
    try:
        reaped = reap_dead_runs(init_context.instance, engine_for(env_str("DATABASE_URL")))
    except Exception as exc:  # the stages report database trouble themselves, with more context
        print(f"could not look for runs that died mid-stage: {exc}", flush=True)
        reaped = []
    for run_id in reaped:
        print(f"run {run_id} had died mid-stage: marked failed, its pool slots freed", flush=True)
    creation = dg.in_process_executor.executor_creation_fn
    assert creation is not None
    return creation(init_context)


in_process_executor = dg.ExecutorDefinition(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema,
    executor_creation_fn=_reaping_in_process,
    description=(
        "Dagster's in-process executor, after freeing the pool slots of runs that died mid-stage "
        "(so a killed run never blocks the next one)."
    ),
)
