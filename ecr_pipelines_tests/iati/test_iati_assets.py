"""The IATI refresh end to end: iati_refresh_job against the recorded BDS and CKAN registry
(stand-in server on loopback), the embedded Postgres, local and S3 blob stores; the ETag sensor,
the retry-errors schedule and the bad-input cases."""

import json
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.iati_demo import RECORDINGS
from ecr_pipelines.dev.standins import Fault, StandInServer
from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.iati.clients import MissingETag
from ecr_pipelines.iati.defs import core_defs, iati_index_sensor
from ecr_pipelines.iati.defs.jobs import iati_retry_errors_schedule
from ecr_pipelines.iati.defs.resources import (
    IatiResource,
    IatiValidatorResource,
    SolrResource,
    build_iati_resource,
)
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource
from ecr_pipelines.resources.env import SettingError
from ecr_pipelines_tests.iati.conftest import MOUNT, asset_metadata, iati_resource

DATASETS = f"{MOUNT}/datasets-minimal"
ORGS = f"{MOUNT}/reporting-orgs"


def resources(
    db: DatabaseResource, blobs: BlobStoreResource, iati: IatiResource, solr: SolrResource | None = None
) -> dict[str, Any]:
    return {
        "db": db,
        "blobs": blobs,
        "http": HttpResource(retries=1, backoff=0.01, read_timeout=10),
        "mail": MailResource(outbox_dir=None),
        "iati": iati,
        "iati_validator": IatiValidatorResource(),
        "solr": solr or SolrResource(),
    }


def run_refresh(
    db: DatabaseResource,
    blobs: BlobStoreResource,
    iati: IatiResource,
    config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
    job: str = "iati_refresh_job",
    solr: SolrResource | None = None,
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(db, blobs, iati, solr)))
    return defs.resolve_job_def(job).execute_in_process(
        run_config=config, raise_on_error=False, instance=instance
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = result.get_step_failure_events()
    assert failures, "the run did not fail"
    data = failures[0].step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else None) or data.error.message


def query(db: DatabaseResource, sql: str) -> list[Any]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]


def recorded_index(server: StandInServer, name: str = "datasets-minimal.json") -> dict[str, Any]:
    text = (RECORDINGS / name).read_text(encoding="utf-8").replace("{{base_url}}", server.url())
    return json.loads(text)


def snapshot_of(db: DatabaseResource, blobs: BlobStoreResource) -> tuple[Any, ...]:
    return (
        query(db, "SELECT org_id, name, last_seen FROM iati.publisher ORDER BY org_id"),
        query(db, "SELECT id, hash, last_seen, downloaded, download_error FROM iati.document ORDER BY id"),
        sorted(blobs.store.list("iati/")),
    )


def test_refresh_job_fills_the_tables_stores_files_and_records_errors(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    with dg.instance_for_test() as instance:
        result = run_refresh(iati_db, blobs, iati_resource(iati_standin), instance=instance)
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    meta = asset_metadata(result)
    assert (meta["iati_publishers"]["new"], meta["iati_publishers"]["dagster/row_count"]) == (4, 4)
    assert (
        meta["iati_documents"]["new"],
        meta["iati_documents"]["stale"],
        meta["iati_documents"]["errors"],
    ) == (9, 0, 0)
    files = meta["iati_source_files"]
    # The document without a cached URL gets code 4 before the stage runs: counted, never due.
    assert (files["due"], files["processed"], files["outcome_downloaded"], files["errors"]) == (8, 8, 6, 2)
    assert (files["error_http_404"], files["error_charset"], files["no_source"]) == (1, 1, 1)
    ids = dict(query(iati_db, "SELECT name, id FROM iati.document"))
    preview = files["error_preview"]
    assert f"| {ids['fcdo-withdrawn']} | http_404 |" in preview and "fcdo-withdrawn.xml" in preview
    assert f"| {ids['gdihub-annual-report']} | charset | character encoding undetectable" in preview
    assert "application/pdf" in preview
    assert "3f-never-cached" in files["no_source_preview"]
    assert (files["dagster/row_count"], files["stored_total"], files["error_total"], files["due_total"]) == (
        6,
        6,
        3,
        0,
    )
    errors = dict(
        query(iati_db, "SELECT name, download_error FROM iati.document WHERE download_error IS NOT NULL")
    )
    assert errors == {"fcdo-withdrawn": 404, "gdihub-annual-report": 2, "3f-never-cached": 4}
    stored = query(iati_db, "SELECT hash FROM iati.document WHERE downloaded IS NOT NULL")
    assert sorted(blobs.store.list("iati/source/")) == sorted(source_key(h) for (h,) in stored)
    sample = query(iati_db, "SELECT hash FROM iati.document WHERE name = '3f-activities'")[0][0]
    assert (
        blobs.store.get_bytes(source_key(sample)) == (RECORDINGS / "cache" / "3fi-activity.xml").read_bytes()
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "iati_documents_have_publishers": True,
        "iati_publisher_names_unique": True,
        "iati_every_document_downloaded_or_errored": True,
        "iati_download_error_share": True,
        "iati_source_files_stored": True,
    }
    # Progress went to the run log.
    assert any("batch 1 of 1" in m and "rows/s" in m for m in logs)

    # Again: nothing new, nothing due, nothing fetched but the two indices.
    fetched = len(iati_standin.requests)
    again = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    assert again.success
    meta = asset_metadata(again)
    assert (meta["iati_documents"]["new"], meta["iati_documents"]["unchanged"]) == (0, 9)
    assert (meta["iati_source_files"]["due"], meta["iati_source_files"]["processed"]) == (0, 0)
    assert "outcome_downloaded" not in meta["iati_source_files"]
    assert len(iati_standin.requests) == fetched + 2


def test_registry_source_pages_the_ckan_api_and_records_ftp_as_code_3(
    iati_db: DatabaseResource, iati_standin: StandInServer, s3_blobs: BlobStoreResource
) -> None:
    iati = iati_resource(iati_standin, source="registry", registry_page_size=5)
    result = run_refresh(iati_db, s3_blobs, iati)
    assert result.success, failure_message(result)
    searches = iati_standin.requests_to(f"{MOUNT}/registry/api/3/action/package_search")
    assert [r.query["start"] for r in searches] == ["0", "5"]
    assert len(iati_standin.requests_to(f"{MOUNT}/registry/api/3/action/organization_show")) == 4
    errors = dict(
        query(iati_db, "SELECT name, download_error FROM iati.document WHERE download_error IS NOT NULL")
    )
    assert errors == {"fcdo-withdrawn": 404, "gdihub-annual-report": 2, "3f-never-cached": 3}
    assert query(iati_db, "SELECT country_code, package_count FROM iati.publisher WHERE name = 'fcdo'") == [
        ("GB", 2)
    ]
    assert len(list(s3_blobs.store.list("iati/source/"))) == 5
    assert asset_metadata(result)["iati_publishers"]["source"] == "registry"


def test_a_removed_publisher_goes_with_its_documents_and_files(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin)).success
    fcdo_hash = query(iati_db, "SELECT hash FROM iati.document WHERE name = 'fcdo-activities'")[0][0]
    assert blobs.store.exists(source_key(fcdo_hash))
    datasets, orgs = recorded_index(iati_standin), recorded_index(iati_standin, "reporting-orgs.json")
    datasets["datasets"] = [d for d in datasets["datasets"] if d["reporting_org_short_name"] != "fcdo"]
    orgs["reporting_orgs"] = [o for o in orgs["reporting_orgs"] if o["short_name"] != "fcdo"]
    iati_standin.route(DATASETS, json=datasets)
    iati_standin.route(ORGS, json=orgs)
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    assert result.success
    meta = asset_metadata(result)
    assert (meta["iati_publishers"]["stale"], meta["iati_documents"]["stale"]) == (1, 2)
    assert meta["iati_documents"]["blobs_removed"] == 1
    assert query(iati_db, "SELECT count(*) FROM iati.document WHERE publisher LIKE 'fcd%'") == [(0,)]
    assert not blobs.store.exists(source_key(fcdo_hash))


def test_a_changed_document_is_downloaded_again(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin)).success
    old = query(iati_db, "SELECT hash FROM iati.document WHERE name = '3f-activities'")[0][0]
    datasets = recorded_index(iati_standin)
    entry = next(d for d in datasets["datasets"] if d["short_name"] == "3f-activities")
    entry["last_known_good_dataset"]["hash_excluding_generated_timestamp"] = "12" * 20
    iati_standin.route(DATASETS, json=datasets)
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    meta = asset_metadata(result)
    assert (meta["iati_documents"]["changed"], meta["iati_source_files"]["outcome_downloaded"]) == (1, 1)
    assert not blobs.store.exists(source_key(old)) and blobs.store.exists(source_key("12" * 20))


BAD_INPUTS = {
    "malformed": (
        {"body": b'{"datasets": [], "index_created_unix_timestamp": 1795672800,,}'},
        "malformed JSON",
    ),
    "truncated JSON": ({"body": b'{"datasets": [{"id": "a", "short_name": "b"'}, "truncated"),
    "missing": ({"status": 404, "json": {"error": "not found"}}, "not found (HTTP 404)"),
    "wrong shape": ({"json": {"results": []}}, "has no 'datasets' list"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_dataset_index_ends_the_run_and_deletes_nothing(
    case: str, iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin)).success
    before = snapshot_of(iati_db, blobs)
    route, message = BAD_INPUTS[case]
    iati_standin.route(DATASETS, **route)
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    assert not result.success
    text = failure_message(result)
    assert "IATI refresh refused, nothing was changed or deleted" in text and message in text, text
    assert snapshot_of(iati_db, blobs) == before
    refused = query(iati_db, "SELECT refused FROM iati.refresh_log WHERE refused IS NOT NULL")
    assert len(refused) == 1 and message in refused[0][0]


def test_a_transfer_cut_short_ends_the_run_and_deletes_nothing(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin)).success
    before = snapshot_of(iati_db, blobs)
    iati_standin.inject(DATASETS, Fault(truncate=300))
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    assert not result.success
    assert "dataset index at" in failure_message(result) and "truncated" in failure_message(result)
    assert snapshot_of(iati_db, blobs) == before


def test_indices_of_different_runs_end_the_run(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    orgs = recorded_index(iati_standin, "reporting-orgs.json")
    orgs["index_created_unix_timestamp"] += 3600
    iati_standin.route(ORGS, json=orgs)
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    assert not result.success
    assert "different Bulk Data Service runs" in failure_message(result)
    assert query(iati_db, "SELECT count(*) FROM iati.document") == [(0,)]


def test_the_safety_valve_stops_a_shrunken_index_until_overridden(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin)).success
    before = snapshot_of(iati_db, blobs)
    datasets = recorded_index(iati_standin)
    datasets["datasets"] = datasets["datasets"][:3]
    iati_standin.route(DATASETS, json=datasets)
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin))
    assert not result.success
    assert "lists 3 documents but 9 are stored" in failure_message(result)
    assert snapshot_of(iati_db, blobs) == before
    # The percentage is configurable ...
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin, document_safety_percentage=30)).success
    # ... and an operator can accept one shrink explicitly.
    datasets["datasets"] = datasets["datasets"][:1]
    iati_standin.route(DATASETS, json=datasets)
    config = {"ops": {"iati_sync": {"config": {"ignore_safety_valve": True}}}}
    result = run_refresh(iati_db, blobs, iati_resource(iati_standin), config)
    assert result.success and asset_metadata(result)["iati_documents"]["stale"] == 2


def test_retry_errors_mode_from_the_schedule(
    iati_db: DatabaseResource, iati_standin: StandInServer, blobs: BlobStoreResource
) -> None:
    assert run_refresh(iati_db, blobs, iati_resource(iati_standin)).success
    iati_standin.route(f"{MOUNT}/cache/fcdo-withdrawn.xml", body=b"<iati-activities version='2.03'/>")
    assert iati_retry_errors_schedule.cron_schedule == "*/30 * * * *"
    assert iati_retry_errors_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        tick = iati_retry_errors_schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    config = tick.run_requests[0].run_config
    retrying = sorted(op for op, value in config["ops"].items() if value["config"]["retry_errors"])
    assert retrying == [
        "iati_clean_files",
        "iati_flattened_activities",
        "iati_solr_index",
        "iati_source_files",
    ]
    # The schedule runs every stage after the sync (Solr included, hence a Solr to index into).
    with SolrStandIn() as solr:
        result = run_refresh(
            iati_db,
            blobs,
            iati_resource(iati_standin),
            config,
            job=iati_retry_errors_schedule.job_name,
            solr=SolrResource(url=solr.url),
        )
    assert result.success, failure_message(result)
    assert "iati_documents" not in asset_metadata(result)  # no sync: the index is not read again
    files = asset_metadata(result)["iati_source_files"]
    # 404 and charset errors are retried (the PDF fails again), code 4 is not.
    assert (files["due"], files["outcome_downloaded"], files["error_charset"]) == (2, 1, 1)
    assert files["no_source"] == 0
    assert query(iati_db, "SELECT download_error FROM iati.document WHERE name = 'fcdo-withdrawn'") == [
        (None,)
    ]


def sensor_tick(server: StandInServer, cursor: str | None, **overrides: object) -> Any:
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={"iati": iati_resource(server, **overrides), "http": HttpResource(retries=0)},
        )
        return iati_index_sensor(context)


def test_the_sensor_requests_one_run_per_index_change(iati_standin: StandInServer) -> None:
    first = sensor_tick(iati_standin, None)
    assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
    token = first.cursor
    assert first.run_requests[0].run_key == token and token and "|" in token
    assert [r.method for r in iati_standin.requests] == ["HEAD", "HEAD"]  # no index is downloaded
    unchanged = sensor_tick(iati_standin, token)
    assert isinstance(unchanged, dg.SkipReason) and "unchanged" in (unchanged.skip_message or "")
    datasets = recorded_index(iati_standin)
    datasets["index_created"] = "changed"
    iati_standin.route(DATASETS, json=datasets)
    changed = sensor_tick(iati_standin, token)
    assert isinstance(changed, dg.SensorResult) and changed.cursor != token
    assert changed.run_requests[0].run_key == changed.cursor
    assert isinstance(sensor_tick(iati_standin, changed.cursor), dg.SkipReason)


def test_a_missing_etag_is_an_error_not_a_refresh(iati_standin: StandInServer) -> None:
    iati_standin.inject(DATASETS, Fault(drop_headers=("ETag",)))
    with pytest.raises(MissingETag, match="without an ETag header"):
        sensor_tick(iati_standin, "previous")


def test_the_sensor_in_registry_mode_uses_count_and_newest_change(iati_standin: StandInServer) -> None:
    result = sensor_tick(iati_standin, None, source="registry")
    assert result.cursor == "registry:8:2026-11-17T15:38:58.740018"
    assert isinstance(sensor_tick(iati_standin, result.cursor, source="registry"), dg.SkipReason)


def test_definitions_load_with_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecr_pipelines.resources import build_resources

    monkeypatch.setenv("IATI_SOURCE", "registry")
    monkeypatch.setenv("IATI_DOWNLOAD_WORKERS", "3")
    monkeypatch.setenv("IATI_DOCUMENT_SAFETY_PERCENTAGE", "25")
    monkeypatch.setenv("LIMIT_TO_REPORTING_ORGS", "3f,fcdo")
    resource = build_iati_resource()
    assert (resource.source, resource.download_workers, resource.document_safety_percentage) == (
        "registry",
        3,
        25.0,
    )
    assert resource.limit_to_reporting_orgs == "3f,fcdo"
    defs = dg.Definitions.merge(
        core_defs,
        dg.Definitions(
            resources={
                **build_resources(),
                "iati": resource,
                "iati_validator": IatiValidatorResource(),
                "solr": SolrResource(),
            }
        ),
    )
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("iati_refresh_job")
    assert job.tags["ecr/service"] == "iati"
    for spec in defs.resolve_all_asset_specs():
        assert spec.group_name == "iati" and spec.description and len(spec.description) > 30
    monkeypatch.setenv("IATI_DOWNLOAD_WORKERS", "many")
    with pytest.raises(SettingError, match="IATI_DOWNLOAD_WORKERS"):
        build_iati_resource()
    monkeypatch.setenv("IATI_DOWNLOAD_WORKERS", "3")
    monkeypatch.setenv("IATI_SOURCE", "ckan")  # a typo fails loading, naming the variable
    with pytest.raises(SettingError, match="IATI_SOURCE='ckan'.*bds, registry"):
        build_iati_resource()
