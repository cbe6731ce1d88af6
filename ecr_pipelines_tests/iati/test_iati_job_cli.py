"""The IATI chain as users run it: `dagster job execute -j iati_job` on a Postgres-backed instance,
against the stand-in Bulk Data Service and the Solr stand-in, twice."""

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.iati_demo import _env as iati_env
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.resources import DatabaseResource

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_iati_job_runs_every_stage_and_fills_the_three_collections(
    iati_db: DatabaseResource, iati_standin: StandInServer, dagster_cli_env: dict[str, str], tmp_path: Path
) -> None:
    dagster = str(Path(sys.executable).with_name("dagster"))
    with SolrStandIn() as solr:
        env = {
            **dagster_cli_env,
            **iati_env(iati_standin.url("/iati")),
            "SOLR_URL": solr.url,
            "ECR_HOME": str(tmp_path),
            "BLOB_STORE_URL": str(tmp_path / "blobs"),
        }
        for attempt in (1, 2):
            done = subprocess.run(
                [dagster, "job", "execute", "-m", "ecr_pipelines.definitions", "-j", "iati_job"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, f"run {attempt}: {done.stderr[-3000:]}"
        counts = {name: len(solr.documents(name)) for name in ("activity", "transaction", "budget")}
    assert counts["activity"] > 0 and counts["transaction"] > 0 and counts["budget"] > 0
    with iati_db.connect() as conn:
        activities = conn.execute(
            sa.text(
                "SELECT sum(jsonb_array_length(flattened_activities)) FROM iati.document WHERE solrize_end IS NOT NULL"
            )
        ).scalar()
        stripped = conn.execute(
            sa.text(
                "SELECT clean_end IS NOT NULL, validation_api_error FROM iati.document WHERE name = '3f-mixed-validity'"
            )
        ).one()
    assert counts["activity"] == activities  # the second run duplicated nothing
    assert tuple(stripped) == (True, 422)
    assert list((tmp_path / "blobs" / "iati" / "lake").iterdir())
