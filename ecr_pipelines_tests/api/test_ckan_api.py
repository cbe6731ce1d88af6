"""The CKAN packager's intake under a real uvicorn: requests queued exactly as ``ckan_request_job``
queues them, built by the packager's own stage against the CKAN stand-in, then counted in
``/status`` and ``/statistics*`` and removed by ``/clear_caches``; the legacy's error answers,
and the secret on every route."""

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from ecr_pipelines.api.ckan import PACKAGE_ROUTES as KIND_OF
from ecr_pipelines.api.ckan import SUCCESS_MESSAGE
from ecr_pipelines.api.context import ApiSettings
from ecr_pipelines.ckan import statistics
from ecr_pipelines.ckan.stages.packages import PackagerSettings, package_due
from ecr_pipelines.ckan.stages.requests import submit
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ckan import CkanStandIn, synthetic_table
from ecr_pipelines.lib.blobstore import open_blob_store
from ecr_pipelines.lib.http import make_session
from ecr_pipelines_tests.api.conftest import ServeApi
from ecr_pipelines_tests.conftest import own_migrated_engine

SECRET = "s3cret-of-ckan"
EMAIL = "someone@example.com"
SUCCESS = {"status": "success", "message": SUCCESS_MESSAGE}
NOT_AUTHORIZED = {"status": "failed", "error": "NotAuthorizedError", "message": "Wrong/missing secret"}
ROUTES = [
    "/",
    "/status",
    "/clear_caches",
    "/package_datastore",
    "/package_dwc_archive",
    "/package_url",
    "/statistics",
    "/statistics/requests",
    "/statistics/errors",
    "/statistics/other",
]
SETTINGS_ENV = ("CKAN_SLOW_REQUEST", "CKAN_CACHE_TIME", "CKAN_ANONYMIZE_EMAILS")
ROW_FIELDS = ("kind", "resource_id", "email", "params", "api_key", "cache_key", "speed")

Serve = Callable[..., str]


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[sa.Engine]:
    with own_migrated_engine(pg_server_url, "t_api_ckan") as engine:
        yield engine


@pytest.fixture(autouse=True)
def _clean(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE ckan.package_request, ckan.package, ckan.requests, ckan.errors, ckan.totals "
            "RESTART IDENTITY CASCADE"
        )
        conn.exec_driver_sql("DELETE FROM pipeline.stage_claim")
        conn.exec_driver_sql("DELETE FROM pipeline.mail_outbox")


def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def blobs_url(tmp_path: Path) -> str:
    return str(tmp_path / "blobs")


@pytest.fixture
def serve(serve_api: ServeApi, engine: sa.Engine, blobs_url: str, monkeypatch: pytest.MonkeyPatch) -> Serve:
    """The application with ``CKAN_SECRET`` ``secret`` and the packager's variables ``env``."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)

    def start(secret: str = SECRET, **env: str) -> str:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return serve_api(
            ApiSettings(database_url=url_of(engine), ckan_secret=secret, blob_store_url=blobs_url)
        )

    return start


@pytest.fixture
def ckan(standin: StandInServer) -> CkanStandIn:
    stand_in = CkanStandIn(standin)
    stand_in.add_table("small", synthetic_table(120))
    return stand_in


def post(
    base: str, path: str, fields: dict[str, Any] | None = None, secret: str | None = SECRET
) -> requests.Response:
    data = {**({"secret": secret} if secret is not None else {}), **(fields or {})}
    return requests.post(f"{base}{path}", data=data, timeout=30)


def queue_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row)
            for row in conn.execute(
                sa.text(
                    "SELECT id, kind, resource_id, email, params, api_key, cache_key, speed, status, source "
                    "FROM ckan.package_request ORDER BY id"
                )
            ).mappings()
        ]


def same_row(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in ROW_FIELDS)


# -- queueing -------------------------------------------------------------------------------------


def test_package_routes_queue_the_rows_ckan_request_job_queues(serve: Serve, engine: sa.Engine) -> None:
    import dagster as dg

    from ecr_pipelines.ckan.defs.jobs import ckan_request_job
    from ecr_pipelines.ckan.defs.resources import CkanResource
    from ecr_pipelines.resources import DatabaseResource

    base = serve(CKAN_SLOW_REQUEST="50")
    api_url = "https://ckan.example/api/3/action/datastore_search"
    cases: list[tuple[str, dict[str, str], dict[str, Any]]] = [
        (  # slow: more than CKAN_SLOW_REQUEST rows
            "/package_datastore",
            {"api_url": api_url, "resource_id": "r1", "email": EMAIL, "filters": '{"country": "DK"}',
             "limit": "100", "sort": "name asc", "format": "TSV", "colour": "dropped"},
            {"api_url": api_url, "resource_id": "r1", "email": EMAIL, "filters": '{"country": "DK"}',
             "limit": 100, "sort": "name asc", "format": "TSV"},
        ),
        (
            "/package_datastore",
            {"api_url": api_url, "resource_id": "r1", "email": EMAIL, "limit": "20", "offset": "0"},
            {"api_url": api_url, "resource_id": "r1", "email": EMAIL, "limit": 20},
        ),
        (
            "/package_dwc_archive",
            {"api_url": api_url, "resource_id": "r2", "email": EMAIL, "limit": "10", "for_gbif": "true"},
            {"api_url": api_url, "resource_id": "r2", "email": EMAIL, "limit": 10, "for_gbif": True},
        ),
        (
            "/package_dwc_archive",
            {"api_url": api_url, "resource_id": "r2", "email": EMAIL, "q": "bird", "for_gbif": "false"},
            {"api_url": api_url, "resource_id": "r2", "email": EMAIL, "q": "bird"},
        ),
        (
            "/package_url",
            {"resource_id": "r3", "email": EMAIL, "resource_url": "https://ckan.example/files/a.csv"},
            {"resource_id": "r3", "email": EMAIL, "resource_url": "https://ckan.example/files/a.csv"},
        ),
    ]  # fmt: skip
    for path, fields, _ in cases:
        answer = post(base, path, fields)
        assert (answer.status_code, answer.json()) == (200, SUCCESS)

    defs = dg.Definitions(
        jobs=[ckan_request_job],
        resources={"db": DatabaseResource(url=url_of(engine)), "ckan": CkanResource(slow_request=50)},
    )
    job = defs.resolve_job_def("ckan_request_job")
    with dg.instance_for_test() as instance:
        for path, _, config in cases:
            run_config = {"ops": {"ckan_request": {"config": {"kind": KIND_OF[path], **config}}}}
            assert job.execute_in_process(run_config=run_config, instance=instance).success

    rows = queue_rows(engine)
    ours, theirs = rows[: len(cases)], rows[len(cases) :]
    assert [same_row(row) for row in ours] == [same_row(row) for row in theirs]
    assert [row["speed"] for row in ours] == ["slow", "fast", "fast", "slow", "fast"]
    assert [row["kind"] for row in ours] == ["datastore", "datastore", "dwc", "dwc", "url"]
    assert ours[0]["params"]["filters"] == {"country": "DK"} and "colour" not in ours[0]["params"]
    assert ours[2]["params"]["for_gbif"] is True and "for_gbif" not in ours[3]["params"]
    assert {row["source"] for row in ours} == {"api"} and {row["status"] for row in ours} == {"queued"}


def test_a_requests_api_key_waits_in_api_key_and_is_never_logged(
    serve: Serve, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    base = serve()
    fields = {
        "api_url": "https://ckan.example/api/3/action/datastore_search",
        "resource_id": "private",
        "email": EMAIL,
        "limit": "5",
        "key": "user-ckan-key-0123",
    }
    with caplog.at_level(logging.DEBUG):
        assert post(base, "/package_datastore", fields).json() == SUCCESS
    submit(engine, "datastore", fields, source="test")  # what ckan_request_job's submit makes of it
    ours, direct = queue_rows(engine)
    assert same_row(ours) == same_row(direct)
    assert ours["api_key"] == "user-ckan-key-0123" and "key" not in ours["params"]
    assert "user-ckan-key-0123" not in caplog.text and SECRET not in caplog.text
    # The key is part of the request's identity (as in the legacy's cache key), hashed.
    submit(engine, "datastore", {**fields, "key": "another-key"}, source="test")
    assert queue_rows(engine)[2]["cache_key"] != ours["cache_key"]


def test_a_multipart_form_is_read_as_flask_read_it(serve: Serve, engine: sa.Engine) -> None:
    base = serve()
    fields = {"resource_id": "r", "email": EMAIL, "resource_url": "https://ckan.example/ü.csv"}
    answer = requests.post(
        f"{base}/package_url",
        files={
            "secret": (None, SECRET),
            **{name: (None, value) for name, value in fields.items()},
            "upload": ("x.txt", b"not a field", "text/plain"),
        },
        timeout=10,
    )
    assert (answer.status_code, answer.json()) == (200, SUCCESS)
    assert post(base, "/package_url", fields).json() == SUCCESS
    multipart, urlencoded = queue_rows(engine)
    assert same_row(multipart) == same_row(urlencoded)
    assert multipart["params"]["resource_url"] == "https://ckan.example/ü.csv"


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        ("/package_datastore", {"api_url": "https://c.example/a", "email": EMAIL}, "Parameter resource_id is required"),
        ("/package_datastore", {"resource_id": "r"}, "Parameters api_url, email are required"),
        (
            "/package_datastore",
            {"api_url": "https://c.example/a", "resource_id": "r", "email": EMAIL, "filters": "{country: DK"},
            "Parameter filters is not valid JSON",
        ),
        (
            "/package_dwc_archive",
            {"api_url": "https://c.example/a", "resource_id": "r", "email": EMAIL, "limit": "ten"},
            "Parameter limit must be a whole number",
        ),
        ("/package_url", {"resource_id": "r", "email": EMAIL}, "Parameter resource_url is required"),
        ("/statistics/other", {}, "Unknown statistics request other"),
        ("/statistics/requests", {"offset": "first"}, "Parameter offset must be a whole number"),
        ("/statistics/errors", {"limit": "-1"}, "Parameter limit must not be negative"),
    ],
)  # fmt: skip
def test_a_bad_request_is_the_legacy_400_and_queues_nothing(
    serve: Serve, engine: sa.Engine, path: str, fields: dict[str, str], message: str
) -> None:
    answer = post(serve(), path, fields)
    assert answer.status_code == 400
    body = answer.json()
    assert (body["status"], body["error"]) == ("failed", "BadRequestError")
    assert body["message"].startswith(message)
    assert queue_rows(engine) == []


def test_every_route_refuses_a_wrong_or_missing_secret(serve: Serve, engine: sa.Engine) -> None:
    base = serve()
    fields = {"resource_id": "r", "email": EMAIL, "resource_url": "https://c.example/a.csv"}
    for path in ROUTES:
        for secret in ("wrong", "", None, SECRET + " ", SECRET.upper()):
            answer = post(base, path, fields, secret=secret)
            assert (answer.status_code, answer.json()) == (401, NOT_AUTHORIZED), (path, secret)
        # Only the form counts (as Flask's request.form): not the query string, not a JSON body.
        assert requests.post(f"{base}{path}?secret={SECRET}", data=fields, timeout=10).status_code == 401
        assert (
            requests.post(f"{base}{path}", json={"secret": SECRET, **fields}, timeout=10).status_code == 401
        )
    assert queue_rows(engine) == []

    # Without CKAN_SECRET nothing passes, not even an empty secret.
    unset = serve(secret="")
    for path in ROUTES:
        assert post(unset, path, fields, secret="").status_code == 401
        assert post(unset, path, fields, secret=None).status_code == 401
    assert queue_rows(engine) == []


def test_an_unusable_setting_stops_the_application_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecr_pipelines.api.app import build_app

    monkeypatch.setenv("CKAN_SLOW_REQUEST", "lots")
    with pytest.raises(ValueError, match="CKAN_SLOW_REQUEST='lots' is not a whole number"):
        build_app(ApiSettings(ckan_secret=SECRET))
    monkeypatch.setenv("CKAN_SLOW_REQUEST", "10")
    monkeypatch.setenv("CKAN_ANONYMIZE_EMAILS", "perhaps")
    with pytest.raises(ValueError, match="CKAN_ANONYMIZE_EMAILS"):
        build_app(ApiSettings(ckan_secret=SECRET))


# -- the packager's own runs behind the intake ----------------------------------------------------


def test_queue_build_status_statistics_and_clear_caches(
    serve: Serve, engine: sa.Engine, ckan: CkanStandIn, blobs_url: str
) -> None:
    base = serve()
    file_url = ckan.add_file("/files/data.csv", b"a,b\n1,2\n", "text/csv")
    api = {"api_url": ckan.api_url, "email": EMAIL}
    for path, fields in [
        ("/package_datastore", {**api, "resource_id": "small", "limit": "10"}),
        ("/package_dwc_archive", {**api, "resource_id": "small", "limit": "10", "for_gbif": "1"}),
        ("/package_url", {"resource_id": "file", "email": EMAIL, "resource_url": file_url}),
        ("/package_datastore", {**api, "resource_id": "missing", "limit": "5"}),
        ("/package_datastore", {**api, "resource_id": "small"}),  # every row: the slow queue
    ]:
        assert post(base, path, fields).json() == SUCCESS
    status = post(base, "/status").json()
    assert status == {
        "worker_count": 2,
        "queue_length": 5,
        "queue_lengths": {"fast": 4, "slow": 1},
        "processed_requests": 0,
    }
    assert post(base, "/").json() == status

    # The packager's runs of both queues (what ckan_packages_job runs), into the same store.
    store = open_blob_store(blobs_url)
    session = make_session(retries=0, connect_timeout=2, read_timeout=10)
    settings = PackagerSettings(workers=0)
    fast = package_due(engine, session, store, settings, speed="fast")
    slow = package_due(engine, session, store, settings, speed="slow")
    assert (fast.kinds, slow.kinds) == ({"done": 3, "failed": 1}, {"done": 1})

    assert post(base, "/status").json() == {
        "worker_count": 2,
        "queue_length": 0,
        "queue_lengths": {"fast": 0, "slow": 0},
        "processed_requests": 5,
    }
    totals = post(base, "/statistics").json()
    assert totals == {
        "status": True,
        "totals": {
            "*": {"emails": 1, "errors": 1, "requests": 4},
            "file": {"emails": 1, "errors": 0, "requests": 1},
            "missing": {"emails": 0, "errors": 1, "requests": 0},
            "small": {"emails": 1, "errors": 0, "requests": 3},
        },
    }
    assert post(base, "/statistics", {"resource_id": "file"}).json() == {
        "status": True,
        "totals": {"file": {"emails": 1, "errors": 0, "requests": 1}},
    }
    logged = post(base, "/statistics/requests").json()
    assert logged["success"] is True
    assert [(r["resource_id"], r["count"]) for r in logged["requests"]] == [
        ("small", None),
        ("file", None),
        ("small", 10),
        ("small", 10),
    ]
    assert set(logged["requests"][0]) == {"count", "domain", "email", "resource_id", "timestamp"}
    assert logged["requests"][0]["domain"] == "example.com"
    page = post(base, "/statistics/requests", {"offset": "1", "limit": "1"}).json()["requests"]
    assert [r["resource_id"] for r in page] == ["file"]
    assert (
        len(post(base, "/statistics/requests", {"email": EMAIL, "resource_id": "small"}).json()["requests"])
        == 3
    )
    assert post(base, "/statistics/requests", {"email": "other@example.com"}).json() == {
        "success": True,
        "requests": [],
    }
    errors = post(base, "/statistics/errors").json()
    assert errors["success"] is True and [e["resource_id"] for e in errors["errors"]] == ["missing"]
    assert set(errors["errors"][0]) == {"timestamp", "resource_id", "email", "message"}
    assert "missing" in errors["errors"][0]["message"]

    # A request whose package is stored goes on the fast queue.
    every_row = {**api, "resource_id": "small"}
    post(base, "/package_datastore", every_row)
    assert queue_rows(engine)[-1]["speed"] == "fast"

    with engine.connect() as conn:
        packages = conn.execute(
            sa.text("SELECT blob_key, pinned FROM ckan.package WHERE deleted IS NULL ORDER BY id")
        ).all()
    assert len(packages) == 4 and all(store.exists(key) for key, _ in packages)
    assert post(base, "/clear_caches").json() == {
        "status": "success",
        "message": "Done.",
        "deleted": 3,
        "kept_pinned": 1,
    }
    for key, pinned in packages:
        assert store.exists(key) == pinned
    with engine.connect() as conn:
        live = conn.execute(sa.text("SELECT count(*) FROM ckan.package WHERE deleted IS NULL")).scalar_one()
    assert live == 1
    # With its package gone, the same request is built again, on the slow queue.
    post(base, "/package_datastore", every_row)
    assert queue_rows(engine)[-1]["speed"] == "slow"


def test_statistics_filter_anonymised_addresses_by_their_hash(serve: Serve, engine: sa.Engine) -> None:
    base = serve(CKAN_ANONYMIZE_EMAILS="true")
    with engine.begin() as conn:
        # As the packager's runs log them with CKAN_ANONYMIZE_EMAILS on.
        statistics.log_request(
            conn, resource_id="r1", email="Ann@Example.com", count=5, timestamp=100, anonymize=True
        )
        statistics.log_request(
            conn, resource_id="r2", email="ann@example.com", count=None, timestamp=300, anonymize=True
        )
        statistics.log_request(
            conn, resource_id="r1", email="bob@example.org", count=7, timestamp=200, anonymize=True
        )
        statistics.log_error(
            conn, resource_id="r1", email="bob@example.org", message="boom", timestamp=250, anonymize=True
        )
    hashed = statistics.anonymize_email("ann@example.com")
    rows = post(base, "/statistics/requests", {"email": "ANN@example.com"}).json()["requests"]
    assert [(r["resource_id"], r["timestamp"], r["email"]) for r in rows] == [
        ("r2", 300, hashed),
        ("r1", 100, hashed),
    ]
    assert "ann" not in json.dumps(rows).lower().replace(hashed.lower(), "")
    errors = post(base, "/statistics/errors", {"email": "bob@example.org", "resource_id": "r1"}).json()[
        "errors"
    ]
    assert [(e["message"], e["timestamp"]) for e in errors] == [("boom", 250)]
    totals = post(base, "/statistics").json()["totals"]
    assert totals["*"] == {"emails": 2, "errors": 1, "requests": 3}
    assert totals["r1"] == {"emails": 2, "errors": 1, "requests": 2}
