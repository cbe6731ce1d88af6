"""Hands-off operation: the poll sensor, the schedules, the matching's automation, and what the
Launchpad shows. A company new in the registry is synced and linked with nobody launching a run."""

import contextvars
import functools
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ecr_pipelines.dev.standins import RecordedRequest, Reply, StandInServer
from ecr_pipelines.registry.defs import core_defs
from ecr_pipelines.registry.defs.jobs import (
    DEFAULT_POLL_SECONDS,
    build_poll_sensor,
    poll_interval_seconds,
    registry_daily_licences_schedule,
    registry_daily_sync_schedule,
    registry_poll_sensor,
    registry_weekly_old_companies_schedule,
)
from ecr_pipelines.registry.defs.resources import SERVICE_TAG, RegistryResource
from ecr_pipelines.resources import DatabaseResource, build_resources
from ecr_pipelines_tests.registry import payloads as p
from ecr_pipelines_tests.registry.test_registry_jobs import (
    COLLECTION,
    FGAS_PATH,
    count,
    materialized,
    old,
    resources,
)

LINKS = dg.AssetKey("undertaking_company_links")


def own_context(test: Callable[..., None]) -> Callable[..., None]:
    """Run a test that uses a test instance in a copy of the context.

    An instance entered twice (``build_schedule_context``, ``execute_in_process(instance=...)``)
    leaves Dagster's "current state storage" context variable pointing at it after it is closed,
    and every later definitions load in this process would then fail.
    """

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        contextvars.copy_context().run(test, *args, **kwargs)

    return wrapper


def poll(instance: dg.DagsterInstance, registry: RegistryResource) -> dg.RunRequest | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, resources={"registry": registry})
    return registry_poll_sensor(context)  # type: ignore[return-value]


def add_run(instance: dg.DagsterInstance, job_name: str, status: dg.DagsterRunStatus, **fields: Any) -> None:
    instance.add_run(dg.DagsterRun(job_name=job_name, status=status, **fields))


@own_context
def test_poll_sensor_syncs_the_configured_registries_one_run_at_a_time() -> None:
    with dg.instance_for_test() as instance:
        nothing = poll(instance, RegistryResource())
        assert isinstance(nothing, dg.SkipReason)
        assert "BASE_URL_FGAS" in (nothing.skip_message or "") and "BASE_URL_ODS" in (
            nothing.skip_message or ""
        )

        fgas_only = poll(instance, RegistryResource(base_url_fgas="http://fgas.example"))
        assert isinstance(fgas_only, dg.RunRequest)
        assert fgas_only.run_config == {"ops": {"ods_undertakings": {"config": {"sync": False}}}}
        assert fgas_only.tags == SERVICE_TAG
        both = poll(
            instance, RegistryResource(base_url_fgas="http://f.example", base_url_ods="http://o.example")
        )
        assert isinstance(both, dg.RunRequest) and both.run_config == {}  # the incremental default

        # Finished runs and other jobs' runs do not hold a poll back; a queued or running sync does.
        add_run(instance, "registry_sync_job", dg.DagsterRunStatus.SUCCESS)
        add_run(instance, "registry_match_job", dg.DagsterRunStatus.STARTED)
        assert isinstance(poll(instance, RegistryResource(base_url_ods="http://o.example")), dg.RunRequest)
        # (QUEUED is in the filter too; a queued run cannot be made without a code location here.)
        for status in (
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ):
            with dg.instance_for_test() as busy:
                add_run(busy, "registry_sync_job", status)
                skipped = poll(busy, RegistryResource(base_url_ods="http://o.example"))
                assert isinstance(skipped, dg.SkipReason) and status.value.lower() in (
                    skipped.skip_message or ""
                )
        # So does another registry run that materializes the undertakings (bootstrap, asset graph).
        with dg.instance_for_test() as busy:
            add_run(busy, "__ASSET_JOB", dg.DagsterRunStatus.STARTED, tags=SERVICE_TAG)
            assert isinstance(poll(busy, RegistryResource(base_url_ods="http://o.example")), dg.RunRequest)
            ods = {dg.AssetKey("ods_undertakings")}
            add_run(busy, "__ASSET_JOB", dg.DagsterRunStatus.STARTED, tags=SERVICE_TAG, asset_selection=ods)
            assert isinstance(poll(busy, RegistryResource(base_url_ods="http://o.example")), dg.SkipReason)


def test_poll_interval_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_POLL_SECONDS", raising=False)
    assert poll_interval_seconds() == DEFAULT_POLL_SECONDS == 120
    monkeypatch.setenv("REGISTRY_POLL_SECONDS", "45")
    assert build_poll_sensor(poll_interval_seconds()).minimum_interval_seconds == 45
    for bad in ("soon", "0"):
        monkeypatch.setenv("REGISTRY_POLL_SECONDS", bad)
        with pytest.raises(ValueError, match="REGISTRY_POLL_SECONDS"):
            poll_interval_seconds()


def loaded_repo() -> Any:
    """The service's repository with every resource bound (as the code location loads it)."""
    defs = dg.Definitions.merge(
        core_defs, dg.Definitions(resources={**build_resources(), "registry": RegistryResource()})
    )
    return defs.get_repository_def()


def test_schedules_and_sensors_run_by_default_and_tag_their_runs() -> None:
    repo = loaded_repo()
    for schedule in repo.schedule_defs:
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, schedule.name
    sensors = {s.name: s for s in repo.sensor_defs}
    assert set(sensors) == {"registry_poll_sensor", "registry_automation_sensor"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    automation = sensors["registry_automation_sensor"]
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.run_tags == SERVICE_TAG
    # Worst case from a registry change to its link: a poll interval, the sync, one automation
    # tick and the matching run; the two intervals leave minutes for the runs within 5 minutes.
    interval = automation.minimum_interval_seconds or 30
    assert (sensors["registry_poll_sensor"].minimum_interval_seconds or 0) + interval <= 180


@own_context
def test_schedules_skip_what_is_not_configured_or_already_running() -> None:
    at = datetime(2031, 1, 2, 2, 0, tzinfo=UTC)
    configured = RegistryResource(
        base_url_fgas="http://f.example", base_url_ods="http://o.example", bdr_api_url="x"
    )
    with dg.instance_for_test() as instance:

        def tick(schedule: Any, registry: RegistryResource) -> Any:
            context = dg.build_schedule_context(
                instance=instance, scheduled_execution_time=at, resources={"registry": registry}
            )
            return schedule(context)

        assert isinstance(tick(registry_daily_sync_schedule, configured), dg.RunRequest)
        assert isinstance(tick(registry_daily_sync_schedule, RegistryResource()), dg.SkipReason)
        assert isinstance(tick(registry_weekly_old_companies_schedule, configured), dg.RunRequest)
        assert isinstance(tick(registry_weekly_old_companies_schedule, RegistryResource()), dg.SkipReason)
        licences = tick(registry_daily_licences_schedule, configured)
        assert licences.run_config == {"ops": {"ods_licences": {"config": {"year": 2031}}}}
        assert isinstance(tick(registry_daily_licences_schedule, RegistryResource()), dg.SkipReason)
        add_run(instance, "registry_sync_job", dg.DagsterRunStatus.STARTED)
        assert isinstance(tick(registry_daily_sync_schedule, configured), dg.SkipReason)


def test_every_run_config_field_is_described_for_the_launchpad() -> None:
    seen = set()
    for job in loaded_repo().get_all_jobs():
        ops = job.run_config_schema.config_type.fields.get("ops")
        for op_name, op_field in (ops.config_type.fields if ops else {}).items():
            config = getattr(op_field.config_type, "fields", {}).get("config")
            for name, field in (getattr(config.config_type, "fields", {}) if config else {}).items():
                assert field.description, f"{job.name}: ops.{op_name}.config.{name} has no description"
                seen.add(f"{op_name}.{name}")
    assert {
        "fgas_undertakings.sync",
        "ods_licences.year",
        "verify_link.user",
        "undertaking_company_links.review_rows",
    } <= seen


# -- end to end: a new company, nobody launching anything -------------------------------------------


@own_context
def test_a_new_company_is_synced_and_linked_by_the_sensors_alone(
    registry_db: DatabaseResource, standin: StandInServer, tmp_path: Path
) -> None:
    today = date.today().strftime("%d/%m/%Y")
    registry_records = [p.fgas(1, "Polar Cooling GmbH")]

    def fgas_pages(request: RecordedRequest) -> Reply:
        return Reply.json(registry_records)

    standin.route(FGAS_PATH, handler=fgas_pages)
    standin.route(
        "/bdr-registry/company/obligation/fgases/",
        json=[old(100, "POLAR COOLING GMBH"), old(101, "NORDIC FROST AB")],
    )
    standin.route("/bdr-registry/company/obligation/ods/", json=[])
    standin.route(COLLECTION, json={"status": "success"}, headers={"Content-Type": "application/json"})
    standin.route("/bdr/fgases/*", json={}, status=404)
    standin.route("/bdr/api/collections_json", json=[])
    # Only F-gas is configured: the poll leaves ODS out, and BDR still gets the new collections.
    bound = resources(registry_db, standin, tmp_path, base_url_ods="")
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=bound))
    registry = bound["registry"]

    with dg.instance_for_test() as instance:

        def run(request: dg.RunRequest | dg.SkipReason, job: str) -> dg.ExecuteInProcessResult:
            assert isinstance(request, dg.RunRequest), request
            result = defs.resolve_job_def(job).execute_in_process(
                run_config=request.run_config, tags=request.tags, instance=instance
            )
            assert result.success
            return result

        def automation(cursor: Any) -> Any:
            return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)

        run(dg.RunRequest(), "registry_old_companies_job")  # what the weekly schedule does
        ticked = automation(None)
        first = run(poll(instance, registry), "registry_sync_job")
        assert materialized(first) == {"registry_reference_tables", "fgas_undertakings", "bdr_collections"}
        ticked = automation(ticked.cursor)
        assert ticked.get_num_requested(LINKS) == 1  # the matching follows the sync by itself
        run(dg.RunRequest(tags=SERVICE_TAG), "registry_match_job")
        ticked = automation(ticked.cursor)  # the ticks in between (every 30 s) request nothing
        assert ticked.get_num_requested(LINKS) == 0

        # A company appears in the registry; the next poll and the automation pick it up.
        registry_records.append(p.fgas(7, "Nordic Frost AB", dateUpdated=today))
        second = run(poll(instance, registry), "registry_sync_job")
        assert second.success and standin.requests_to(FGAS_PATH)[-1].query.get("updatedSince")
        ticked = automation(ticked.cursor)
        assert ticked.get_num_requested(LINKS) == 1
        run(dg.RunRequest(tags=SERVICE_TAG), "registry_match_job")

    links = count(
        registry_db,
        "SELECT string_agg(u.external_id || '-' || o.external_id, ',' ORDER BY u.external_id) "
        "FROM registry.old_company_link l JOIN registry.undertaking u ON u.id = l.undertaking_id "
        "JOIN registry.old_company o ON o.id = l.oldcompany_id",
    )
    assert links == "1-100,7-101"
    assert count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE bdr_due") == 0
    assert {r.query["company_id"] for r in standin.requests_to(COLLECTION)} == {"1", "7"}
