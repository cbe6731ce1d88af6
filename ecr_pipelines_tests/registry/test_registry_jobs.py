"""The registry jobs end to end: real clients against stand-in upstreams, real Postgres."""

import socket
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from ecr_pipelines.dev.standins import Fault, RecordedRequest, Reply, StandInServer
from ecr_pipelines.registry.defs import core_defs
from ecr_pipelines.registry.defs.resources import RegistryResource
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource
from ecr_pipelines_tests.registry import payloads as p

REPO = Path(__file__).resolve().parents[2]
FGAS_PATH = "/fgas/rest/api/latest/fgasundertakings/"
ODS_PATH = "/ods/rest/api/latest/odsundertakings/"
LICENCES_PATH = "/ods/rest/api/latest/licences/"
COLLECTION = "/bdr/ReportekEngine/update_company_collection"
COLLECTIONS_STEP = "bdr_collections.create_bind_and_rename_collections"


def old(pk: int, name: str, country: str = "de", account: str = "") -> dict[str, Any]:
    return {
        "pk": pk, "name": name, "addr_street": "", "addr_postalcode": "", "addr_place1": "", "addr_place2": "",
        "eori": "", "vat_number": "", "active": True, "website": "", "country": {"code": country, "name": country},
        "date_registered": "2013/05/02 14:02:1367503320", "account": account or f"fgas{pk}",
    }  # fmt: skip


@pytest.fixture
def upstreams(standin: StandInServer) -> StandInServer:
    # 2 carries a field nobody reads (ignored, reported); 3 is malformed (rejected alone).
    fgas = [
        p.fgas(1, "Polar Cooling GmbH"),
        p.fgas(2, "Frost AG", fooBar=1),
        p.fgas(3, "Broken", dateUpdated="31/02/2024"),
    ]
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


def resources(
    db: DatabaseResource, server: StandInServer, tmp_path: Path, smtp_url: str | None = None, **registry: Any
) -> dict[str, Any]:
    """Resources on the stand-ins; ``registry`` overrides fields of the registry resource."""
    settings: dict[str, Any] = {
        "base_url_fgas": server.url("/fgas"),
        "base_url_ods": server.url("/ods"),
        "api_user": "u",
        "api_password": "p",
        "bdr_api_url": server.url("/bdr-registry"),
        "bdr_api_key": "k",
        "bdr_endpoint_url": server.url("/bdr"),
        "bdr_endpoint_user": "b",
        "bdr_endpoint_password": "pw",
    }
    return {
        "db": db,
        "blobs": BlobStoreResource(url=str(tmp_path / "blobs")),
        "mail": MailResource(smtp_url=smtp_url, outbox_dir=str(tmp_path / "outbox")),
        "http": HttpResource(retries=1, backoff=0.01),
        "registry": RegistryResource(**{**settings, **registry}),
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
    return run_with(resources(db, server, tmp_path), name, config)


def run_with(bound: dict[str, Any], name: str, config: Any = None) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=bound))
    return defs.resolve_job_def(name).execute_in_process(run_config=config, raise_on_error=False)


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def steps(result: dg.ExecuteInProcessResult, event_type: str) -> set[str]:
    """Step keys with an event of this type (STEP_SUCCESS, STEP_SKIPPED, ...)."""
    return {e.step_key for e in result.all_events if e.event_type_value == event_type and e.step_key}


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
    assert "dateUpdated" in meta["fgas_undertakings"]["rejected_records"].value
    assert meta["fgas_undertakings"]["unknown_fields"].value == 1
    assert "fooBar" in meta["fgas_undertakings"]["unknown_field_records"].value
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


def test_domain_left_out_by_config_still_runs_bdr_collections(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    config = {
        "ops": {
            "fgas_undertakings": {"config": {"sync": False}},
            "ods_undertakings": {"config": {"page_size": 2}},
        }
    }
    result = run_job("registry_sync_job", registry_db, upstreams, tmp_path, config)
    assert result.success
    assert upstreams.requests_to(FGAS_PATH) == []
    assert count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE domain = 'ODS'") == 3
    # What really ran: F-gas is not materialized (no fake materialization), the BDR step is.
    assert materialized(result) == {"registry_reference_tables", "ods_undertakings", "bdr_collections"}
    assert steps(result, "STEP_SUCCESS") >= {"fgas_undertakings", "ods_undertakings", COLLECTIONS_STEP}
    assert steps(result, "STEP_SKIPPED") == {"fgas_undertakings_fgas_passed_companies_have_a_country"}
    assert len(upstreams.requests_to(COLLECTION)) == 3  # the three ODS companies got their collection
    assert count(registry_db, "SELECT count(*) FROM registry.undertaking WHERE bdr_due") == 0


def test_both_domains_left_out_leave_nothing_for_bdr(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    off = {"config": {"sync": False}}
    config = {"ops": {"fgas_undertakings": off, "ods_undertakings": off}}
    result = run_job("registry_sync_job", registry_db, upstreams, tmp_path, config)
    assert result.success and materialized(result) == {"registry_reference_tables"}
    assert COLLECTIONS_STEP in steps(result, "STEP_SKIPPED")


def test_every_registry_asset_materializes_with_its_default_config(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    upstreams.route(LICENCES_PATH, json=[])
    everything = dg.define_asset_job("everything", selection=dg.AssetSelection.groups("registry"))
    defs = dg.Definitions.merge(
        core_defs, dg.Definitions(jobs=[everything], resources=resources(registry_db, upstreams, tmp_path))
    )
    result = defs.resolve_job_def("everything").execute_in_process(raise_on_error=False)
    assert result.success
    assert materialized(result) == {
        "registry_reference_tables", "fgas_undertakings", "ods_undertakings", "bdr_old_companies",
        "bdr_collections", "ods_licences", "undertaking_company_links",
    }  # fmt: skip
    assert upstreams.requests_to(LICENCES_PATH)[0].query["year"] == str(date.today().year)


def test_unconfigured_registry_fails_at_once_without_retries(
    registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    result = run_with(
        resources(registry_db, upstreams, tmp_path, base_url_fgas=""), "registry_sync_job", RUN_CONFIG
    )
    assert not result.success
    failure = result.get_step_failure_events()[0]
    assert failure.step_key == "fgas_undertakings"
    assert "BASE_URL_FGAS is not set" in failure.step_failure_data.error.to_string()
    assert steps(result, "STEP_UP_FOR_RETRY") == set()  # a missing setting is not worth a retry


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


@pytest.mark.slow
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
    env = {
        **dagster_cli_env,
        "ECR_HOME": str(tmp_path),
        "BDR_ENDPOINT_URL": upstreams.url("/bdr"),
        "SEND_MATCHING_MAILS": "true",  # the legacy default is off
    }
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


# -- verification mails: queued in the transaction, sent after the commit ---------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def outbox_rows(db: DatabaseResource) -> list[sa.Row]:
    with db.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT recipients, subject, attempts, sent_at, error FROM pipeline.mail_outbox ORDER BY id"
                )
            )
        )


VERIFY = {"ops": {"verify_link": {"config": {"undertaking": 1, "old_company": 100, "user": "jane"}}}}


@pytest.fixture
def matched(registry_db: DatabaseResource, upstreams: StandInServer, tmp_path: Path) -> DatabaseResource:
    """Synced, old companies loaded, matched; two notification addresses; undertaking 1 failed the
    checks, so verifying it calls BDR."""
    assert run_job("registry_sync_job", registry_db, upstreams, tmp_path, RUN_CONFIG).success
    assert run_job("registry_old_companies_job", registry_db, upstreams, tmp_path).success
    assert run_job("registry_match_job", registry_db, upstreams, tmp_path).success
    with registry_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO registry.mail_address (mail) VALUES ('ops@example.test'), ('lead@example.test')"
            )
        )
        conn.execute(sa.text("UPDATE registry.undertaking SET check_passed = false WHERE external_id = 1"))
    return registry_db


def test_a_mail_server_failure_keeps_the_verification_and_mails_once_later(
    matched: DatabaseResource, upstreams: StandInServer, tmp_path: Path, smtp_server: tuple[str, Any]
) -> None:
    calls = len(upstreams.requests_to(COLLECTION))
    down = resources(
        matched, upstreams, tmp_path, smtp_url=f"smtp://127.0.0.1:{closed_port()}", send_matching_mails=True
    )
    assert run_with(down, "registry_verify_job", VERIFY).success
    # BDR saw the verification and it is committed; the mails wait in the outbox with the error.
    assert len(upstreams.requests_to(COLLECTION)) == calls + 1
    assert (
        count(matched, "SELECT oldcompany_verified FROM registry.undertaking WHERE external_id = 1") is True
    )
    rows = outbox_rows(matched)
    assert sorted(r.recipients[0] for r in rows) == ["lead@example.test", "ops@example.test"]
    assert all(r.sent_at is None and r.attempts == 1 and "ConnectionRefused" in r.error for r in rows)
    checks = {
        c.check_name: c.passed for c in run_with(down, "registry_match_job").get_asset_check_evaluations()
    }
    assert checks["verification_mails_sent"] is False

    # The operator re-runs the job once the mail server is back and the retry is due.
    with matched.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.mail_outbox SET next_attempt = now()"))
    url, sink = smtp_server
    up = resources(matched, upstreams, tmp_path, smtp_url=url, send_matching_mails=True)
    assert run_with(up, "registry_verify_job", VERIFY).success
    assert len(upstreams.requests_to(COLLECTION)) == calls + 1  # not verified (nor called) twice
    assert count(matched, "SELECT count(*) FROM registry.matching_log WHERE company_id = 1") == 1
    assert sorted(rcpt for _, rcpts, _ in sink.messages for rcpt in rcpts) == [
        "lead@example.test",
        "ops@example.test",
    ]
    assert run_with(up, "registry_verify_job", VERIFY).success
    assert len(sink.messages) == 2  # one mail per address, never a second time
    assert all(r.sent_at is not None and r.error is None for r in outbox_rows(matched))


def test_bdr_refusal_fails_the_verify_job_and_changes_nothing(
    matched: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    upstreams.route(COLLECTION, json={"status": "fail", "message": "collection locked"}, status=404)
    result = run_job("registry_verify_job", matched, upstreams, tmp_path, VERIFY)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert failure.user_failure_data is not None  # a deliberate dg.Failure, not a crash
    assert "collection locked" in failure.error.to_string()
    assert (
        count(matched, "SELECT oldcompany_verified FROM registry.undertaking WHERE external_id = 1") is False
    )
    assert count(matched, "SELECT count(*) FROM registry.matching_log") == 0
    assert outbox_rows(matched) == []
    assert not (tmp_path / "outbox").exists()


# -- issue 11: verification mails only when asked for, and only with a BDR endpoint (legacy) --------


def test_verification_mails_are_off_unless_asked_for(
    matched: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    # Legacy default: SEND_MATCHING_MAILS unset means no mail, the verification itself happens.
    assert RegistryResource().send_matching_mails is False
    assert run_job("registry_verify_job", matched, upstreams, tmp_path, VERIFY).success
    assert (
        count(matched, "SELECT oldcompany_verified FROM registry.undertaking WHERE external_id = 1") is True
    )
    assert outbox_rows(matched) == []


def test_verification_mails_need_the_bdr_endpoint(
    matched: DatabaseResource, upstreams: StandInServer, tmp_path: Path
) -> None:
    # Asked for, but no BDR_ENDPOINT_URL: the legacy warned and sent nothing (the link needs it).
    bound = resources(matched, upstreams, tmp_path, send_matching_mails=True, bdr_endpoint_url="")
    assert bound["registry"].matching_mails_blocked().startswith("No BDR_ENDPOINT_URL was set")
    assert run_with(bound, "registry_verify_job", VERIFY).success
    assert (
        count(matched, "SELECT oldcompany_verified FROM registry.undertaking WHERE external_id = 1") is True
    )
    assert outbox_rows(matched) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("true", True),
        ("True", True),
        ("1", False),
        ("yes", False),
        ("TRUE", False),
    ],
)
def test_send_matching_mails_reads_the_environment_as_the_legacy(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    from ecr_pipelines.registry.defs.resources import build_registry_resource

    if value is None:
        monkeypatch.delenv("SEND_MATCHING_MAILS", raising=False)
    else:
        monkeypatch.setenv("SEND_MATCHING_MAILS", value)
    assert build_registry_resource().send_matching_mails is expected
