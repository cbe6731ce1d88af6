"""The registry jobs end to end: real clients against stand-in upstreams, real Postgres."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from ecr_pipelines.registry import core_defs
from ecr_pipelines.registry.resources import RegistryResource
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource
from ecr_pipelines.standins import Fault, RecordedRequest, Reply, StandInServer
from ecr_pipelines_tests.registry import payloads as p

REPO = Path(__file__).resolve().parents[2]
FGAS_PATH = "/fgas/rest/api/latest/fgasundertakings/"
ODS_PATH = "/ods/rest/api/latest/odsundertakings/"
COLLECTION = "/bdr/ReportekEngine/update_company_collection"


def old(pk: int, name: str, country: str = "de", account: str = "") -> dict[str, Any]:
    return {
        "pk": pk, "name": name, "addr_street": "", "addr_postalcode": "", "addr_place1": "", "addr_place2": "",
        "eori": "", "vat_number": "", "active": True, "website": "", "country": {"code": country, "name": country},
        "date_registered": "2013/05/02 14:02:1367503320", "account": account or f"fgas{pk}",
    }  # fmt: skip


@pytest.fixture
def upstreams(standin: StandInServer) -> StandInServer:
    fgas = [p.fgas(1, "Polar Cooling GmbH"), p.fgas(2, "Frost AG"), p.fgas(3, "Broken", fooBar=1)]
    standin.route(FGAS_PATH, query={"pageNumber": "1"}, json=fgas[:2], headers={"numberOfPages": "2"})
    standin.route(FGAS_PATH, query={"pageNumber": "2"}, json=fgas[2:], headers={"numberOfPages": "2"})

    def ods_pages(request: RecordedRequest) -> Reply:
        offset = int(request.query.get("offset", 0))
        rows = [p.ods(10 + i, f"Halon {i} SRL") for i in range(3)]
        return Reply.json({"rows": rows[offset : offset + 2], "rowCount": 3})

    standin.route(ODS_PATH, handler=ods_pages)
    standin.route(
        "/bdr-registry/company/obligation/fgases/", json=[old(100, "POLAR COOLING GMBH", account="fgas30123")]
    )
    standin.route("/bdr-registry/company/obligation/ods/", json=[old(200, "Halon 0 S.R.L.", "ro", "ods1")])
    standin.route(COLLECTION, json={"status": "success"}, headers={"Content-Type": "application/json"})
    standin.route("/bdr/fgases/*", json={}, status=404)
    standin.route("/bdr/ods/*", json={}, status=404)
    standin.route("/bdr/api/collections_json", json=[{"company_id": "2", "title": "Frost Old Title"}])
    standin.route("/bdr/api/update_organisation_name", json={"updated": True})
    return standin


def resources(db: DatabaseResource, server: StandInServer, tmp_path: Path) -> dict[str, Any]:
    return {
        "db": db,
        "blobs": BlobStoreResource(url=str(tmp_path / "blobs")),
        "mail": MailResource(outbox_dir=str(tmp_path / "outbox")),
        "http": HttpResource(retries=1, backoff=0.01),
        "registry": RegistryResource(
            base_url_fgas=server.url("/fgas"),
            base_url_ods=server.url("/ods"),
            api_user="u",
            api_password="p",
            bdr_api_url=server.url("/bdr-registry"),
            bdr_api_key="k",
            bdr_endpoint_url=server.url("/bdr"),
            bdr_endpoint_user="b",
            bdr_endpoint_password="pw",
        ),
    }


RUN_CONFIG = {
    "ops": {
        "fgas_undertakings": {"config": {"page_size": 2}},
        "ods_undertakings": {"config": {"page_size": 2}},
    }
}


def run_job(
    name: str, db: DatabaseResource, server: StandInServer, tmp_path: Path, config: Any = None
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(db, server, tmp_path)))
    return defs.resolve_job_def(name).execute_in_process(run_config=config, raise_on_error=False)


def count(db: DatabaseResource, query: str) -> Any:
    with db.connect() as conn:
        return conn.execute(sa.text(query)).scalar()


def test_sync_job_fills_the_tables_and_calls_bdr(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    result = run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG)
    assert result.success
    materializations = [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events()
    ]
    meta = {m.asset_key.path[-1]: m.metadata for m in materializations}
    assert (
        meta["fgas_undertakings"]["inserted"].value == 2 and meta["fgas_undertakings"]["rejected"].value == 1
    )
    assert "fooBar" in meta["fgas_undertakings"]["rejected_records"].value
    assert meta["ods_undertakings"]["inserted"].value == 3
    assert count(registry_db, "SELECT count(*) FROM registry.undertaking") == 5
    assert count(registry_db, "SELECT count(*) FROM registry.organization_log") == 2
    # BDR: one create per company that passed the checks; one rename for the differing title.
    assert len(upstreams.requests_to(COLLECTION)) == 5
    assert meta["bdr_collections"]["renamed"].value == 1
    assert count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE bdr_due") == 0
    # Paging really happened.
    assert [r.query["pageNumber"] for r in upstreams.requests_to(FGAS_PATH)] == ["1", "2"]
    assert len(upstreams.requests_to(ODS_PATH)) == 2


def test_bdr_failures_are_kept_per_company_and_retried(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    upstreams.route(COLLECTION, json={"status": "fail", "message": "nope"}, status=404)
    result = run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG)
    assert result.success
    assert (
        count(
            registry_db, "SELECT count(*) FROM registry.undertaking WHERE bdr_error LIKE '%nope%' AND bdr_due"
        )
        == 5
    )
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["bdr_collections_without_errors"] is False

    upstreams.inject("/bdr/fgases/x", Fault(reset=True))  # BDR unreachable for the folder checks
    result = run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG)
    assert (
        result.success and count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE bdr_due") == 5
    )

    upstreams.clear_faults()
    upstreams.route(COLLECTION, json={"status": "success"}, headers={"Content-Type": "application/json"})
    assert run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG).success
    assert (
        count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE bdr_due OR bdr_error IS NOT NULL")
        == 0
    )


def test_unauthorized_registry_ends_the_run_with_a_clear_message(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    upstreams.inject(FGAS_PATH, Fault(status=401), query={"pageNumber": "1"})
    result = run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG)
    assert not result.success
    failure = result.get_step_failure_events()[0]
    assert "401 Unauthorized; check API_USER / API_PASSWORD" in failure.step_failure_data.error.to_string()


def test_domain_left_out_by_config(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    config = {
        "ops": {
            "fgas_undertakings": {"config": {"sync": False}},
            "ods_undertakings": {"config": {"page_size": 2}},
        }
    }
    assert run_job("registry_sync_job", registry_db, upstreams, tmp_path, config).success
    assert upstreams.requests_to(FGAS_PATH) == []
    assert count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE domain = 'ODS'") == 3


def test_match_job_after_sync_and_old_companies(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    assert run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG).success
    assert run_job("registry_old_companies_job", registry_db, upstreams, tmp_path).success
    result = run_job("registry_match_job", registry_db, upstreams, tmp_path)
    assert result.success
    (mat,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    assert mat.metadata["links_created"].value == 4  # Polar; the three similar "Halon n SRL" names
    assert "POLAR COOLING GMBH" in mat.metadata["review_queue"].value
    assert all(c.passed for c in result.get_asset_check_evaluations())
    assert run_job("registry_match_job", registry_db, upstreams, tmp_path).success
    assert count(registry_db, "SELECT count(*) FROM registry.old_company_link") == 4


def test_operator_jobs_from_the_cli_with_a_config_file(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path, dagster_cli_env: dict[str, str]
) -> None:
    assert run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG).success
    assert run_job("registry_old_companies_job", registry_db, upstreams, tmp_path).success
    assert run_job("registry_match_job", registry_db, upstreams, tmp_path).success
    with registry_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO registry.mail_address (mail) VALUES ('ops@example.test')"))
    config = tmp_path / "verify.yaml"
    config.write_text(
        yaml.safe_dump(
            {"ops": {"verify_link": {"config": {"undertaking": 1, "old_company": 100, "user": "jane"}}}}
        )
    )
    env = {**dagster_cli_env, "ECR_HOME": str(tmp_path), "BDR_ENDPOINT_URL": upstreams.url("/bdr")}
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [
            dagster,
            "job",
            "execute",
            "-m",
            "ecr_pipelines.definitions",
            "-j",
            "registry_verify_job",
            "-c",
            str(config),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        count(registry_db, "SELECT oldcompany_account FROM registry.undertaking WHERE external_id = 1")
        == "fgas30123"
    )
    assert count(registry_db, 'SELECT "user" FROM registry.matching_log') == "jane"
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"ops": {"unverify": {"config": {"undertaking": 999, "domain": "FGAS", "user": "jane"}}}}
        )
    )
    done = subprocess.run(
        [
            dagster,
            "job",
            "execute",
            "-m",
            "ecr_pipelines.definitions",
            "-j",
            "registry_unverify_job",
            "-c",
            str(bad),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0 and "no undertaking with external id 999" in done.stdout + done.stderr
