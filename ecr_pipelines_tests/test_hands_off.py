"""A deployment runs by itself: a real ``dagster-daemon`` on a fresh instance, nothing launched
by hand. The fresh deployment fills itself (the energy hub's customer, carried over from the
legacy, gets its points, hours and GGOs, and its subscriber its webhooks, one retried); then a dataset added to the Bulk Data Service index
reaches Solr, an undertaking added to the F-gas registry is synced and linked to its old
company, and two CKAN download requests a portal queues (a small one and a whole table) are
packaged on their two queues and mailed, and a file an operator puts under a data-store source
and a CSV upload are loaded, and a new disclosure is compiled, each within five minutes of the
addition."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.dev.ckan_demo import ROWS_RESOURCE
from ecr_pipelines.dev.datastore_demo import FILES as DATASTORE_FILES
from ecr_pipelines.dev.datastore_demo import PLACED, UPLOAD_KEY
from ecr_pipelines.dev.demo import standins
from ecr_pipelines.dev.energy_demo import CUSTOMER as ENERGY_CUSTOMER
from ecr_pipelines.dev.energy_demo import HOOK, HOOK_SECRET, demo_standins
from ecr_pipelines.dev.iati_demo import RECORDINGS as IATI_RECORDINGS
from ecr_pipelines.dev.registry_demo import RECORDINGS as REGISTRY_RECORDINGS
from ecr_pipelines.dev.standins import RecordedRequest, Reply, StandInServer
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.database import engine_for, ensure_database
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines_tests.conftest import outside_pytest_tmp
from ecr_pipelines_tests.test_stage_runs import document_bytes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WITHIN = 300  # seconds from an addition to its outcome (the bound)
FILL_WITHIN = 600  # the first fill has no bound of its own; on a busy machine it takes longer
NEW_DOCUMENT_IDENTIFIER = "XM-TEST-0777"
NEW_UNDERTAKING = 10777
NEW_OLD_COMPANY = 4777
CKAN_RESOURCE = ROWS_RESOURCE


class Upstreams:
    """Route handlers over mutable lists, so the test can add a dataset and an undertaking."""

    def __init__(self, server: StandInServer) -> None:
        self.server = server
        base = server.url()
        datasets = (IATI_RECORDINGS / "datasets-minimal.json").read_text().replace("{{base_url}}", base)
        self.datasets = json.loads(datasets)
        self.undertakings: list[dict[str, Any]] = json.loads(
            (REGISTRY_RECORDINGS / "fgas_undertakings_all.json").read_text()
        )
        self.old_companies: list[dict[str, Any]] = json.loads(
            (REGISTRY_RECORDINGS / "bdr_registry_fgases.json").read_text()
        )
        self.old_companies.append(
            {
                **self.old_companies[0],
                "pk": NEW_OLD_COMPANY,
                "name": "POLARSTERN KUEHLSYSTEME GMBH",
                "vat_number": "DE777000777",
                "eori": "",
                "account": "fgas30777",
            }
        )
        fgas = "/registry/fgas/rest/api/latest/fgasundertakings/"
        # Same query keys as the recorded page routes, added later: these win.
        for query in ({}, {"pageNumber": "1"}):
            server.route(fgas, query=query, handler=self._undertakings)
        server.route("/registry/bdr-registry/company/obligation/fgases/", handler=self._old_companies)
        server.route("/iati/datasets-minimal", handler=self._datasets)

    def _undertakings(self, request: RecordedRequest) -> Reply:
        return Reply.json(self.undertakings, headers={"numberOfPages": "1"})

    def _old_companies(self, request: RecordedRequest) -> Reply:
        return Reply.json(self.old_companies)

    def _datasets(self, request: RecordedRequest) -> Reply:
        return Reply.json(self.datasets)

    def add_dataset(self) -> None:
        data = document_bytes(777)
        self.server.route("/iati/cache/hands-off.xml", body=data, headers={"Content-Type": "application/xml"})
        template = self.datasets["datasets"][0]
        dataset = json.loads(json.dumps(template))
        dataset.update(id="a3f00777-5b1e-4c39-8d1e-000000000777", short_name="3f-hands-off")
        dataset["last_known_good_dataset"].update(
            cached_dataset_url_xml=self.server.url("/iati/cache/hands-off.xml"),
            hash=hashlib.sha1(data).hexdigest(),
        )
        self.datasets = {**self.datasets, "datasets": [*self.datasets["datasets"], dataset]}

    def add_undertaking(self) -> None:
        template = json.loads(json.dumps(self.undertakings[0]))
        template.update(
            id=NEW_UNDERTAKING,
            registrationNumId="FG-HANDS",
            name="Polarstern Kuehlsysteme GmbH",
            vat="DE777000777",
            eori="DE777000777",
            dateUpdated=datetime.now(UTC).strftime("%d/%m/%Y"),
        )
        for person in template.get("contactPersons") or []:
            person["userName"] = "hands0ff"
            person["emailAddress"] = "hands.off@polarstern.example.test"
        self.undertakings = [*self.undertakings, template]


def queue_ckan_requests(engine: sa.Engine, api_url: str) -> None:
    """What a portal does: two rows in the queue, a 10-row download and a whole table (slow)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO ckan.package_request (kind, resource_id, email, params) VALUES "
                "('datastore', :resource, :email, CAST(:small AS jsonb)), "
                "('datastore', :resource, :email, CAST(:whole AS jsonb))"
            ),
            {
                "resource": CKAN_RESOURCE,
                "email": "hands.off@example.org",
                "small": json.dumps({"api_url": api_url, "limit": 10}),
                "whole": json.dumps({"api_url": api_url}),
            },
        )


# The two data-store outcomes: the file an operator put is processed, the upload is completed.
DATASTORE_PROGRESS = (
    "SELECT (SELECT count(*) FROM operations.datafile_registry WHERE source = 'dit.baci' "
    "AND state::text = 'processed') + (SELECT count(*) FROM datastore.pipeline_data_file WHERE state = 'completed')"
)


def put_datastore_files(blobs: Path) -> None:
    """What an operator and a person uploading do: a BACI file under its prefix, a CSV upload."""
    store = LocalBlobStore(blobs)
    store.put_file(
        SOURCES["dit.baci"].blob_prefix + "baci.csv", DATASTORE_FILES / "placed" / PLACED["dit.baci"]
    )
    store.put_file(UPLOAD_KEY, DATASTORE_FILES / "upload" / "ons_postcodes.csv")


def carry_over_energy_customer(engine: sa.Engine) -> None:
    """A legacy deployment's customer and webhook subscription, as its rows were imported."""
    from ecr_pipelines.energy import webhooks

    receiver = demo_standins()[3]
    receiver.fail(HOOK, 500, times=1)  # the subscriber's first answer is an error: retried in 60 s
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO energy.customer (sub) VALUES (:s)"), {"s": ENERGY_CUSTOMER})
        webhooks.subscribe(
            conn, "ON_METERINGPOINT_AVAILABLE", ENERGY_CUSTOMER, receiver.url(HOOK), HOOK_SECRET
        )
        webhooks.subscribe(conn, "ON_GGOS_ISSUED", ENERGY_CUSTOMER, receiver.url(HOOK), HOOK_SECRET)


def create_energy_disclosure(engine: sa.Engine) -> str:
    """What a customer does: a disclosure of its consumption point's first day."""
    from ecr_pipelines.energy.stages.disclosures import create_disclosure

    with engine.begin() as conn:
        gsrn, first = conn.execute(
            sa.text(
                "SELECT p.gsrn, min(m.begin)::date FROM energy.meteringpoint p JOIN energy.measurement m "
                "ON m.gsrn = p.gsrn WHERE p.type = 'CONSUMPTION' GROUP BY p.gsrn"
            )
        ).one()
        return create_disclosure(
            conn,
            ENERGY_CUSTOMER,
            {
                "name": "first day",
                "begin": str(first),
                "end": str(first),
                "maxResolution": "hour",
                "publicizeMeteringpoints": False,
                "publicizeGsrn": False,
                "publicizePhysicalAddress": False,
                "gsrn": [gsrn],
            },
        )


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float, daemon: subprocess.Popen[bytes], log: Path
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        assert daemon.poll() is None, "dagster-daemon died"
        # Often enough to see an outcome within a second; not more, as each look at the Dagster
        # instance opens Postgres connections (NullPool) that the daemon's runs compete with.
        time.sleep(1)
    lines = log.read_text(errors="replace").splitlines()
    telling = [
        line for line in lines if "Launching run" in line or "RUN_FAILURE" in line or "skipped" in line
    ]
    pytest.fail(f"{what}: not within {timeout:.0f} s; the daemon's last words:\n" + "\n".join(telling[-40:]))


@pytest.fixture
def deployment(pg_server_url: str) -> Iterator[tuple[dict[str, str], Path]]:
    suffix = os.urandom(4).hex()
    app_url = ensure_database(pg_server_url, f"handsoff_app_{suffix}")
    upgrade(engine_for(app_url))
    folder = outside_pytest_tmp("ecr-hands-off-")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_URL=ensure_database(pg_server_url, f"handsoff_dagster_{suffix}"),
        DATABASE_URL=app_url,
        BLOB_STORE_URL=str(folder / "blobs"),
        ECR_HOME=str(folder / "ecr"),
        PYTHONWARNINGS="ignore",
        # Faster polling than production's minute or two, so the suite stays short. The registry's
        # matching waits while a sync is in flight (eager automation, ticking every 30 s): polls
        # closer together than that tick plus a sync run (~15 s) can keep a sync in flight at tick
        # after tick, and the link then comes minutes late; 45 s leaves a tick free after each sync.
        IATI_POLL_SECONDS="5",
        REGISTRY_POLL_SECONDS="45",
        CKAN_POLL_SECONDS="5",
        DATASTORE_POLL_SECONDS="5",
        ENERGY_POLL_SECONDS="5",
    )
    yield env, folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_fresh_deployment_fills_itself_and_follows_its_upstreams(
    deployment: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, folder = deployment
    engine = engine_for(env["DATABASE_URL"])

    def scalar(sql: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())

    with standins() as (server, standin_env):
        upstreams = Upstreams(server)
        env.update(standin_env)
        carry_over_energy_customer(engine)
        log = (folder / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster-daemon")),
                "run",
                "-w",
                str(REPO / "workspace.yaml"),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])  # the dagster.yaml reads it
            with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:

                def filled() -> bool:
                    records = instance.get_asset_records()
                    materialized = {
                        r.asset_entry.asset_key.to_user_string()
                        for r in records
                        if r.asset_entry.last_materialization_record is not None
                    }
                    wanted = {
                        "bdr_old_companies",
                        "undertaking_company_links",
                        "iati_solr_index",
                        "ckan_statistics",
                        "datastore/hmrc/exporters",
                        "datastore/upload_tables",
                        "energy/ggos",
                        "energy/disclosures",
                    }
                    return wanted <= materialized

                wait_for(
                    "the fresh deployment filled itself", filled, FILL_WITHIN, daemon, folder / "daemon.log"
                )
                assert scalar("SELECT count(*) FROM registry.old_company") > 0
                assert scalar("SELECT count(*) FROM iati.document WHERE solrize_end IS NOT NULL") > 0
                # The carried-over customer's two points, their hours and the turbine's GGOs.
                assert scalar("SELECT count(*) FROM energy.meteringpoint") == 2
                assert scalar("SELECT count(*) FROM energy.ggo") > 0
                assert scalar("SELECT count(*) FROM energy.measurement WHERE NOT published") == 0

                upstreams.add_dataset()
                upstreams.add_undertaking()
                queue_ckan_requests(engine, standin_env["DEMO_CKAN_API_URL"])
                put_datastore_files(folder / "blobs")
                solr_url = standin_env["SOLR_URL"]

                def in_solr() -> bool:
                    import requests

                    answer = requests.get(
                        f"{solr_url}/activity/select",
                        params={"q": f'iati_identifier:"{NEW_DOCUMENT_IDENTIFIER}"', "wt": "json"},
                        timeout=5,
                    ).json()
                    return answer["response"]["numFound"] == 1

                def linked() -> bool:
                    return bool(
                        scalar(
                            "SELECT count(*) FROM registry.old_company_link l "
                            "JOIN registry.undertaking u ON u.id = l.undertaking_id "
                            "JOIN registry.old_company o ON o.id = l.oldcompany_id "
                            f"WHERE u.external_id = {NEW_UNDERTAKING} AND o.external_id = {NEW_OLD_COMPANY}"
                        )
                    )

                wait_for("the new dataset's activity in Solr", in_solr, WITHIN, daemon, folder / "daemon.log")
                wait_for(
                    "the new undertaking synced and linked", linked, WITHIN, daemon, folder / "daemon.log"
                )

                def packaged() -> bool:
                    return scalar("SELECT count(*) FROM ckan.package_request WHERE status = 'done'") == 2

                wait_for("the two CKAN requests packaged", packaged, WITHIN, daemon, folder / "daemon.log")

                def mails() -> list[Path]:
                    return list((folder / "ecr" / "outbox").glob("*.eml"))

                # Mailed after the commit that marks a request done: the last one a moment later.
                wait_for(
                    "the two links mailed", lambda: len(mails()) >= 2, WITHIN, daemon, folder / "daemon.log"
                )
                assert len(mails()) == 2  # once each
                assert scalar("SELECT requests FROM ckan.totals WHERE resource_id = '*'") == 2
                queues = {
                    run.tags.get("ckan/queue")
                    for run in instance.get_runs(dg.RunsFilter(job_name="ckan_packages_job"))
                }
                assert {"fast", "slow"} <= queues  # the small request never waited for the big one's queue

                def datastore_loaded() -> bool:
                    return scalar(DATASTORE_PROGRESS) == 2

                wait_for(
                    "the placed BACI file and the upload loaded",
                    datastore_loaded,
                    WITHIN,
                    daemon,
                    folder / "daemon.log",
                )
                assert scalar('SELECT count(*) FROM "dit.baci"."L0"') == 2
                assert scalar('SELECT count(*) FROM "demo.ons_postcodes"."L0"') > 0

                def webhooks_delivered() -> bool:
                    return (
                        scalar(
                            "SELECT count(*) FILTER (WHERE status = 'sent') - count(*) FROM energy.webhook_delivery"
                        )
                        == 0
                        and scalar("SELECT count(*) FROM energy.webhook_delivery") > 0
                    )

                wait_for(
                    "every webhook delivered, the refused one retried",
                    webhooks_delivered,
                    WITHIN,
                    daemon,
                    folder / "daemon.log",
                )
                receiver = demo_standins()[3]
                assert receiver.all_signed()
                assert [r.status for r in receiver.received(HOOK)].count(500) == 1
                assert len([r for r in receiver.received(HOOK) if r.status == 200]) == scalar(
                    "SELECT count(*) FROM energy.webhook_delivery"
                )
                public_id = create_energy_disclosure(engine)

                def disclosed() -> bool:
                    return bool(
                        scalar(
                            "SELECT count(*) FROM energy.disclosure WHERE state = 'AVAILABLE' "
                            f"AND public_id = '{public_id}' AND blob_key IS NOT NULL"
                        )
                    )

                wait_for("the new disclosure compiled", disclosed, WITHIN, daemon, folder / "daemon.log")
                runs = instance.get_runs()
                assert runs, "the daemon launched runs"
                # Every run the daemon launched carries its service's tag (the concurrency limits key on it).
                assert all(run.tags.get("ecr/service") for run in runs), [
                    (run.job_name, run.tags) for run in runs if not run.tags.get("ecr/service")
                ]
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(timeout=30)
            # Whatever is left of its process group goes too: the daemon's code server can outlive
            # it, and would hold its memory and database connections for the rest of the suite.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
            log.close()
