"""The flatten, lake and Solr assets in Dagster: metadata, checks, run config and failures, and the
whole IATI chain (sync, download, validate, clean, flatten, lake, Solr) on the stand-ins."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.blobkeys import lake_prefix
from ecr_pipelines.iati.defs import core_defs
from ecr_pipelines.iati.defs.flatten import (
    flatten_checks,
    iati_flatten_outcome_exclusive,
    iati_flattened_activities,
)
from ecr_pipelines.iati.defs.lake import iati_activity_lake, iati_lake_blobs_exist, lake_checks
from ecr_pipelines.iati.defs.resources import IatiValidatorResource, SolrResource
from ecr_pipelines.iati.defs.solr import iati_solr_counts_match, iati_solr_index, solr_checks
from ecr_pipelines.iati.solr_docs import COLLECTIONS
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource
from ecr_pipelines_tests.iati.conftest import asset_metadata, iati_resource
from ecr_pipelines_tests.iati.test_index_stage import WORKED_ID, commits, sample_bytes, seed_all

ASSETS = [iati_flattened_activities, iati_activity_lake, iati_solr_index]
INDEX_CHECKS = [*flatten_checks, *lake_checks, *solr_checks]


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStoreResource:
    return BlobStoreResource(url=str(tmp_path / "blobs"))


def resources(db: DatabaseResource, blobs: BlobStoreResource, solr: SolrResource) -> dict[str, Any]:
    return {"db": db, "blobs": blobs, "solr": solr}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else None) or data.error.message


def test_the_assets_materialize_with_metadata_and_passing_checks(
    iati_db: DatabaseResource, blobs: BlobStoreResource, solr: SolrStandIn
) -> None:
    seed_all(iati_db, blobs.store, sample_bytes())
    solr_resource = SolrResource(url=solr.url)

    result = dg.materialize([*ASSETS, *INDEX_CHECKS], resources=resources(iati_db, blobs, solr_resource))

    assert result.success
    meta = asset_metadata(result)
    flatten, lake, index = (meta[a.key.to_user_string()] for a in ASSETS)
    assert (flatten["processed"], flatten["errors"], flatten["activities"], flatten["dagster/row_count"]) == (
        7,
        0,
        18,
        7,
    )
    assert (lake["processed"], lake["activities"], lake["skipped_no_identifier"], lake["blobs_written"]) == (
        7,
        17,
        1,
        34,
    )
    assert (
        index["processed"],
        index["errors"],
        index["skipped_no_identifier"],
        index["dagster/row_count"],
    ) == (
        7,
        0,
        1,
        7,
    )
    assert (index["solr_docs_activity"], index["solr_docs_transaction"], index["solr_docs_budget"]) == (
        17,
        92,
        34,
    )
    # One batch of seven documents: one commit of each collection.
    assert index["batches"] == 1 and commits(solr) == dict.fromkeys(COLLECTIONS, 1)
    assert index["error_preview"] == "_none_" and index["outcome_done"] == 7
    assert {c: len(solr.documents(c)) for c in COLLECTIONS} == {
        "activity": 17,
        "transaction": 92,
        "budget": 34,
    }
    assert checks(result) == {
        "iati_flatten_outcome_exclusive": True,
        "iati_lake_blobs_exist": True,
        "iati_solr_counts_match": True,
    }

    again = dg.materialize(ASSETS, resources=resources(iati_db, blobs, solr_resource))
    assert [m["processed"] for m in asset_metadata(again).values()] == [0, 0, 0]


def test_run_config_batches_limits_and_reindexes(
    iati_db: DatabaseResource, blobs: BlobStoreResource, solr: SolrStandIn
) -> None:
    seed_all(iati_db, blobs.store, sample_bytes())
    run_config = {
        "ops": {
            "iati_flattened_activities": {"config": {"batch_size": 2, "limit": 5}},
            "iati_activity_lake": {"config": {"batch_size": 2, "workers": 2}},
            "iati_solr_index": {"config": {"batch_size": 2}},
        }
    }
    result = dg.materialize(
        ASSETS, resources=resources(iati_db, blobs, SolrResource(url=solr.url)), run_config=run_config
    )
    meta = asset_metadata(result)
    assert (
        meta["iati_flattened_activities"]["processed"] == 5
        and meta["iati_flattened_activities"]["batches"] == 3
    )
    assert meta["iati_solr_index"]["processed"] == 5 and meta["iati_solr_index"]["batches"] == 3
    assert commits(solr) == dict.fromkeys(COLLECTIONS, 3)

    reindex = {"ops": {"iati_solr_index": {"config": {"reindex_all": True, "batch_size": 50}}}}
    result = dg.materialize(
        [iati_solr_index], resources=resources(iati_db, blobs, SolrResource(url=solr.url)), run_config=reindex
    )
    assert asset_metadata(result)["iati_solr_index"]["reindexed"] == 5


def test_solr_not_configured_or_down_fails_the_asset_and_changes_nothing(
    iati_db: DatabaseResource, blobs: BlobStoreResource
) -> None:
    seed_all(iati_db, blobs.store, {WORKED_ID: sample_bytes()[WORKED_ID]})
    dg.materialize(ASSETS[:2], resources={"db": iati_db, "blobs": blobs})

    result = dg.materialize(
        [iati_solr_index], resources=resources(iati_db, blobs, SolrResource()), raise_on_error=False
    )
    assert not result.success and "SOLR_URL is not set" in failure_description(result)

    with SolrStandIn() as gone:
        url = gone.url
    down = SolrResource(url=url, retries=0, connect_timeout=1)
    result = dg.materialize(
        [iati_solr_index], resources=resources(iati_db, blobs, down), raise_on_error=False
    )
    assert not result.success and "Solr does not answer" in failure_description(result)
    with iati_db.connect() as conn:
        assert conn.execute(sa.text("SELECT solrize_start, solr_api_error FROM iati.document")).one() == (
            None,
            None,
        )


def test_solr_failing_during_the_run_fails_it_and_the_next_run_catches_up(
    iati_db: DatabaseResource, blobs: BlobStoreResource, solr: SolrStandIn
) -> None:
    seed_all(iati_db, blobs.store, sample_bytes())
    dg.materialize(ASSETS[:2], resources={"db": iati_db, "blobs": blobs})
    resource = SolrResource(url=solr.url, retries=0)
    solr.fail_next("budget", 503)

    result = dg.materialize(
        [iati_solr_index], resources=resources(iati_db, blobs, resource), raise_on_error=False
    )

    assert not result.success and "Solr became unavailable" in failure_description(result)
    with iati_db.connect() as conn:
        due = conn.execute(
            sa.text("SELECT count(*) FROM iati.document WHERE solrize_end IS NULL")
        ).scalar_one()
    assert due == 7
    # The next run indexes the six documents Solr never saw; the one it failed on carries a
    # solr_api_error and waits for the retry run (the retry schedule's config).
    result = dg.materialize([iati_solr_index, *solr_checks], resources=resources(iati_db, blobs, resource))
    assert result.success and checks(result) == {"iati_solr_counts_match": True}
    assert asset_metadata(result)["iati_solr_index"]["processed"] == 6
    retry = {"ops": {"iati_solr_index": {"config": {"retry_errors": True}}}}
    result = dg.materialize(
        [iati_solr_index, *solr_checks], resources=resources(iati_db, blobs, resource), run_config=retry
    )
    assert result.success and checks(result) == {"iati_solr_counts_match": True}
    assert asset_metadata(result)["iati_solr_index"]["processed"] == 1
    assert len(solr.documents("activity")) == 17


def test_the_checks_catch_what_went_wrong(
    iati_db: DatabaseResource, blobs: BlobStoreResource, solr: SolrStandIn
) -> None:
    seed_all(iati_db, blobs.store, sample_bytes())
    solr_resource = SolrResource(url=solr.url)
    dg.materialize(ASSETS, resources=resources(iati_db, blobs, solr_resource))
    # A document's Solr entries lost, a lake blob lost, a row both flattened and failed.
    solr_resource.delete_document(WORKED_ID)
    solr_resource.commit()
    (lost,) = [k for k in blobs.store.list(lake_prefix(WORKED_ID)) if k.endswith(".xml")]
    blobs.store.delete(lost)
    with iati_db.begin() as conn:
        conn.execute(
            sa.text("UPDATE iati.document SET flatten_api_error = 1 WHERE id = :id"), {"id": WORKED_ID}
        )

    result = dg.materialize(
        [*ASSETS, *INDEX_CHECKS],
        resources=resources(iati_db, blobs, solr_resource),
        selection=dg.AssetSelection.checks(
            iati_flatten_outcome_exclusive, iati_lake_blobs_exist, iati_solr_counts_match
        ),
    )

    assert checks(result) == {
        "iati_flatten_outcome_exclusive": False,
        "iati_lake_blobs_exist": False,
        "iati_solr_counts_match": False,
    }
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["iati_solr_counts_match"].metadata["mismatches"].value == 3


# -- the whole chain -------------------------------------------------------------------------------


def iati_definitions(resources: dict[str, Any]) -> dg.Definitions:
    """The IATI service's definitions (every stage, its checks and ``iati_job``) with ``resources``."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=resources))


def test_the_whole_iati_chain_on_the_stand_ins_fills_the_three_collections(
    iati_db: DatabaseResource,
    blobs: BlobStoreResource,
    iati_standin: StandInServer,
    solr: SolrStandIn,
    tmp_path: Path,
) -> None:
    defs = iati_definitions(
        {
            "db": iati_db,
            "blobs": blobs,
            "http": HttpResource(retries=1, backoff=0.01, read_timeout=10),
            "mail": MailResource(outbox_dir=str(tmp_path / "outbox")),
            "iati": iati_resource(iati_standin),
            "iati_validator": IatiValidatorResource(),
            "solr": SolrResource(url=solr.url),
        }
    )

    result = defs.resolve_job_def("iati_job").execute_in_process()

    assert result.success
    assert all(checks(result).values()), checks(result)
    meta = asset_metadata(result)
    with iati_db.connect() as conn:
        indexed = (
            conn.execute(sa.text("SELECT id FROM iati.document WHERE solrize_end IS NOT NULL ORDER BY id"))
            .scalars()
            .all()
        )
        cleaned = conn.execute(
            sa.text("SELECT count(*) FROM iati.document WHERE clean_end IS NOT NULL")
        ).scalar_one()
    assert len(indexed) == cleaned >= 3 and meta["iati_solr_index"]["errors"] == 0
    for collection in COLLECTIONS:
        docs = solr.documents(collection)
        assert docs and {d["iati_activities_document_id"] for d in docs} == set(indexed)
        assert meta["iati_solr_index"][f"solr_docs_{collection}"] == len(docs)

    again = defs.resolve_job_def("iati_job").execute_in_process()
    assert again.success and asset_metadata(again)["iati_solr_index"]["processed"] == 0
    assert all(checks(again).values()), checks(again)
