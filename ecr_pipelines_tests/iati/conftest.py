"""IATI fixtures: the iati tables (and the stage claims and mail outbox) emptied, and the recorded
upstreams served."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ecr_pipelines.dev.iati_demo import RECORDINGS
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.iati.defs.resources import IatiResource
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
