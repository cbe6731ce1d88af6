"""IATI sync/download fixtures: the iati tables emptied, and the recorded upstreams served."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ecr_pipelines.iati.demo import RECORDINGS
from ecr_pipelines.iati.resources import IatiResource
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines.standins import StandInServer

MOUNT = "/iati"


@pytest.fixture
def iati_db(db: DatabaseResource) -> Iterator[DatabaseResource]:
    with db.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE iati.document, iati.publisher, iati.validation, iati.refresh_log RESTART IDENTITY CASCADE"
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
