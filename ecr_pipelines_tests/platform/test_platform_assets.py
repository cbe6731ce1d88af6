"""The platform health asset against the real database and both blob stores."""

from pathlib import Path

import dagster as dg
import pytest

from ecr_pipelines.platform import migrations_unmodified, platform_status, service_schemas_exist
from ecr_pipelines.resources import DatabaseResource, MailResource
from ecr_pipelines_tests.metadata import check_evaluations, materialization_metadata


@pytest.mark.parametrize("blobs_fixture", ["local_blobs", "s3_blobs"])
def test_platform_status_reports_schema_tables_and_a_blob_round_trip(
    request: pytest.FixtureRequest,
    db: DatabaseResource,
    blobs_fixture: str,
    tmp_path: Path,
) -> None:
    blobs = request.getfixturevalue(blobs_fixture)
    result = dg.materialize(
        [platform_status, service_schemas_exist, migrations_unmodified],
        resources={"db": db, "blobs": blobs, "mail": MailResource(outbox_dir=str(tmp_path))},
    )
    assert result.success
    meta = materialization_metadata(result, "platform_status")
    assert meta["blob_round_trip_ok"] is True
    assert meta["schema_version"] == meta["code_schema_version"]
    assert "***" in meta["database"] or "@" not in meta["database"]
    assert check_evaluations(result) == {
        "platform_status:service_schemas_exist": True,
        "platform_status:migrations_unmodified": True,
    }
    assert list(blobs.store.list("platform/")) == []
