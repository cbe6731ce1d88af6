"""The registry API's helpdesk matching routes and its run-starting routes, under a real uvicorn.

Matching: undertakings and old companies stored by the registry's own sync code, links proposed
by its own matching run, then verified through the API against a stand-in BDR endpoint and a real
SMTP server on loopback: the same ``matching_log`` rows, BDR calls and mails as the operator jobs.
Sync and match: Dagster's GraphQL client talks to a stand-in of the webserver's GraphQL endpoint
(``DagsterGraphQLStandIn``); what it submits (job, run config, tags) is checked, and the run
config is validated against the real job definitions.
"""

from collections.abc import Iterator, Sequence
from email import message_from_bytes
from email.policy import default as email_policy
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from ecr_pipelines.api.context import ApiSettings
from ecr_pipelines.api.registry.undertakings import UNDERTAKING_FIELDS
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.server import RecordedRequest, Reply
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.store.reference import seed_reference_tables
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.api.conftest import ServeApi
from ecr_pipelines_tests.conftest import SmtpSink, own_migrated_engine
from ecr_pipelines_tests.registry import payloads as p
from ecr_pipelines_tests.registry.conftest import REGISTRY_TABLES
from ecr_pipelines_tests.registry.test_operations import match, old, seed

# dagster_graphql calls gql the way gql 4 deprecates; nothing this module can change.
pytestmark = pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")

TOKEN = "helpdesk-token"
AUTH = {"Authorization": TOKEN}
COLLECTION = "/ReportekEngine/update_company_collection"
UNAUTHORIZED = {
    "status": "Unauthorized",
    "message": "You need to be authenticated in order to access this resource.",
}
JOBS = (
    "registry_sync_job",
    "registry_old_companies_job",
    "registry_licences_job",
    "registry_match_job",
    "registry_flush_job",
    "registry_verify_job",
)


class DagsterGraphQLStandIn:
    """Dagster's webserver, as far as ``DagsterGraphQLClient.submit_job_execution`` uses it:
    ``POST /graphql`` with the repository query (which location and repository hold the job) and
    the ``launchPipelineExecution`` mutation. Launches are recorded; ``failure`` replaces the
    success answer (a ``__typename`` with its fields, as Dagster answers a refused launch)."""

    LOCATION = "ecr_pipelines.definitions"
    REPOSITORY = "__repository__"

    def __init__(self, server: StandInServer, jobs: Sequence[str]) -> None:
        self.server = server
        self.jobs = list(jobs)
        self.launches: list[dict[str, Any]] = []
        self.failure: dict[str, Any] | None = None
        server.route("/graphql", method="POST", handler=self._answer)

    @property
    def url(self) -> str:
        return self.server.url()

    def _answer(self, request: RecordedRequest) -> Reply:
        body = request.json()
        query = body.get("query", "")
        if "repositoriesOrError" in query:
            node = {
                "name": self.REPOSITORY,
                "location": {"name": self.LOCATION},
                "pipelines": [{"name": job} for job in self.jobs],
            }
            return Reply.json(
                {"data": {"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": [node]}}}
            )
        if "launchPipelineExecution" in query:
            self.launches.append(body["variables"]["executionParams"])
            answer = self.failure or {
                "__typename": "LaunchRunSuccess",
                "run": {"runId": f"run-{len(self.launches)}"},
            }
            return Reply.json({"data": {"launchPipelineExecution": answer}})
        return Reply.json({"errors": [{"message": "the stand-in knows no such query"}]}, status=400)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_url(pg_server_url: str) -> Iterator[str]:
    """A migrated database of this module's own (no other test file's rows)."""
    with own_migrated_engine(pg_server_url, "api_matching") as engine:
        yield engine.url.render_as_string(hide_password=False)


@pytest.fixture
def registry(own_url: str) -> DatabaseResource:
    """The registry tables and the mail outbox emptied, the reference tables loaded."""
    db = DatabaseResource(url=own_url)
    with db.begin() as conn:
        tables = ", ".join(f"registry.{t.strip()}" for t in REGISTRY_TABLES.split(","))
        conn.exec_driver_sql(f"TRUNCATE {tables}, pipeline.mail_outbox RESTART IDENTITY CASCADE")
        seed_reference_tables(Sql(conn))
    return db


@pytest.fixture
def dagster() -> Iterator[DagsterGraphQLStandIn]:
    with StandInServer() as server:
        yield DagsterGraphQLStandIn(server, JOBS)


@pytest.fixture
def helpdesk(
    registry: DatabaseResource,
    standin: StandInServer,
    smtp_server: tuple[str, SmtpSink],
    serve_api: ServeApi,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The application with BDR (the stand-in), verification mails (real SMTP) and data synced and
    matched by the registry's own code: F-gas 1 "Acme Cooling" (failed the checks, so BDR is
    called) with a proposed link to old company 100, F-gas 2 and 3 without candidates, F-gas 4
    (failed the checks; BDR refuses it), ODS 10 with a proposed link to old company 200."""
    smtp_url, _ = smtp_server
    for name, value in {
        "BDR_ENDPOINT_URL": standin.url(),
        "BDR_ENDPOINT_USER": "bdr-user",
        "BDR_ENDPOINT_PASSWORD": "bdr-pass",
        "SEND_MATCHING_MAILS": "true",
        "SMTP_URL": smtp_url,
        "MAIL_FROM": "registry@example.test",
        "HTTP_RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, value)
    seed(
        registry,
        fgas=[
            p.fgas(1, "Acme Cooling", status="DISABLED"),
            p.fgas(2, "Beta Trading"),
            p.fgas(3, "Gamma Freeze"),
            p.fgas(4, "Delta Chill", status="DISABLED"),
        ],
        ods=[p.ods(10, "Halon Services SRL")],
        old_fgas=[old(100, "Acme Cooling", account="fgas30123")],
        old_ods=[old(200, "Halon Services SRL", country="ro", account="ods40001")],
    )
    match(registry)
    with registry.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO registry.mail_address (mail, first_name, last_name) VALUES "
                "('desk@example.test', 'Dana', 'Desk'), ('lead@example.test', NULL, NULL)"
            )
        )
    standin.route(COLLECTION, json={"status": "success", "message": "ok"})
    standin.route(
        COLLECTION, query={"company_id": "4"}, json={"status": "fail", "message": "locked"}, status=404
    )
    return serve_api(ApiSettings(database_url=registry.url, api_token=TOKEN))


def rows(db: DatabaseResource, query: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query))]


def log_rows(db: DatabaseResource) -> list[tuple[Any, ...]]:
    return rows(
        db,
        'SELECT "user", domain, company_id, oldcompany_id, oldcompany_account, verified '
        "FROM registry.matching_log ORDER BY id",
    )


def outbox(db: DatabaseResource) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT recipients, subject, sent_at IS NOT NULL FROM pipeline.mail_outbox ORDER BY id")


# -- matching --------------------------------------------------------------------------------------


def test_candidate_lists_on_matched_data(helpdesk: str) -> None:
    fgas = requests.get(f"{helpdesk}/candidate/FGAS/list", headers=AUTH, timeout=10)
    assert fgas.status_code == 200
    assert [(c["undertaking"]["company_id"], c["links"]) for c in fgas.json()] == [
        (1, [{"name": "Acme Cooling"}]),
        (2, []),
        (3, []),
        (4, []),
    ]
    assert fgas.json()[0]["undertaking"] == {
        "company_id": 1,
        "name": "Acme Cooling",
        "date_updated": "2025-11-06",
        "status": "DISABLED",
        "country": "Country DE",
    }
    ods = requests.get(f"{helpdesk}/candidate/ODS/list/", headers=AUTH, timeout=10).json()
    assert [(c["undertaking"]["company_id"], c["links"]) for c in ods] == [
        (10, [{"name": "Halon Services SRL"}])
    ]
    assert requests.get(f"{helpdesk}/candidate/FGAS/list/verified", headers=AUTH, timeout=10).json() == []
    assert requests.get(f"{helpdesk}/candidate/XYZ/list", headers=AUTH, timeout=10).status_code == 404


def test_verify_calls_bdr_logs_and_mails_after_the_commit(
    helpdesk: str, registry: DatabaseResource, standin: StandInServer, smtp_server: tuple[str, SmtpSink]
) -> None:
    _, sink = smtp_server
    answer = requests.post(
        f"{helpdesk}/candidate/FGAS/verify/1/100", data={"user": "jane"}, headers=AUTH, timeout=10
    )
    assert answer.status_code == 200
    link = answer.json()
    assert (link["verified"], link["company_id"], link["collection_id"]) == (True, 1, 100)
    assert set(link) == {"verified", "date_added", "date_verified", "company_id", "collection_id"}
    assert link["date_verified"].count("/") == 2  # the legacy's DD/MM/YYYY HH:MM
    # The operator's own rows: the log, the undertaking and the link.
    assert log_rows(registry) == [("jane", "FGAS", 1, 100, "fgas30123", True)]
    assert rows(
        registry,
        "SELECT oldcompany_verified, oldcompany_account, oldcompany_extid FROM registry.undertaking "
        "WHERE external_id = 1",
    ) == [(True, "fgas30123", 100)]
    # BDR was asked to bind the old collection, with the configured credentials.
    (call,) = standin.requests_to(COLLECTION)
    assert call.query["company_id"] == "1" and call.query["old_collection_id"] == "fgas30123"
    assert call.headers["Authorization"].startswith("Basic ")
    # One mail per address, queued in the transaction and sent after it.
    assert outbox(registry) == [
        (["desk@example.test"], "BDR - New Company matched", True),
        (["lead@example.test"], "BDR - New Company matched", True),
    ]
    sent = sorted((to[0], message_from_bytes(raw, policy=email_policy)) for _, to, raw in sink.messages)
    assert [(to, m["Subject"], m["From"]) for to, m in sent] == [
        ("desk@example.test", "BDR - New Company matched", "registry@example.test"),
        ("lead@example.test", "BDR - New Company matched", "registry@example.test"),
    ]
    assert "Dear Dana Desk," in sent[0][1].get_body(("plain",)).get_content()

    verified = requests.get(f"{helpdesk}/candidate/FGAS/list/verified", headers=AUTH, timeout=10).json()
    assert [(u["company_id"], u["oldcompany_verified"], u["oldcompany_account"]) for u in verified] == [
        (1, True, "fgas30123")
    ]
    # The legacy's raw undertaking dict, built as the read side builds it (no "id").
    assert set(verified[0]) == {*UNDERTAKING_FIELDS, "company_id"}
    assert [c["undertaking"]["company_id"] for c in requests.get(
        f"{helpdesk}/candidate/FGAS/list", headers=AUTH, timeout=10
    ).json()] == [2, 3, 4]  # fmt: skip

    # A repeated verify is answered the same and changes, calls and mails nothing.
    again = requests.post(
        f"{helpdesk}/candidate/FGAS/verify/1/100", data={"user": "jane"}, headers=AUTH, timeout=10
    )
    assert again.json()["collection_id"] == 100
    assert (
        len(log_rows(registry)) == 1 and len(standin.requests_to(COLLECTION)) == 1 and len(sink.messages) == 2
    )

    matching = f"{helpdesk}/candidate/verify-matching-ids"
    assert requests.get(f"{matching}/1/fgas30123", headers=AUTH, timeout=10).json() == {"match": 1}
    assert requests.get(f"{matching}/1/fgas99999", headers=AUTH, timeout=10).json() == {"match": 0}
    assert requests.get(f"{matching}/1/ods40001", headers=AUTH, timeout=10).json() == {
        "match": 0
    }  # ODS 1: none
    assert requests.get(f"{matching}/x/fgas30123", headers=AUTH, timeout=10).json() == {"match": 0}


def test_verify_none_manual_and_unverify(
    helpdesk: str, registry: DatabaseResource, standin: StandInServer
) -> None:
    none = requests.post(
        f"{helpdesk}/candidate/FGAS/verify-none/2", data={"user": "jane"}, headers=AUTH, timeout=10
    )
    assert none.status_code == 200
    body = none.json()
    assert (
        body["company_id"],
        body["verified"],
        body["oldcompany_verified"],
        body["oldcompany_account"],
    ) == (
        2,
        True,
        True,
        None,
    )
    assert "id" not in body and body["date_created"] == "20/10/2014"  # the legacy's dates
    manual = requests.post(
        f"{helpdesk}/candidate/ODS/manual/10/ods777", data={"user": "joe"}, headers=AUTH, timeout=10
    ).json()
    assert (manual["company_id"], manual["oldcompany_verified"], manual["oldcompany_account"]) == (
        10,
        True,
        "ods777",
    )
    assert "verified" not in manual
    # Both passed the checks: no BDR call. Both are mailed as "added".
    assert standin.requests_to(COLLECTION) == []
    assert [subject for _, subject, sent in outbox(registry) if sent] == ["BDR - New Company added"] * 4

    unverify = requests.post(
        f"{helpdesk}/candidate/ODS/unverify/10/", data={"user": "kim"}, headers=AUTH, timeout=10
    )
    assert unverify.status_code == 200
    assert (unverify.json()["oldcompany_verified"], unverify.json()["oldcompany_account"]) == (False, None)
    assert log_rows(registry) == [
        ("jane", "FGAS", 2, None, None, True),
        ("joe", "ODS", 10, None, "ods777", True),
        ("kim", "ODS", 10, None, None, False),
    ]
    assert len(outbox(registry)) == 4  # unverify mails nobody (legacy)
    # Not verified (any more): 404, as the legacy.
    again = requests.post(
        f"{helpdesk}/candidate/ODS/unverify/10", data={"user": "kim"}, headers=AUTH, timeout=10
    )
    assert again.status_code == 404 and again.json()["status"] == "Not Found"


def test_a_mail_server_failure_leaves_the_verification_and_keeps_the_mail(
    helpdesk: str,
    registry: DatabaseResource,
    serve_api: ServeApi,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: tuple[str, SmtpSink],
) -> None:
    with StandInServer() as closed:
        port = closed.port
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{port}")  # nobody listens there any more
    base = serve_api(ApiSettings(database_url=registry.url, api_token=TOKEN))
    answer = requests.post(
        f"{base}/candidate/FGAS/verify/1/100", data={"user": "jane"}, headers=AUTH, timeout=10
    )
    assert answer.status_code == 200 and answer.json()["verified"] is True
    assert log_rows(registry) == [("jane", "FGAS", 1, 100, "fgas30123", True)]
    # Both mails stay queued with their error, for the next sender (the housekeeping sensor).
    assert rows(
        registry, "SELECT sent_at IS NULL, attempts, error IS NOT NULL FROM pipeline.mail_outbox"
    ) == [
        (True, 1, True),
        (True, 1, True),
    ]
    assert smtp_server[1].messages == []


def test_matching_settings_keep_secrets_out_of_their_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecr_pipelines.api.registry.matching import MatchingSettings

    monkeypatch.setenv("BDR_ENDPOINT_PASSWORD", "bdr-secret")
    monkeypatch.setenv("SMTP_URL", "smtp://user:smtp-secret@mail.example.test:587")
    monkeypatch.setenv("SEND_MATCHING_MAILS", "TRUE")  # the legacy read only "True" / "true"
    settings = MatchingSettings.from_env()
    assert settings.bdr_endpoint_password == "bdr-secret" and not settings.send_matching_mails
    assert "secret" not in repr(settings)
    monkeypatch.setenv("HTTP_RETRIES", "many")
    with pytest.raises(ValueError, match="HTTP_RETRIES"):
        MatchingSettings.from_env()


@pytest.mark.parametrize(
    ("path", "form", "status"),
    [
        ("/candidate/FGAS/verify/2/100", {"user": "jane"}, 404),  # no proposed link
        ("/candidate/FGAS/verify/999/100", {"user": "jane"}, 404),  # no such undertaking
        ("/candidate/ODS/verify/1/100", {"user": "jane"}, 404),  # not in that domain
        ("/candidate/FGAS/verify/abc/100", {"user": "jane"}, 404),
        ("/candidate/FGAS/verify-none/999", {"user": "jane"}, 404),
        ("/candidate/FGAS/manual/999/fgas1", {"user": "jane"}, 404),
        ("/candidate/FGAS/unverify/3/", {"user": "jane"}, 404),  # not verified
        ("/candidate/XYZ/verify-none/2", {"user": "jane"}, 404),
        ("/candidate/FGAS/verify-none/2", {}, 400),  # the user is required (it is logged)
        ("/candidate/FGAS/verify-none/2", {"user": "  "}, 400),
        ("/candidate/FGAS/verify-none/4", {"user": "jane"}, 502),  # BDR refuses the collection
        ("/candidate/FGAS/manual/4/fgas5", {"user": "jane"}, 502),
    ],
)
def test_refusals_change_nothing(
    helpdesk: str, registry: DatabaseResource, path: str, form: dict[str, str], status: int
) -> None:
    answer = requests.post(f"{helpdesk}{path}", data=form, headers=AUTH, timeout=10)
    assert answer.status_code == status
    if status == 502:
        assert "locked" in answer.json()["error"]
    assert log_rows(registry) == [] and outbox(registry) == []
    assert rows(registry, "SELECT count(*) FROM registry.undertaking WHERE oldcompany_verified") == [(0,)]


# -- starting Dagster runs -------------------------------------------------------------------------

LAUNCHES = [
    (
        "/sync/fgases?days=3&page_size=50&id=7&registration_id=FG-7&updated_since=01/02/2026",
        "registry_sync_job",
        {
            "ops": {
                "fgas_undertakings": {
                    "config": {
                        "days": 3,
                        "page_size": 50,
                        "external_id": 7,
                        "registration_id": "FG-7",
                        "updated_since": "01/02/2026",
                    }
                },
                "ods_undertakings": {"config": {"sync": False}},
            }
        },
        None,
    ),
    (
        "/sync/ods",
        "registry_sync_job",
        {"ops": {"ods_undertakings": {"config": {}}, "fgas_undertakings": {"config": {"sync": False}}}},
        None,
    ),
    (
        "/sync/licences?year=2024&page_size=100",
        "registry_licences_job",
        {"ops": {"ods_licences": {"config": {"year": 2024, "page_size": 100}}}},
        None,
    ),
    ("/sync/licences", "registry_licences_job", {}, None),
    ("/sync/bdr", "registry_old_companies_job", {}, None),
    ("/sync/collections_title", "registry_sync_job", {}, [{"path": ["bdr_collections"]}]),
    ("/match/run", "registry_match_job", {}, None),
    (
        "/match/flush",
        "registry_flush_job",
        {"ops": {"flush_links": {"config": {"user": "registry API"}}}},
        None,
    ),
    (
        "/match/flush?user=jane",
        "registry_flush_job",
        {"ops": {"flush_links": {"config": {"user": "jane"}}}},
        None,
    ),
]


def test_sync_and_match_start_the_jobs_with_their_run_config(
    serve_api: ServeApi, own_url: str, dagster: DagsterGraphQLStandIn
) -> None:
    base = serve_api(ApiSettings(database_url=own_url, api_token=TOKEN, dagster_url=dagster.url))
    for number, (path, job, _, _) in enumerate(LAUNCHES, start=1):
        answer = requests.get(f"{base}{path}", headers=AUTH, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"success": True, "message": f"{job} started: run run-{number}"}
    for params, (path, job, run_config, assets) in zip(dagster.launches, LAUNCHES, strict=True):
        assert params["selector"]["pipelineName"] == job, path
        assert params["selector"]["repositoryLocationName"] == DagsterGraphQLStandIn.LOCATION
        assert params["selector"]["assetSelection"] == assets, path
        assert params["runConfigData"] == run_config, path
        assert params["executionMetadata"] == {"tags": [{"key": "ecr/service", "value": "registry"}]}

    # What was submitted is what the real jobs accept.
    import dagster as dg

    from ecr_pipelines.definitions import build_definitions

    # Built now: the module-level `defs` holds the environment of whichever test imported it first,
    # and validation resolves its EnvVars against the environment of this one.
    defs = build_definitions()
    for params in dagster.launches:
        job_def = defs.resolve_job_def(params["selector"]["pipelineName"])
        if params["selector"]["assetSelection"]:
            keys = {dg.AssetKey(k["path"]) for k in params["selector"]["assetSelection"]}
            job_def = job_def.get_subset(asset_selection=keys)
        dg.validate_run_config(job_def, params["runConfigData"])


@pytest.mark.parametrize(
    "path",
    [
        "/sync/fgases?day=3",  # unknown
        "/sync/fgases?days=three",
        "/sync/ods?updated_since=2026-13-01",
        "/sync/ods?id=FG-7",
        "/sync/licences?year=last",
        "/sync/licences?domain=ODS",
        "/sync/bdr?force=1",
        "/match/run?domain=FGAS",
        "/match/flush?all=1",
    ],
)
def test_unknown_or_malformed_arguments_start_nothing(
    serve_api: ServeApi, own_url: str, dagster: DagsterGraphQLStandIn, path: str
) -> None:
    base = serve_api(ApiSettings(database_url=own_url, api_token=TOKEN, dagster_url=dagster.url))
    answer = requests.get(f"{base}{path}", headers=AUTH, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["success"] is False
    assert dagster.server.requests == []


def test_no_dagster_or_a_refused_launch_is_a_503(
    serve_api: ServeApi, own_url: str, dagster: DagsterGraphQLStandIn
) -> None:
    unset = serve_api(ApiSettings(database_url=own_url, api_token=TOKEN))
    answer = requests.get(f"{unset}/match/run", headers=AUTH, timeout=10)
    assert answer.status_code == 503
    assert answer.json() == {
        "success": False,
        "message": "DAGSTER_WEBSERVER_URL is not set: registry_match_job cannot be started.",
    }

    base = serve_api(ApiSettings(database_url=own_url, api_token=TOKEN, dagster_url=dagster.url))
    dagster.failure = {"__typename": "PythonError", "message": "the run queue is full"}
    answer = requests.get(f"{base}/match/run", headers=AUTH, timeout=60)
    assert answer.status_code == 503 and answer.json()["success"] is False
    assert "PythonError: the run queue is full" in answer.json()["message"]

    dagster.jobs = []  # a code location without the registry's jobs
    answer = requests.get(f"{base}/sync/bdr", headers=AUTH, timeout=60)
    assert answer.status_code == 503
    assert answer.json()["message"].startswith("registry_old_companies_job not started: JobNotFoundError")

    with StandInServer() as closed:
        gone = closed.url()
    down = serve_api(ApiSettings(database_url=own_url, api_token=TOKEN, dagster_url=gone))
    answer = requests.get(f"{down}/sync/ods", headers=AUTH, timeout=60)
    assert answer.status_code == 503
    assert answer.json()["message"].startswith("registry_sync_job not started: the GraphQL request failed")
    assert "Connection refused" in answer.json()["message"]


# -- auth ------------------------------------------------------------------------------------------

EVERY_ROUTE = [
    ("GET", "/candidate/FGAS/list"),
    ("GET", "/candidate/FGAS/list/verified"),
    ("POST", "/candidate/FGAS/verify/1/100"),
    ("POST", "/candidate/FGAS/verify-none/2"),
    ("POST", "/candidate/FGAS/unverify/1/"),
    ("POST", "/candidate/FGAS/manual/2/fgas1"),
    ("GET", "/candidate/verify-matching-ids/1/fgas30123"),
    ("GET", "/sync/fgases"),
    ("GET", "/sync/ods"),
    ("GET", "/sync/licences?year=2024"),
    ("GET", "/sync/bdr"),
    ("GET", "/sync/collections_title"),
    ("GET", "/match/run"),
    ("GET", "/match/flush"),
]


def test_every_route_needs_the_token(
    serve_api: ServeApi, own_url: str, registry: DatabaseResource, dagster: DagsterGraphQLStandIn
) -> None:
    seed(registry, fgas=[p.fgas(1, "Acme Cooling"), p.fgas(2, "Beta")], old_fgas=[old(100, "Acme Cooling")])
    match(registry)
    base = serve_api(ApiSettings(database_url=own_url, api_token=TOKEN, dagster_url=dagster.url))
    # An empty API_TOKEN refuses everything, even a request with an empty header (the legacy let it in).
    open_door = serve_api(ApiSettings(database_url=own_url, api_token="", dagster_url=dagster.url))
    for method, path in EVERY_ROUTE:
        for url, headers in (
            (base, {}),
            (base, {"Authorization": "wrong"}),
            (base, {"Authorization": f"Bearer {TOKEN}"}),
            (open_door, {}),
            (open_door, {"Authorization": ""}),
        ):
            answer = requests.request(method, f"{url}{path}", data={"user": "x"}, headers=headers, timeout=10)
            assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED), (method, path, headers)
    assert dagster.server.requests == []  # nothing was started
    assert log_rows(registry) == []  # nothing was verified
