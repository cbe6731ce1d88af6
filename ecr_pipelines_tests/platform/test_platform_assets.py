"""The platform health asset against the real database and both blob stores."""

from pathlib import Path

import dagster as dg
import pytest

from ecr_pipelines.platform import migrations_unmodified, platform_status, service_schemas_exist
from ecr_pipelines.resources import DatabaseResource, MailResource


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
    meta = result.asset_materializations_for_node("platform_status")[0].metadata
    assert meta["blob_round_trip_ok"].value is True
    assert meta["schema_version"].value == meta["code_schema_version"].value
    assert "***" in meta["database"].value or "@" not in meta["database"].value
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert list(blobs.store.list("platform/")) == []
