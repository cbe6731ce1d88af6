"""Stage runs as operators launch them (``dagster job execute``, a Postgres-backed instance):
two runs at once never process one document twice, and a run killed with SIGKILL mid-stage is
finished by the next run with nobody freeing slots or claims by hand."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from lxml import etree

from ecr_pipelines.dev.standins import Fault, StandInServer
from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.index import Document, Publisher, finish_snapshot
from ecr_pipelines.iati.stages.sync import sync_index
from ecr_pipelines.lib.database import engine_for
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines_tests.conftest import outside_pytest_tmp
from ecr_pipelines_tests.iati.iati_samples import activity_xml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = 24
STAGES_JOB = "iati_stages_job"
POOLS = ("iati_downloads", "iati_validation", "iati_clean", "iati_flatten", "iati_lake", "solr")
SMALL_BATCHES = {
    "ops": {
        "iati_source_files": {"config": {"batch_size": 3, "workers": 2}},
        "iati_validation_reports": {"config": {"batch_size": 3}},
        "iati_clean_files": {"config": {"batch_size": 3}},
        "iati_flattened_activities": {"config": {"batch_size": 3}},
        "iati_activity_lake": {"config": {"batch_size": 3, "workers": 2}},
        "iati_solr_index": {"config": {"batch_size": 3}},
    },
    "loggers": {"console": {"config": {"log_level": "INFO"}}},
}


def document_bytes(number: int) -> bytes:
    """A valid one-activity IATI file with its own identifier."""
    activity = etree.fromstring(activity_xml("real-world/3fi-activity.xml"))
    activity.find("iati-identifier").text = f"XM-TEST-{number:04d}"
    root = etree.Element("iati-activities", version="2.03")
    root.append(activity)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


class Deployment:
    """An application database, a Dagster instance, a blob folder, the stand-ins: one deployment."""

    def __init__(self, app_url: str, dagster_url: str, folder: Path, cache: StandInServer, solr: SolrStandIn):
        self.app_url = app_url
        self.engine = engine_for(app_url)
        self.home = folder / "dagster_home"
        self.home.mkdir()
        shutil.copyfile(REPO / "dagster.yaml", self.home / "dagster.yaml")
        self.blobs = folder / "blobs"
        self.ecr_home = folder / "ecr"
        self.cache = cache
        self.solr = solr
        self.config = folder / "run.yaml"
        self.config.write_text(yaml.safe_dump(SMALL_BATCHES))
        self.env = dict(os.environ)
        for name in ("SOLR_URL", "SMTP_URL", "IATI_DATASET_INDEX_URL", "IATI_REPORTING_ORG_INDEX_URL"):
            self.env.pop(name, None)
        self.env.update(
            DAGSTER_HOME=str(self.home),
            DAGSTER_PG_URL=dagster_url,
            DATABASE_URL=app_url,
            BLOB_STORE_URL=str(self.blobs),
            ECR_HOME=str(self.ecr_home),
            SOLR_URL=solr.url,
            PYTHONWARNINGS="ignore",
        )

    def instance(self) -> dg.DagsterInstance:
        # The dagster.yaml reads DAGSTER_PG_URL from this process's environment: the fixture sets it.
        return dg.DagsterInstance.from_config(str(self.home))

    def seed(self) -> dict[str, bytes]:
        contents = {f"doc-{n:03d}": document_bytes(n) for n in range(DOCUMENTS)}
        for doc_id, data in contents.items():
            self.cache.route(f"/cache/{doc_id}.xml", body=data, headers={"Content-Type": "application/xml"})
        documents = [
            Document(
                doc_id,
                doc_id,
                hashlib.sha1(data).hexdigest(),
                f"http://publisher.test/{doc_id}.xml",
                self.cache.url(f"/cache/{doc_id}.xml"),
                "org-1",
            )
            for doc_id, data in contents.items()
        ]
        snapshot = finish_snapshot("bds", [Publisher("org-1", "one", "One")], documents, [], None)
        with self.engine.begin() as conn:
            sync_index(Sql(conn), snapshot, ignore_safety_valve=True)
        return contents

    def slow(self, delay: float) -> None:
        for n in range(DOCUMENTS):
            self.cache.inject(f"/cache/doc-{n:03d}.xml", Fault(delay=delay))

    def launch(self) -> subprocess.Popen[bytes]:
        dagster = Path(sys.executable).with_name("dagster")
        command = [str(dagster), "job", "execute", "-m", "ecr_pipelines.definitions", "-j", STAGES_JOB]
        return subprocess.Popen(
            [*command, "-c", str(self.config)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches every child
        )

    def scalar(self, sql: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())

    def assert_every_document_done_once(self) -> None:
        assert self.scalar("SELECT count(*) FROM iati.document WHERE solrize_end IS NOT NULL") == DOCUMENTS
        # A validation report is appended per validation: two means the document was validated twice.
        assert self.scalar("SELECT count(*) FROM iati.validation") == DOCUMENTS
        assert self.scalar("SELECT count(DISTINCT document_id) FROM iati.validation") == DOCUMENTS
        assert self.scalar("SELECT count(*) FROM pipeline.stage_claim") == 0
        assert len(self.solr.documents("activity")) == DOCUMENTS
        leftovers = [p for p in self.blobs.rglob("*") if p.is_file() and p.suffix == ".part"]
        assert leftovers == []
        scratch = self.ecr_home / "scratch"
        assert not scratch.exists() or list(scratch.iterdir()) == []


@pytest.fixture
def deployment(
    pg_server_url: str, standin: StandInServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    from ecr_pipelines.lib.database import ensure_database

    suffix = os.urandom(4).hex()
    app_url = ensure_database(pg_server_url, f"runs_app_{suffix}")
    dagster_url = ensure_database(pg_server_url, f"runs_dagster_{suffix}")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_url)  # for Deployment.instance(), in this test only
    upgrade(engine_for(app_url))
    folder = outside_pytest_tmp("ecr-runs-")
    with SolrStandIn() as solr:
        yield Deployment(app_url, dagster_url, folder, standin, solr)
    shutil.rmtree(folder, ignore_errors=True)


def output(process: subprocess.Popen[bytes]) -> str:
    return (process.stdout.read() if process.stdout else b"").decode(errors="replace")[-4000:]


@pytest.mark.parametrize("slots", [1, 2])
def test_two_runs_at_once_process_every_document_exactly_once(deployment: Deployment, slots: int) -> None:
    deployment.seed()
    deployment.slow(0.2)  # long enough for the runs to overlap
    with deployment.instance() as instance:
        for pool in POOLS:  # as `python -m ecr_pipelines instance setup` does on a fresh instance
            instance.event_log_storage.set_concurrency_slots(pool, slots)
    first, second = deployment.launch(), deployment.launch()
    for process in (first, second):
        assert process.wait(timeout=240) == 0, output(process)
    deployment.assert_every_document_done_once()
    for doc in range(DOCUMENTS):
        assert len(deployment.cache.requests_to(f"/cache/doc-{doc:03d}.xml", "GET")) == 1
    with deployment.instance() as instance:
        for asset in ("iati_source_files", "iati_validation_reports", "iati_solr_index"):
            events = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
            assert len(events) == 2  # both runs materialized the stage...
            processed = [event.asset_materialization.metadata["processed"].value for event in events]
            assert sum(processed) == DOCUMENTS  # ...and between them did each document once


def test_a_run_killed_mid_stage_is_finished_by_the_next_run(deployment: Deployment) -> None:
    deployment.seed()
    deployment.slow(0.4)
    with deployment.instance() as instance:
        for pool in POOLS:
            instance.event_log_storage.set_concurrency_slots(pool, 1)
    victim = deployment.launch()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        downloaded = deployment.scalar("SELECT count(*) FROM iati.document WHERE downloaded IS NOT NULL")
        claimed = deployment.scalar("SELECT count(*) FROM pipeline.stage_claim WHERE stage = 'iati.download'")
        if downloaded >= 3 and claimed:
            break
        assert victim.poll() is None, output(victim)
        time.sleep(0.1)
    else:
        pytest.fail("the run never got into the download stage")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    with deployment.instance() as instance:
        killed = instance.get_runs(filters=dg.RunsFilter(job_name=STAGES_JOB))
        assert [run.status for run in killed] == [dg.DagsterRunStatus.STARTED]  # nobody told Dagster
        assert instance.event_log_storage.get_concurrency_info("iati_downloads").claimed_slots
    assert deployment.scalar("SELECT count(*) FROM iati.document WHERE downloaded IS NULL") > 0

    deployment.cache.clear_faults()
    rerun = deployment.launch()  # the same command again: no slot freed, no claim reset by hand
    assert rerun.wait(timeout=240) == 0, output(rerun)

    deployment.assert_every_document_done_once()
    with deployment.instance() as instance:
        statuses = {
            run.run_id: run.status for run in instance.get_runs(filters=dg.RunsFilter(job_name=STAGES_JOB))
        }
        assert statuses[killed[0].run_id] == dg.DagsterRunStatus.FAILURE
        assert sorted(statuses.values(), key=str) == sorted(
            [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS], key=str
        )
        assert not instance.event_log_storage.get_concurrency_info("iati_downloads").claimed_slots
