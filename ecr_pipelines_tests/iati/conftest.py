"""IATI fixtures: the iati tables (and the stage claims and mail outbox) emptied, and the recorded
upstreams served."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ecr_pipelines.dev.iati_demo import RECORDINGS
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.defs.resources import IatiResource
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines_tests.metadata import materialization_metadata

MOUNT = "/iati"


@pytest.fixture
def iati_db(db: DatabaseResource) -> Iterator[DatabaseResource]:
    with db.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE iati.document, iati.publisher, iati.validation, iati.refresh_log, pipeline.stage_claim, "
            "pipeline.run_owner, pipeline.mail_outbox RESTART IDENTITY CASCADE"
        )
    yield db


@pytest.fixture
def iati_standin(standin: StandInServer) -> StandInServer:
    """The demo's recordings (BDS indices, cached files, CKAN registry) mounted at ``/iati``."""
    standin.load_routes(RECORDINGS, mount=MOUNT)
    return standin


def iati_resource(server: StandInServer, **overrides: object) -> IatiResource:
    values: dict[str, object] = {
        "dataset_index_url": server.url(f"{MOUNT}/datasets-minimal"),
        "reporting_org_index_url": server.url(f"{MOUNT}/reporting-orgs"),
        "registry_url": server.url(f"{MOUNT}/registry"),
        "registry_request_delay": 0.0,
        "download_workers": 4,
    }
    values.update(overrides)
    return IatiResource(**values)  # type: ignore[arg-type]


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStoreResource:
    return BlobStoreResource(url=str(tmp_path / "blobs"))


def asset_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Each asset the run materialized → its metadata as plain values."""
    keys = dict.fromkeys(
        event.asset_key.to_user_string() for event in result.get_asset_materialization_events()
    )
    return {key: materialization_metadata(result, key) for key in keys}


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStoreResource(url=str(tmp_path / "blobs")).store


@pytest.fixture
def solr() -> Iterator[SolrStandIn]:
    with SolrStandIn() as server:
        yield server


@pytest.fixture
def one_document_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that inject Solr faults by request number: one document in flight keeps that
    order (``test_documents_at_once_index_the_same`` covers several)."""
    from ecr_pipelines.iati.stages import solr as solr_stage

    monkeypatch.setattr(solr_stage, "DOCUMENTS_AT_ONCE", 1)
