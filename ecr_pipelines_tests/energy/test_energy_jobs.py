"""The energy hub as users run it: `dagster job execute -j energy_onboard_job` and
`-j energy_import_job` against the stand-ins (the issue's must-show: every hour once, GGOs only
for the producer, nothing more on a second run, webhooks signed), then a disclosure created and
compiled by its jobs, and the work sensor's requests."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.eloverblik import EloverblikStandIn, EnergyTypeStandIn, meteringpoint
from ecr_pipelines.dev.standins.ledger import LedgerStandIn
from ecr_pipelines.dev.standins.webhooks import WebhookReceiver
from ecr_pipelines.energy import webhooks
from ecr_pipelines.energy.defs import core_defs
from ecr_pipelines.energy.defs.resources import EnergyResource
from ecr_pipelines.energy.defs.sensors import energy_work_sensor
from ecr_pipelines.lib.database import engine_for
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource

REPO = Path(__file__).resolve().parents[2]
GSRN1 = "269841726498172468"  # the recordings' points: a producer with codes
GSRN2 = "198498465435784984"  # and a consumer
SUB = "customer-1"
SECRET = "hook-secret"


@pytest.fixture
def energy_db(fresh_database: str) -> DatabaseResource:
    upgrade(engine_for(fresh_database))
    return DatabaseResource(url=fresh_database)


@pytest.fixture
def upstream(standin: StandInServer) -> Iterator[dict[str, Any]]:
    eloverblik, types, ledger = EloverblikStandIn(standin), EnergyTypeStandIn(standin), LedgerStandIn(standin)
    eloverblik.add_customer(
        SUB, [meteringpoint(GSRN1, type_of_mp="E18", postcode="7000"), meteringpoint(GSRN2, postcode="2100")]
    )
    eloverblik.serve_recording("imported_timeseries_data_gsrn1.json")
    eloverblik.serve_recording("imported_timeseries_data_gsrn2.json")
    types.set_type(GSRN1, "T020000", "F01050100")
    types.set_emissions(GSRN1)
    receiver = WebhookReceiver(standin)
    receiver.set_secret("hub", SECRET)
    yield {
        "eloverblik": eloverblik,
        "receiver": receiver,
        "env": {
            **eloverblik.env(),
            **types.env(),
            **ledger.env(),
            "FIRST_MEASUREMENT_TIME": "2019-01-01T00:00:00Z",
            "LAST_MEASUREMENT_TIME": "2019-02-01T00:00:00Z",
        },
    }


def execute(job: str, env: dict[str, str], tmp_path: Path, config: dict[str, Any] | None = None) -> None:
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "job",
        "execute",
        "-m",
        "ecr_pipelines.definitions",
    ]
    command += ["-j", job]
    if config is not None:
        path = tmp_path / f"{job}.yaml"
        path.write_text(yaml.safe_dump(config))
        command += ["-c", str(path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def state(db: DatabaseResource) -> dict[str, Any]:
    with db.connect() as conn:
        per_point = conn.exec_driver_sql(
            "SELECT p.gsrn, p.type::text, count(m.id), count(g.id), count(DISTINCT m.begin), min(m.begin)::text, "
            "max(m.begin)::text FROM energy.meteringpoint p LEFT JOIN energy.measurement m ON m.gsrn = p.gsrn "
            "LEFT JOIN energy.ggo g ON g.measurement_id = m.id GROUP BY p.gsrn, p.type ORDER BY p.gsrn"
        ).all()
        deliveries = conn.exec_driver_sql(
            "SELECT event::text, status, count(*) FROM energy.webhook_delivery GROUP BY 1, 2 ORDER BY 1, 2"
        ).all()
    return {"points": [tuple(r) for r in per_point], "deliveries": [tuple(r) for r in deliveries]}


@pytest.mark.slow
def test_import_job_from_the_cli_stores_every_hour_once_and_ggos_for_the_producer(
    energy_db: DatabaseResource,
    upstream: dict[str, Any],
    dagster_cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {**dagster_cli_env, **upstream["env"], "DATABASE_URL": energy_db.url, "ECR_HOME": str(tmp_path)}
    env["BLOB_STORE_URL"] = str(tmp_path / "blobs")
    receiver: WebhookReceiver = upstream["receiver"]
    with energy_db.engine.begin() as conn:
        for event in ("ON_METERINGPOINT_AVAILABLE", "ON_MEASUREMENT_PUBLISHED", "ON_GGOS_ISSUED"):
            webhooks.subscribe(conn, event, SUB, receiver.url("hub"), SECRET)
    execute(
        "energy_onboard_job", env, tmp_path, {"ops": {"energy__meteringpoints": {"config": {"sub": SUB}}}}
    )
    assert len(receiver.received("hub")) == 2  # both points available (the producer with its codes)

    execute("energy_import_job", env, tmp_path)
    first = state(energy_db)
    last = "2019-01-31 22:00:00+00"
    assert first["points"] == [
        (GSRN2, "CONSUMPTION", 743, 0, 743, "2019-01-01 00:00:00+00", last),
        (GSRN1, "PRODUCTION", 743, 743, 743, "2019-01-01 00:00:00+00", last),
    ]
    assert first["deliveries"] == [
        ("ON_GGOS_ISSUED", "sent", 743),
        ("ON_MEASUREMENT_PUBLISHED", "sent", 1486),
        ("ON_METERINGPOINT_AVAILABLE", "sent", 2),
    ]
    received = receiver.received("hub")
    assert len(received) == 2 + 1486 + 743 and receiver.all_signed()
    ggo = next(json.loads(r.body) for r in received if b'"ggo"' in r.body)
    assert ggo["sub"] == SUB and ggo["ggo"]["gsrn"] == GSRN1 and ggo["ggo"]["technologyCode"] == "T020000"

    execute("energy_import_job", env, tmp_path)
    assert state(energy_db) == first
    assert len(receiver.received("hub")) == 2 + 1486 + 743


def test_a_disclosure_is_created_and_compiled_by_its_jobs(
    energy_db: DatabaseResource, upstream: dict[str, Any], tmp_path: Path
) -> None:
    settings = upstream["env"]
    energy = EnergyResource(
        eloverblik_url=settings["ELOVERBLIK_SERVICE_URL"],
        eloverblik_token=settings["ELOVERBLIK_TOKEN"],
        energy_type_url=settings["ENERGY_TYPE_SERVICE_URL"],
        ledger_url=settings["LEDGER_URL"],
        first_measurement_time=settings["FIRST_MEASUREMENT_TIME"],
        last_measurement_time=settings["LAST_MEASUREMENT_TIME"],
    )
    blobs = BlobStoreResource(url=str(tmp_path / "blobs"))
    defs = dg.Definitions.merge(
        core_defs,
        dg.Definitions(resources={"db": energy_db, "blobs": blobs, "http": HttpResource(), "energy": energy}),
    )
    onboard = {"ops": {"energy__meteringpoints": {"config": {"sub": SUB}}}}
    assert defs.resolve_job_def("energy_onboard_job").execute_in_process(run_config=onboard).success
    assert defs.resolve_job_def("energy_import_job").execute_in_process().success

    refused = {
        "ops": {
            "energy_disclosure": {
                "config": {
                    "sub": SUB,
                    "name": "x",
                    "begin": "2019-01-01",
                    "end": "2019-01-02",
                    "gsrn": [GSRN1],
                }
            }
        }
    }
    result = defs.resolve_job_def("energy_disclosure_job").execute_in_process(
        run_config=refused, raise_on_error=False
    )
    assert not result.success  # a production point cannot be disclosed

    config = {
        "sub": SUB,
        "name": "January",
        "begin": "2019-01-01",
        "end": "2019-01-31",
        "maxResolution": "day",
        "publicizeMeteringpoints": True,
        "publicizeGsrn": True,
        "gsrn": [GSRN2],
    }
    created = defs.resolve_job_def("energy_disclosure_job").execute_in_process(
        run_config={"ops": {"energy_disclosure": {"config": config}}}
    )
    public_id = created.output_for_node("energy_disclosure")

    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(
            instance=instance, resources={"db": energy_db, "energy": energy}
        ) as context:
            requested = energy_work_sensor(context)
        assert isinstance(requested, dg.SensorResult)
        assert [r.job_name for r in requested.run_requests or []] == ["energy_disclosures_job"]

    assert defs.resolve_job_def("energy_disclosures_job").execute_in_process().success
    with energy_db.connect() as conn:
        row = conn.execute(
            sa.text("SELECT state::text, blob_key FROM energy.disclosure WHERE public_id = :p"),
            {"p": public_id},
        ).one()
    assert row.state == "AVAILABLE"
    document = json.loads((tmp_path / "blobs" / row.blob_key).read_bytes())
    assert document["success"] and len(document["labels"]) == 31
    [series] = document["data"]
    assert series["gsrn"] == GSRN2 and series["measurements"][1] == 24_000  # 24 hours of 1 kWh


def test_without_eloverblik_the_assets_skip_and_the_schedules_say_why(
    energy_db: DatabaseResource, tmp_path: Path
) -> None:
    from ecr_pipelines.energy.defs.jobs import energy_import_schedule, energy_nightly_disclosures_schedule

    resources = {
        "db": energy_db,
        "blobs": BlobStoreResource(url=str(tmp_path / "blobs")),
        "http": HttpResource(),
        "energy": EnergyResource(),
    }
    defs = dg.Definitions.merge(core_defs, dg.Definitions(resources=resources))
    assets = [a for a in core_defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    result = dg.materialize([*assets, *(core_defs.asset_checks or [])], resources=resources)
    assert result.success
    skipped = {
        event.asset_key.to_user_string(): event.materialization.metadata.get("skipped")
        for event in result.get_asset_materialization_events()
    }
    assert skipped["energy/meteringpoints"] is not None and skipped["energy/measurements"] is not None
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["energy_technology_rows"] and checks["energy_ggos_valid"]

    with dg.build_schedule_context(resources={"energy": EnergyResource()}) as context:
        assert isinstance(energy_import_schedule(context), dg.SkipReason)
    configured = EnergyResource(eloverblik_url="http://127.0.0.1:9", eloverblik_token="x")
    with dg.build_schedule_context(resources={"energy": configured}) as context:
        assert isinstance(energy_import_schedule(context), dg.RunRequest)
    with dg.build_schedule_context() as context:
        request = energy_nightly_disclosures_schedule(context)
    assert request.run_config == {"ops": {"energy__disclosures": {"config": {"all": True}}}}
    assert defs.resolve_job_def("energy_disclosures_job") is not None
