"""The data store as users run it: `dagster job execute -j datastore_sources_job` against the
stand-in listings and the files an operator put, twice; a newer file; the sensors; an upload from
the blob store to a table through the sensor, `datastore_uploads_job` and `datastore_upload_job`."""

import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.datastore.defs import core_defs
from ecr_pipelines.datastore.defs.resources import DatastoreResource
from ecr_pipelines.datastore.defs.sensors import datastore_files_sensor, datastore_uploads_sensor
from ecr_pipelines.datastore.defs.sources import files_key, source_key
from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.dev.datastore_demo import FILES, PLACED, UPLOAD_KEY, place_files
from ecr_pipelines.dev.standins import Fault
from ecr_pipelines.dev.standins.dataflow import DataflowStandIn
from ecr_pipelines.dev.standins.datastore import CH_PAGE, DatastoreStandIn, OfferedFile
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.database import engine_for
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource

REPO = Path(__file__).resolve().parents[2]
HMRC = "hmrc.exporters"
# Each source's tables, and whether L1 is filled too.
TABLES = {
    "ons.postcode_directory": ("L0", "L1"),
    "dit.reference_postcodes": ("L0", "L1"),
    "dit.baci": ("L0", "L1"),
    "dit.eu_country_membership": ("L0", "L1"),
    "comtrade.country_code_and_iso": ("L0", "L1"),
    "world_bank.bound_rates": ("L0", "L1"),
    "world_bank.tariff": ("L0",),
    "companies_house.accounts_legacy": ("L0",),
    "hmrc.exporters": ("L0", "L1"),
}


@pytest.fixture
def ds_db(fresh_database: str) -> DatabaseResource:
    upgrade(engine_for(fresh_database))
    return DatabaseResource(url=fresh_database)


@pytest.fixture
def site() -> Iterator[DatastoreStandIn]:
    with DatastoreStandIn() as stand_in:
        yield stand_in


def resources(db: DatabaseResource, blobs: Path, site: DatastoreStandIn, **settings: Any) -> dict[str, Any]:
    urls = site.listing_urls
    return {
        "db": db,
        "blobs": BlobStoreResource(url=str(blobs)),
        "http": HttpResource(retries=0, read_timeout=10.0),
        "datastore": DatastoreResource(
            companies_house_accounts_url=urls["companies_house.accounts_legacy"],
            hmrc_exporters_url=urls[HMRC],
            ons_postcode_directory_url=urls["ons.postcode_directory"],
            ons_download_url=site.ons_item_data_url,
            **settings,
        ),
    }


def run_job(
    db: DatabaseResource,
    blobs: Path,
    site: DatastoreStandIn,
    job: str,
    run_config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(db, blobs, site)))
    return defs.resolve_job_def(job).execute_in_process(run_config=run_config or {}, raise_on_error=False)


def counts(db: DatabaseResource) -> dict[str, int]:
    found = {}
    with db.connect() as conn:
        for source_id, tables in TABLES.items():
            for table in tables:
                found[f"{source_id}.{table}"] = conn.execute(
                    sa.text(f'SELECT count(*) FROM "{source_id}"."{table}"')
                ).scalar_one()
        for table in ("batches", "applications", "footnotes"):
            found[f"spire.{table}"] = conn.execute(
                sa.text(f"SELECT count(*) FROM spire.{table}")
            ).scalar_one()
        found["transformed"] = conn.execute(
            sa.text('SELECT count(*) FROM "world_bank.tariff"."L1"')
        ).scalar_one()
    return found


def registry(db: DatabaseResource) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "SELECT id, source, file_name, state::text, updated_timestamp FROM operations.datafile_registry "
                    "ORDER BY id"
                )
            )
        ]


@pytest.mark.slow
def test_sources_job_from_the_cli_fills_every_source_and_a_rerun_changes_nothing(
    ds_db: DatabaseResource,
    site: DatastoreStandIn,
    dagster_cli_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blobs = tmp_path / "blobs"
    monkeypatch.setenv("BLOB_STORE_URL", str(blobs))
    place_files({})
    env = {
        **dagster_cli_env,
        **site.env(),
        "DATABASE_URL": ds_db.url,
        "ECR_HOME": str(tmp_path),
        "BLOB_STORE_URL": str(blobs),
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "job", "execute", "-m", "ecr_pipelines.definitions", "-j", "datastore_sources_job"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    filled = counts(ds_db)
    assert all(filled[name] > 0 for name in filled), filled
    entries = registry(ds_db)
    sources = {source for _, source, _, state, _ in entries if state == "processed"}
    assert {*TABLES, "world_bank.tariff.transformed"} <= sources
    assert len([s for s in sources if s.startswith("dit.spire.")]) == 25
    assert not [entry for entry in entries if entry[3] != "processed"], entries
    # The three downloads are in the blob store under the legacy's names.
    assert (blobs / "datastore/datasets/hmrc/exporters/exporters1602.zip").is_file()
    assert (blobs / "datastore/datasets/ons/postcode_directory/ONSPD_MAY_2019_UK.zip").is_file()

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert counts(ds_db) == filled
    assert registry(ds_db) == entries  # not even a registry row: nothing was due

    # A newer HMRC file appends; a newer reference-postcodes snapshot versions its rows.
    hmrc_zip = (FILES / "hmrc_exporters_2016_mock.zip").read_bytes()
    site.offer(HMRC, OfferedFile(date(2016, 3, 1), hmrc_zip))
    snapshot = (FILES / "placed" / PLACED["dit.reference_postcodes"]).read_bytes()
    header, first_row, *rest = snapshot.decode().splitlines(keepends=True)
    changed = first_row.replace("Aberdeen City", "Aberdeen Town")
    LocalBlobStore(blobs).put_bytes(
        SOURCES["dit.reference_postcodes"].blob_prefix + "snapshot2.csv",
        (header + changed + "".join(rest)).encode(),
    )
    result = run_job(ds_db, blobs, site, "datastore_sources_job")
    assert result.success
    after = counts(ds_db)
    assert after["hmrc.exporters.L0"] == 2 * filled["hmrc.exporters.L0"]
    assert after["dit.reference_postcodes.L0"] == filled["dit.reference_postcodes.L0"] + 1
    with ds_db.connect() as conn:
        versions = conn.execute(
            sa.text(
                'SELECT datafile_created, datafile_updated, count(*) FROM "dit.reference_postcodes"."L0" '
                "GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).all()
    first, second = "dit_reference_postcodes_snapshot1.csv", "snapshot2.csv"
    unchanged = filled["dit.reference_postcodes.L0"] - 1
    expected = [(first, first, 1), (second, second, 1)]  # the changed row's two versions
    if unchanged:
        expected.append((first, second, unchanged))
    assert sorted(tuple(v) for v in versions) == sorted(expected)
    assert (blobs / "datastore/datasets/hmrc/exporters/exporters1603.zip").is_file()


def test_a_failed_download_keeps_nothing_from_loading(
    ds_db: DatabaseResource, site: DatastoreStandIn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    store = LocalBlobStore(blobs)
    baci = SOURCES["dit.baci"].blob_prefix + "baci.csv"
    store.put_file(baci, FILES / "placed" / PLACED["dit.baci"])
    store.put_file(SOURCES["companies_house.accounts_legacy"].blob_prefix + "Accounts_Bulk_Data-2020-03-01.zip",
                   FILES / "companies_house_accounts_test_datafile_1.zip")  # fmt: skip
    site.server.inject(CH_PAGE, Fault(status=500))
    result = run_job(ds_db, blobs, site, "datastore_sources_job")
    assert result.success
    checks = {
        (evaluation.asset_key, evaluation.check_name): evaluation.passed
        for evaluation in result.get_asset_check_evaluations()
    }
    assert checks[(files_key("companies_house.accounts_legacy"), "download_ok")] is False
    assert checks[(files_key(HMRC), "download_ok")] is True
    assert checks[(source_key("companies_house.accounts_legacy"), "no_failed_files")] is True
    with ds_db.connect() as conn:
        loaded = conn.execute(
            sa.text('SELECT count(*) FROM "companies_house.accounts_legacy"."L0"')
        ).scalar_one()
        baci_rows = conn.execute(sa.text('SELECT count(*) FROM "dit.baci"."L0"')).scalar_one()
    assert loaded > 0 and baci_rows == 2


def test_a_bad_file_fails_alone_and_its_check_says_so(
    ds_db: DatabaseResource, site: DatastoreStandIn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    store = LocalBlobStore(blobs)
    prefix = SOURCES["dit.baci"].blob_prefix
    store.put_bytes(prefix + "a_broken.csv", b"not,the,baci,header\n1,2,3,4\n")
    store.put_file(prefix + "b_good.csv", FILES / "placed" / PLACED["dit.baci"])
    result = run_job(ds_db, blobs, site, "datastore_sources_job")
    assert result.success
    checks = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    check = checks[(source_key("dit.baci"), "no_failed_files")]
    assert check.passed is False
    states = {entry[2]: entry[3] for entry in registry(ds_db) if entry[1] == "dit.baci"}
    assert states == {"a_broken.csv": "failed", "b_good.csv": "processed"}


def sensor_context(
    instance: dg.DagsterInstance, db: DatabaseResource, blobs: Path, cursor: str | None = None
) -> dg.SensorEvaluationContext:
    return dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"db": db, "blobs": BlobStoreResource(url=str(blobs))},
    )


def test_files_sensor_asks_for_one_run_of_the_sources_with_new_files(
    ds_db: DatabaseResource, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    store = LocalBlobStore(blobs)
    store.put_file(SOURCES["dit.baci"].blob_prefix + "baci.csv", FILES / "placed" / PLACED["dit.baci"])
    store.put_file(
        SOURCES["world_bank.tariff"].blob_prefix + "tariff.csv",
        FILES / "placed" / PLACED["world_bank.tariff"],
    )
    with dg.instance_for_test() as instance:
        result = datastore_files_sensor(sensor_context(instance, ds_db, blobs))
        assert isinstance(result, dg.SensorResult)
        [request] = result.run_requests or []
        assert set(request.asset_selection or []) == {
            source_key("dit.baci"),
            source_key("world_bank.tariff"),
            source_key("world_bank.tariff.transformed"),
        }
        again = datastore_files_sensor(sensor_context(instance, ds_db, blobs, cursor=result.cursor))
        assert isinstance(again, dg.SkipReason)


def test_an_upload_goes_from_the_blob_store_to_a_table(
    ds_db: DatabaseResource, site: DatastoreStandIn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    store = LocalBlobStore(blobs)
    key = "datastore/uploads/acme/prices/prices.csv"
    store.put_bytes(
        key, b'item,price,sold_on,note\nbolt,1.50,2024-01-02,"say ""hi"""\nnut,2,2024-01-03,NULLABLE\n'
    )
    with dg.instance_for_test() as instance:
        request = datastore_uploads_sensor(sensor_context(instance, ds_db, blobs))
        assert isinstance(request, dg.SensorResult) and len(request.run_requests or []) == 1
        assert run_job(ds_db, blobs, site, "datastore_uploads_job").success
        with ds_db.connect() as conn:
            state, types = conn.execute(
                sa.text(
                    "SELECT state, inferred_types FROM datastore.pipeline_data_file WHERE data_file_url = :k"
                ),
                {"k": key},
            ).one()
        assert state == "uploaded"  # checked, waiting for a person to confirm the types
        assert isinstance(datastore_uploads_sensor(sensor_context(instance, ds_db, blobs)), dg.SkipReason)
    config = {
        "ops": {"datastore__upload_tables": {"config": {"file": key, "column_types": {"price": "numeric"}}}}
    }
    result = run_job(ds_db, blobs, site, "datastore_upload_job", config)
    assert result.success
    with ds_db.connect() as conn:
        rows = conn.execute(
            sa.text('SELECT item, price, sold_on::text, note FROM "acme.prices"."L0" ORDER BY id')
        ).all()
        kinds = dict(
            conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'acme.prices' AND table_name = 'L0'"
                )
            ).all()
        )
        state = conn.execute(
            sa.text("SELECT state FROM datastore.pipeline_data_file WHERE data_file_url = :k"), {"k": key}
        ).scalar_one()
    assert state == "completed"
    assert [tuple(r) for r in rows] == [
        ("bolt", 1.5, "2024-01-02", 'say "hi"'),
        ("nut", 2, "2024-01-03", "NULLABLE"),
    ]
    assert kinds["price"] == "numeric" and kinds["sold_on"] == "date"


def test_a_refused_verification_fails_the_run_clearly(
    ds_db: DatabaseResource, site: DatastoreStandIn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    LocalBlobStore(blobs).put_bytes(UPLOAD_KEY, b"a,b\n1,2\n")
    assert run_job(ds_db, blobs, site, "datastore_uploads_job").success
    config = {
        "ops": {
            "datastore__upload_tables": {"config": {"file": UPLOAD_KEY, "column_types": {"zz": "integer"}}}
        }
    }
    result = run_job(ds_db, blobs, site, "datastore_upload_job", config)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "zz" in failure.message


def dataflow_defs(
    db: DatabaseResource, blobs: Path, site: DatastoreStandIn, dataflow: DataflowStandIn
) -> dg.Definitions:
    env = dataflow.env()
    settings = {
        "dataflow_base_url": env["DATAFLOW_BASE_URL"],
        "dataflow_hawk_id": env["DATAFLOW_HAWK_ID"],
        "dataflow_hawk_key": env["DATAFLOW_HAWK_KEY"],
        "upload_auto_verify": True,
    }
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=resources(db, blobs, site, **settings)))


def upload_states(db: DatabaseResource) -> dict[str, tuple[str, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT data_file_url, state, error_message FROM datastore.pipeline_data_file")
        )
        return {row[0]: (row[1], row[2]) for row in rows}


def test_loads_tell_data_flow_when_it_is_configured(
    ds_db: DatabaseResource, site: DatastoreStandIn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    store = LocalBlobStore(blobs)
    store.put_bytes("datastore/uploads/acme/prices/v1.csv", b"a,b\n1,2\n")
    with DataflowStandIn(states=("success",)) as dataflow:
        defs = dataflow_defs(ds_db, blobs, site, dataflow)
        sources = defs.resolve_job_def("datastore_sources_job").execute_in_process(
            asset_selection=[files_key(HMRC), source_key(HMRC)]  # the legacy announced HMRC's L1
        )
        assert sources.success
        assert defs.resolve_job_def("datastore_uploads_job").execute_in_process().success
        confs = [run.conf for run in dataflow.triggers]
    assert confs == [
        {"data_uploader_schema_name": "hmrc.exporters", "data_uploader_table_name": "L1"},
        {"data_uploader_schema_name": "acme.prices", "data_uploader_table_name": "L0"},
    ]
    assert upload_states(ds_db) == {"datastore/uploads/acme/prices/v1.csv": ("completed", None)}


def test_an_upload_whose_data_flow_run_fails_is_failed_with_the_reason(
    ds_db: DatabaseResource, site: DatastoreStandIn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    LocalBlobStore(blobs).put_bytes("datastore/uploads/acme/prices/v1.csv", b"a,b\n1,2\n")
    with DataflowStandIn(states=("failed",)) as dataflow:
        defs = dataflow_defs(ds_db, blobs, site, dataflow)
        assert defs.resolve_job_def("datastore_uploads_job").execute_in_process().success
    [(state, error)] = upload_states(ds_db).values()
    assert state == "failed" and error is not None and "failed" in error
    with ds_db.connect() as conn:  # the table was loaded: only data-flow's part failed
        assert conn.execute(sa.text('SELECT count(*) FROM "acme.prices"."L0"')).scalar_one() == 1
