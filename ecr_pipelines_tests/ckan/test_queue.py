"""The packager as users run it: requests queued (run config, another system's row), the queue
sensor, the packaging asset per queue, cache, mails, statistics, API keys and the clean-up."""

import csv
import email
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from ecr_pipelines.ckan.defs import core_defs
from ecr_pipelines.ckan.defs.requests import CkanRequestConfig
from ecr_pipelines.ckan.defs.resources import CkanResource
from ecr_pipelines.ckan.defs.sensors import ckan_queue_sensor
from ecr_pipelines.ckan.stages.requests import submit
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ckan import CkanStandIn, rows_table, synthetic_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource

REPO = Path(__file__).resolve().parents[2]
EMAIL = "someone@example.com"
CKAN_TABLES = "ckan.package_request, ckan.package, ckan.requests, ckan.errors, ckan.totals"


@pytest.fixture
def ckan_db(db: DatabaseResource) -> DatabaseResource:
    with db.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {CKAN_TABLES} RESTART IDENTITY CASCADE"))
        conn.execute(sa.text("DELETE FROM pipeline.mail_outbox WHERE dedupe_key LIKE 'ckan/%'"))
        conn.execute(sa.text("DELETE FROM pipeline.stage_claim WHERE stage = 'ckan_package'"))
    return db


@pytest.fixture
def ckan(standin: StandInServer) -> CkanStandIn:
    stand_in = CkanStandIn(standin)
    stand_in.add_table("small", synthetic_table(120))
    stand_in.add_table("big", synthetic_table(60_000))
    return stand_in


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def resources(db: DatabaseResource, tmp_path: Path, **ckan: Any) -> dict[str, Any]:
    return {
        "db": db,
        "blobs": BlobStoreResource(url=str(tmp_path / "blobs")),
        "http": HttpResource(retries=0, read_timeout=10.0),
        "mail": MailResource(outbox_dir=str(tmp_path / "outbox")),
        "ckan": CkanResource(workers=0, **ckan),
    }


def drain(
    db: DatabaseResource,
    tmp_path: Path,
    speed: str = "fast",
    instance: dg.DagsterInstance | None = None,
    **ckan: Any,
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(db, tmp_path, **ckan)))
    job = defs.resolve_job_def("ckan_packages_job")
    result = job.execute_in_process(
        run_config={"ops": {"ckan_packages": {"config": {"speed": speed}}}}, instance=instance
    )
    assert result.success
    return result


def requests_table(db: DatabaseResource) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.id, r.kind, r.status, r.speed, r.cached, r.rows, r.error_kind, r.error, r.api_key, "
                "p.blob_key FROM ckan.package_request r LEFT JOIN ckan.package p ON p.id = r.package_id ORDER BY r.id"
            )
        ).mappings()
        return [dict(row) for row in rows]


def mails(folder: Path) -> list[email.message.Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in sorted((folder / "outbox").glob("*.eml"))]


def text_of(message: email.message.Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    return ""


def totals(db: DatabaseResource) -> dict[str, tuple[int, int, int]]:
    with db.connect() as conn:
        return {
            r.resource_id: (r.requests, r.errors, r.emails)
            for r in conn.execute(sa.text("SELECT resource_id, requests, errors, emails FROM ckan.totals"))
        }


@pytest.mark.slow
def test_request_job_then_the_sensors_run_leaves_zip_mail_and_statistics(
    ckan_db: DatabaseResource,
    ckan: CkanStandIn,
    dagster_cli_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's "must show": `dagster job execute -j ckan_request_job -c request.yaml`, then the
    run the sensor asks for."""
    request = {
        "ops": {
            "ckan_request": {
                "config": {"api_url": ckan.api_url, "resource_id": "small", "email": EMAIL, "limit": 100}
            }
        }
    }
    config = tmp_path / "request.yaml"
    config.write_text(yaml.safe_dump(request))
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "job", "execute", "-m", "ecr_pipelines.definitions", "-j", "ckan_request_job", "-c", str(config)],
        cwd=REPO, env={**dagster_cli_env, "ECR_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(r["kind"], r["status"], r["speed"]) for r in requests_table(ckan_db)] == [
        ("datastore", "queued", "fast")
    ]

    monkeypatch.setenv("DAGSTER_PG_URL", dagster_cli_env["DAGSTER_PG_URL"])
    with dg.DagsterInstance.from_config(dagster_cli_env["DAGSTER_HOME"]) as instance:
        tick = ckan_queue_sensor(dg.build_sensor_context(instance=instance, resources={"db": ckan_db}))
        assert isinstance(tick, dg.SensorResult)
        [run_request] = tick.run_requests
        assert run_request.tags["ckan/queue"] == "fast" and run_request.tags["ecr/service"] == "ckan"
        defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(ckan_db, tmp_path)))
        result = defs.resolve_job_def("ckan_packages_job").execute_in_process(
            run_config=run_request.run_config, tags=run_request.tags, instance=instance
        )
    assert result.success
    [row] = requests_table(ckan_db)
    assert (row["status"], row["rows"], row["cached"]) == ("done", 100, False)
    with zipfile.ZipFile(tmp_path / "blobs" / row["blob_key"]) as archive:
        assert archive.namelist() == ["resource.csv"]
        table = list(csv.reader(io.StringIO(archive.read("resource.csv").decode(), newline="")))
    assert table[0][:3] == ["_id", "name", "count"] and len(table) == 101
    [message] = mails(tmp_path)
    assert (
        message["To"] == EMAIL and message["Subject"] == f"Resource from {ckan.server.url().split('//')[1]}"
    )
    assert (tmp_path / "blobs" / row["blob_key"]).as_uri() in text_of(message)
    assert totals(ckan_db) == {"*": (1, 0, 1), "small": (1, 0, 1)}
    with ckan_db.connect() as conn:
        assert conn.execute(sa.text("SELECT count, domain, email FROM ckan.requests")).one() == (
            100,
            "example.com",
            EMAIL,
        )
    statistics = result.asset_materializations_for_node("ckan_statistics")[0].metadata
    assert statistics["requests"].value == 1 and statistics["unique_emails"].value == 1
    # The sensor is quiet once the queue is empty.
    with dg.instance_for_test() as quiet:
        assert isinstance(
            ckan_queue_sensor(dg.build_sensor_context(instance=quiet, resources={"db": ckan_db})),
            dg.SkipReason,
        )


def test_a_bad_request_is_refused_and_queues_nothing(ckan_db: DatabaseResource, tmp_path: Path) -> None:
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(ckan_db, tmp_path)))
    result = defs.resolve_job_def("ckan_request_job").execute_in_process(
        run_config={"ops": {"ckan_request": {"config": {"resource_id": "x", "email": EMAIL}}}},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "Parameter api_url is required" in failure.message
    assert requests_table(ckan_db) == []


def test_speed_rule_and_one_run_per_queue(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    engine = ckan_db.engine
    submit(engine, "datastore", {"api_url": ckan.api_url, "resource_id": "big", "email": EMAIL}, source="t")
    submit(
        engine,
        "datastore",
        {"api_url": ckan.api_url, "resource_id": "small", "email": EMAIL, "limit": 10},
        source="t",
    )
    submit(
        engine,
        "datastore",
        {"api_url": ckan.api_url, "resource_id": "big", "email": EMAIL, "limit": 60_000, "offset": 20_000},
        source="t",
    )
    assert [r["speed"] for r in requests_table(ckan_db)] == [
        "slow",
        "fast",
        "fast",
    ]  # limit - offset = 40,000

    tick = ckan_queue_sensor(dg.build_sensor_context(instance=instance, resources={"db": ckan_db}))
    assert isinstance(tick, dg.SensorResult)
    assert sorted(r.tags["ckan/queue"] for r in tick.run_requests) == ["fast", "slow"]

    drain(ckan_db, tmp_path, "fast")
    assert [r["status"] for r in requests_table(ckan_db)] == ["queued", "done", "done"]
    drain(ckan_db, tmp_path, "slow")
    rows = requests_table(ckan_db)
    assert [r["status"] for r in rows] == ["done", "done", "done"]
    assert [r["rows"] for r in rows] == [60_000, 10, 40_000]


def test_an_identical_request_is_served_from_the_cache(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path
) -> None:
    base = {"api_url": ckan.api_url, "resource_id": "small", "limit": 50, "filters": '{"a": 1, "b": 2}'}
    submit(ckan_db.engine, "datastore", {**base, "email": "first@example.com"}, source="t")
    drain(ckan_db, tmp_path)
    searches = len(ckan.searches)
    # Same parameters in another order and another requester: a cache hit, fast, only mailed.
    _id, second = submit(
        ckan_db.engine,
        "datastore",
        {"filters": '{"b": 2, "a": 1}', "email": "second@other.org", "limit": 50, **base},
        source="t",
    )
    assert second.speed == "fast"
    drain(ckan_db, tmp_path)
    assert len(ckan.searches) == searches
    first_row, second_row = requests_table(ckan_db)
    assert second_row["cached"] is True and second_row["blob_key"] == first_row["blob_key"]
    assert [m["To"] for m in mails(tmp_path)] == ["first@example.com", "second@other.org"]
    assert totals(ckan_db) == {"*": (2, 0, 2), "small": (2, 0, 2)}
    # Past CKAN_CACHE_TIME the package is built again.
    with ckan_db.begin() as conn:
        conn.execute(sa.text("UPDATE ckan.package SET created = now() - interval '2 days'"))
    submit(ckan_db.engine, "datastore", {**base, "email": "first@example.com"}, source="t")
    drain(ckan_db, tmp_path)
    assert requests_table(ckan_db)[-1]["cached"] is False
    assert len(ckan.searches) > searches


def test_a_ckan_error_mid_stream_fails_that_request_alone(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path
) -> None:
    ckan.add_table("breaks", synthetic_table(30_000, fail_at_row=12_000))
    engine = ckan_db.engine
    for resource, limit in (("small", 20), ("breaks", 20_000), ("small", 30)):
        submit(
            engine,
            "datastore",
            {"api_url": ckan.api_url, "resource_id": resource, "email": EMAIL, "limit": limit},
            source="t",
        )
    result = drain(ckan_db, tmp_path, page_size=5000)
    rows = requests_table(ckan_db)
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["error_kind"] == "http_status" and rows[1]["blob_key"] is None
    stored = sorted(p.name for p in (tmp_path / "blobs" / "ckan" / "packages").iterdir())
    assert stored == sorted(Path(rows[i]["blob_key"]).name for i in (0, 2))  # nothing half-stored
    assert totals(ckan_db)["breaks"] == (0, 1, 0) and totals(ckan_db)["*"] == (2, 1, 1)
    with ckan_db.connect() as conn:
        [(resource, message)] = conn.execute(sa.text("SELECT resource_id, message FROM ckan.errors")).all()
    assert resource == "breaks" and "500" in message
    notices = [m for m in mails(tmp_path) if "breaks" in text_of(m)]
    assert len(notices) == 1 and "could not be prepared" in text_of(notices[0])
    metadata = result.asset_materializations_for_node("ckan_packages")[0].metadata
    assert metadata["errors"].value == 1


def test_a_row_from_another_system_with_its_own_api_key(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path
) -> None:
    ckan.add_table("private", rows_table([{"_id": 1, "secret": "x"}], api_key="request-key"))
    with ckan_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO ckan.package_request (kind, resource_id, email, params, api_key) VALUES "
                "('datastore', 'private', :email, CAST(:params AS jsonb), 'request-key'), "
                "('datastore', 'private', :email, '{}', NULL)"
            ),
            {"email": EMAIL, "params": json.dumps({"api_url": ckan.api_url, "limit": 5, "unknown": 1})},
        )
    result = drain(ckan_db, tmp_path)
    good, bad = requests_table(ckan_db)
    assert (good["status"], good["speed"], good["api_key"]) == ("done", "fast", None)
    assert (bad["status"], bad["error_kind"]) == ("failed", "bad_request")
    assert "Parameter api_url is required" in bad["error"]
    assert ckan.searches[-1]["resource_id"] == "private"
    with ckan_db.connect() as conn:
        params = conn.execute(
            sa.text("SELECT params FROM ckan.package_request WHERE id = :id"), {"id": good["id"]}
        ).scalar()
    assert "unknown" not in params and "key" not in params
    logged = "\n".join(str(e) for e in result.all_events)
    assert "request-key" not in logged


def test_the_portal_key_comes_from_the_environment_only(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path
) -> None:
    ckan.add_table("private", rows_table([{"_id": 1, "secret": "x"}], api_key="portal-key"))
    submit(
        ckan_db.engine,
        "datastore",
        {"api_url": ckan.api_url, "resource_id": "private", "email": EMAIL},
        source="t",
    )
    drain(ckan_db, tmp_path, "slow", api_key="portal-key")
    assert requests_table(ckan_db)[0]["status"] == "done"
    assert not {"key", "api_key"} & set(CkanRequestConfig.model_fields)  # never in run config


def test_a_request_whose_run_died_is_built_again(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path
) -> None:
    request_id, _pkg = submit(
        ckan_db.engine,
        "datastore",
        {"api_url": ckan.api_url, "resource_id": "small", "email": EMAIL, "limit": 5},
        source="t",
    )
    with ckan_db.begin() as conn:  # what a killed run leaves: running, its claim's backend gone
        conn.execute(
            sa.text("UPDATE ckan.package_request SET status = 'running', started = now() WHERE id = :id"),
            {"id": request_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO pipeline.stage_claim (stage, item, owner_pid, owner_started) "
                "VALUES ('ckan_package', :item, 999999, now())"
            ),
            {"item": str(request_id)},
        )
    drain(ckan_db, tmp_path)
    assert requests_table(ckan_db)[0]["status"] == "done"
    assert len(mails(tmp_path)) == 1


def test_url_and_xlsx_requests_and_presigned_links_on_s3(
    ckan_db: DatabaseResource, ckan: CkanStandIn, s3_blobs: BlobStoreResource, tmp_path: Path
) -> None:
    file_url = ckan.add_file("/files/list.csv", b"a,b\n1,2\n", "text/csv") + "?download=1"
    submit(ckan_db.engine, "url", {"resource_id": "r1", "email": EMAIL, "resource_url": file_url}, source="t")
    submit(
        ckan_db.engine,
        "datastore",
        {
            "api_url": ckan.api_url,
            "resource_id": "small",
            "email": EMAIL,
            "limit": 3,
            "format": "xlsx",
            "doi": "10.5072/x",
        },
        source="t",
    )
    defs = dg.Definitions.merge(
        core_defs, dg.Definitions(resources={**resources(ckan_db, tmp_path), "blobs": s3_blobs})
    )
    assert (
        defs.resolve_job_def("ckan_packages_job")
        .execute_in_process(run_config={"ops": {"ckan_packages": {"config": {"speed": "fast"}}}})
        .success
    )
    url_row, xlsx_row = requests_table(ckan_db)
    with zipfile.ZipFile(io.BytesIO(s3_blobs.store.get_bytes(url_row["blob_key"]))) as archive:
        assert archive.namelist() == ["list.csv"] and archive.read("list.csv") == b"a,b\n1,2\n"
    with zipfile.ZipFile(io.BytesIO(s3_blobs.store.get_bytes(xlsx_row["blob_key"]))) as archive:
        assert archive.namelist() == ["resource.xlsx"]
    texts = [text_of(m) for m in mails(tmp_path)]
    assert all("X-Amz-Expires=604800" in t for t in texts)  # presigned for as long as kept (7 days)
    assert "https://doi.org/10.5072/x" in texts[1] and "doi.org" not in texts[0]


def test_the_daily_cleanup_keeps_pinned_and_fresh_packages(
    ckan_db: DatabaseResource, ckan: CkanStandIn, tmp_path: Path
) -> None:
    for limit in (5, 6, 7):
        submit(
            ckan_db.engine,
            "datastore",
            {"api_url": ckan.api_url, "resource_id": "small", "email": EMAIL, "limit": limit},
            source="t",
        )
    drain(ckan_db, tmp_path)
    with ckan_db.begin() as conn:
        conn.execute(
            sa.text("UPDATE ckan.package SET created = now() - interval '8 days' WHERE rows IN (5, 6)")
        )
        conn.execute(sa.text("UPDATE ckan.package SET pinned = true WHERE rows = 6"))
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(ckan_db, tmp_path)))
    result = defs.resolve_job_def("ckan_cleanup_job").execute_in_process()
    assert result.output_for_node("ckan_delete_expired_packages") == 1
    with ckan_db.connect() as conn:
        kept = dict(conn.execute(sa.text("SELECT rows, deleted IS NULL FROM ckan.package")).all())
        keys = dict(conn.execute(sa.text("SELECT rows, blob_key FROM ckan.package")).all())
    assert kept == {5: False, 6: True, 7: True}
    assert not (tmp_path / "blobs" / keys[5]).exists() and (tmp_path / "blobs" / keys[6]).exists()
    # A deleted package is no longer a cache hit.
    submit(
        ckan_db.engine,
        "datastore",
        {"api_url": ckan.api_url, "resource_id": "small", "email": EMAIL, "limit": 5},
        source="t",
    )
    drain(ckan_db, tmp_path)
    assert requests_table(ckan_db)[-1]["cached"] is False


def test_definitions_refuse_a_bad_template_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ecr_pipelines.ckan.defs.resources import build_ckan_resource
    from ecr_pipelines.resources.env import SettingError

    bad = tmp_path / "mail.yaml"
    bad.write_text("subject: 'Hello {nobody}'\n")
    monkeypatch.setenv("CKAN_MAIL_TEMPLATES", str(bad))
    with pytest.raises(SettingError, match="CKAN_MAIL_TEMPLATES"):
        build_ckan_resource()
    monkeypatch.delenv("CKAN_MAIL_TEMPLATES")
    monkeypatch.setenv("CKAN_DOWNLOAD_URL_TEMPLATE", "https://x/{file}")
    with pytest.raises(SettingError, match="CKAN_DOWNLOAD_URL_TEMPLATE"):
        build_ckan_resource()
