"""The metering-point and measurement imports against stand-in ElOverblik and EnergyTypeService
servers, on a database of their own: the legacy's counts, GGO rules, idempotence, isolation of a
failing point, token reuse, and the webhooks they queue and send."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.eloverblik import EloverblikStandIn, EnergyTypeStandIn
from ecr_pipelines.dev.standins.webhooks import WebhookReceiver
from ecr_pipelines.energy import webhooks
from ecr_pipelines.energy.eloverblik import EloverblikClient
from ecr_pipelines.energy.energytypes import EnergyTypeClient
from ecr_pipelines.energy.stages import measurements, meteringpoints
from ecr_pipelines.energy.stages.measurements import ImportSettings
from ecr_pipelines.lib.http import make_session
from ecr_pipelines_tests.conftest import own_migrated_engine

FIRST = datetime(2019, 1, 1, tzinfo=UTC)
LAST = datetime(2019, 2, 1, tzinfo=UTC)
SETTINGS = ImportSettings(first=FIRST, last=LAST, workers=2)
GSRN1 = "269841726498172468"  # the recordings' producer
GSRN2 = "198498465435784984"  # and consumer
TABLES = (
    "energy.webhook_delivery, energy.webhook_subscription, energy.disclosure, energy.ggo, energy.measurement, "
    "energy.meteringpoint, energy.customer"
)


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[sa.Engine]:
    with own_migrated_engine(pg_server_url, "energy_import") as engine:
        yield engine


@pytest.fixture
def empty(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    return engine


@pytest.fixture
def upstream(standin: StandInServer) -> tuple[EloverblikStandIn, EnergyTypeStandIn]:
    eloverblik, types = EloverblikStandIn(standin), EnergyTypeStandIn(standin)
    eloverblik.serve_recording("imported_timeseries_data_gsrn1.json")
    eloverblik.serve_recording("imported_timeseries_data_gsrn2.json")
    types.set_type(GSRN1, "T010101", "F01040100")
    types.set_emissions(GSRN1)
    return eloverblik, types


def clients(
    upstream: tuple[EloverblikStandIn, EnergyTypeStandIn],
) -> tuple[EloverblikClient, EnergyTypeClient]:
    eloverblik, types = upstream
    session = make_session(retries=1, backoff=0)
    env = {**eloverblik.env(), **types.env()}
    return (
        EloverblikClient(session, env["ELOVERBLIK_SERVICE_URL"], env["ELOVERBLIK_TOKEN"]),
        EnergyTypeClient(session, env["ENERGY_TYPE_SERVICE_URL"]),
    )


def legacy_points(conn: sa.Connection) -> None:
    """Two legacy rows, legacy columns only (as an import from the legacy database would give)."""
    conn.exec_driver_sql(
        "INSERT INTO energy.meteringpoint (sub, gsrn, type, sector, technology_code, fuel_code) VALUES "
        f"('alice', '{GSRN1}', 'PRODUCTION', 'DK1', 'T010101', 'F01040100'), "
        f"('alice', '{GSRN2}', 'CONSUMPTION', 'DK1', NULL, NULL)"
    )


def counts(conn: sa.Connection, gsrn: str) -> tuple[int, int, datetime, datetime]:
    return conn.execute(
        sa.text(
            "SELECT count(m.id), count(g.id), min(m.begin), max(m.begin) FROM energy.measurement m "
            "LEFT JOIN energy.ggo g ON g.measurement_id = m.id WHERE m.gsrn = :g"
        ),
        {"g": gsrn},
    ).one()


def test_the_legacys_counts_and_a_second_run_adds_nothing(empty: sa.Engine, upstream) -> None:  # type: ignore[no-untyped-def]
    with empty.begin() as conn:
        legacy_points(conn)
        # The legacy test's one stored hour (with its GGO): the import resumes after it.
        measurement_id = conn.exec_driver_sql(
            f"INSERT INTO energy.measurement (gsrn, begin, \"end\", amount, published) VALUES ('{GSRN1}', "
            "'2019-01-05T23:00Z', '2019-01-06T00:00Z', 1000, true) RETURNING id"
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO energy.ggo (issue_time, expire_time, measurement_id) VALUES (now(), now(), :m)"
            ),
            {"m": measurement_id},
        )
    client, types = clients(upstream)
    now = datetime(2026, 12, 2, 8, tzinfo=UTC)
    report = measurements.import_due(empty, client, types, SETTINGS, now=now)
    assert report.errors == 0 and report.counts["measurements"] == 623 + 743
    with empty.connect() as conn:
        first_hour, last_hour = datetime(2019, 1, 5, 23, tzinfo=UTC), datetime(2019, 1, 31, 22, tzinfo=UTC)
        assert counts(conn, GSRN1) == (624, 624, first_hour, last_hour)
        assert counts(conn, GSRN2) == (743, 0, FIRST, last_hour)
        ggo = conn.execute(
            sa.text(
                "SELECT g.issue_time, g.expire_time, g.emissions FROM energy.ggo g "
                "JOIN energy.measurement m ON m.id = g.measurement_id WHERE m.begin = '2019-01-10T00:00Z'"
            )
        ).one()
        assert ggo.issue_time == now and ggo.expire_time == now + timedelta(days=90)
        assert ggo.emissions == EnergyTypeStandIn.default_emissions
        assert conn.exec_driver_sql("SELECT bool_and(published) FROM energy.measurement").scalar()
        assert (
            conn.exec_driver_sql("SELECT count(*) FROM energy.meteringpoint WHERE measured IS NULL").scalar()
            == 0
        )
    eloverblik, energy_types = upstream
    assert eloverblik.token_calls == 1  # one access token for the whole run
    assert energy_types.calls("/get-emissions", GSRN1) == 1

    again = measurements.import_due(empty, client, types, SETTINGS, now=now)
    assert again.counts.get("measurements", 0) == 0 and again.errors == 0
    with empty.connect() as conn:
        assert counts(conn, GSRN1)[:2] == (624, 624) and counts(conn, GSRN2)[:2] == (743, 0)


def test_one_failing_point_never_stops_the_others(empty: sa.Engine, upstream) -> None:  # type: ignore[no-untyped-def]
    eloverblik, _ = upstream
    eloverblik.fail_gsrn(GSRN1, status=500, times=1)
    with empty.begin() as conn:
        legacy_points(conn)
    client, types = clients(upstream)
    report = measurements.import_due(empty, client, types, SETTINGS)
    assert report.errors_by_class == {"http_status": 1} and report.stopped is None
    with empty.connect() as conn:
        assert counts(conn, GSRN1)[0] == 0 and counts(conn, GSRN2)[0] == 743
        error = conn.execute(
            sa.text("SELECT measure_error_kind, measure_error FROM energy.meteringpoint WHERE gsrn = :g"),
            {"g": GSRN1},
        ).one()
        assert error.measure_error_kind == "http_status" and "500" in error.measure_error
    # The next run takes it again and clears the error.
    measurements.import_due(empty, client, types, SETTINGS)
    with empty.connect() as conn:
        assert counts(conn, GSRN1)[:2] == (743, 743)
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM energy.meteringpoint WHERE measure_error IS NOT NULL"
            ).scalar()
            == 0
        )


def test_points_without_codes_and_zero_hours_get_no_ggos_and_mwh_counts_right(
    empty: sa.Engine, upstream
) -> None:  # type: ignore[no-untyped-def]
    eloverblik, types = upstream
    eloverblik.serve_synthetic("1", quantity=lambda gsrn, hour: "0" if hour.hour < 12 else "0.5", unit="MWH")
    eloverblik.serve_synthetic("2", quantity="1")
    eloverblik.serve_null("3")
    types.set_type("1", "T020000", "F01050100")
    with empty.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO energy.meteringpoint (sub, gsrn, type, sector, technology_code, fuel_code) VALUES "
            "('bob', '1', 'PRODUCTION', 'DK2', 'T020000', 'F01050100'), ('bob', '2', 'PRODUCTION', 'DK2', NULL, NULL), "
            "('bob', '3', 'CONSUMPTION', 'DK2', NULL, NULL)"
        )
    settings = ImportSettings(first=datetime(2019, 3, 30, tzinfo=UTC), last=datetime(2019, 4, 1, tzinfo=UTC))
    client, energy_types = clients(upstream)
    report = measurements.import_due(empty, client, energy_types, settings)
    assert report.errors == 0
    with empty.connect() as conn:
        # 2019-03-31 is 23 hours long in Denmark, but the window counts UTC hours: 48 of them.
        assert counts(conn, "1")[:2] == (48, 24)
        assert (
            conn.exec_driver_sql("SELECT max(amount) FROM energy.measurement WHERE gsrn = '1'").scalar()
            == 500_000
        )
        assert counts(conn, "2")[:2] == (48, 0)
        assert counts(conn, "3")[0] == 0


def test_onboarding_imports_points_and_sends_signed_webhooks(
    empty: sa.Engine, upstream, standin: StandInServer
) -> None:  # type: ignore[no-untyped-def]
    eloverblik, types = upstream
    raw = eloverblik.recorded_meteringpoints()
    raw.append(eloverblik.meteringpoint("999", type_of_mp="D07", postcode="2100"))
    raw.append(eloverblik.meteringpoint("888", type_of_mp="E17", postcode="2100"))
    eloverblik.add_customer("carol", raw)
    production, consumption = raw[0]["meteringPointId"], raw[1]["meteringPointId"]
    types.set_type(production, "T020000", "F01050100")
    receiver = WebhookReceiver(standin)
    receiver.set_secret("hub", "s3cret")
    with empty.begin() as conn:
        for event in ("ON_METERINGPOINT_AVAILABLE", "ON_MEASUREMENT_PUBLISHED", "ON_GGOS_ISSUED"):
            webhooks.subscribe(conn, event, "carol", receiver.url("hub"), "s3cret")
        meteringpoints.onboard(conn, "carol")
    client, energy_types = clients(upstream)
    report = meteringpoints.import_due(empty, client, energy_types)
    assert report.kinds == {"partial": 1} and report.errors_by_class == {"refused_type": 1}
    with empty.connect() as conn:
        points = conn.exec_driver_sql(
            "SELECT gsrn, type::text, sector, technology_code FROM energy.meteringpoint ORDER BY gsrn"
        ).all()
        customer = conn.exec_driver_sql(
            "SELECT imports_done, next_import, onboarded, error FROM energy.customer"
        ).one()
    # Child points are not imported; the D07 point is refused with its reason; DK1 from postcode 7000.
    assert [tuple(p) for p in points] == sorted(
        [
            (production, "PRODUCTION", "DK1", "T020000"),
            (consumption, "CONSUMPTION", "DK1", None),
            ("888", "CONSUMPTION", "DK2", None),
        ]
    )
    assert customer.imports_done == 1 and customer.next_import == customer.onboarded + timedelta(minutes=10)
    assert "999" in customer.error
    webhooks.send_due(empty, make_session(retries=0))
    bodies = [json.loads(r.body) for r in receiver.received("hub")]
    assert sorted(b["meteringpoint"]["gsrn"] for b in bodies) == sorted([production, consumption, "888"])
    assert receiver.all_signed()

    # A fallback import finds nothing new and sends nothing again.
    with empty.begin() as conn:
        conn.exec_driver_sql("UPDATE energy.customer SET next_import = now()")
    meteringpoints.import_due(empty, client, energy_types)
    webhooks.send_due(empty, make_session(retries=0))
    assert len(receiver.received("hub")) == 3


def test_a_production_point_gets_its_codes_and_webhook_when_the_service_knows_them(
    empty: sa.Engine, upstream, standin: StandInServer
) -> None:  # type: ignore[no-untyped-def]
    eloverblik, types = upstream
    eloverblik.add_customer("dave", [eloverblik.meteringpoint("777", type_of_mp="E18", postcode="4000")])
    receiver = WebhookReceiver(standin)
    with empty.begin() as conn:
        webhooks.subscribe(conn, "ON_METERINGPOINT_AVAILABLE", "dave", receiver.url("d"), None)
        meteringpoints.onboard(conn, "dave")
    client, energy_types = clients(upstream)
    meteringpoints.import_due(empty, client, energy_types)
    webhooks.send_due(empty, make_session(retries=0))
    assert receiver.received("d") == []
    with empty.connect() as conn:
        assert conn.exec_driver_sql("SELECT energy_type_error FROM energy.meteringpoint").scalar()
    types.set_type("777", "T010000", "F01040100")
    with empty.begin() as conn:
        conn.exec_driver_sql("UPDATE energy.customer SET next_import = now()")
    meteringpoints.import_due(empty, client, energy_types)
    webhooks.send_due(empty, make_session(retries=0))
    [received] = receiver.received("d")
    assert json.loads(received.body)["meteringpoint"]["technologyCode"] == "T010000"


def test_the_fallback_imports_follow_onboarding() -> None:
    onboarded = datetime(2026, 1, 1, 12, tzinfo=UTC)
    steps = [meteringpoints.next_import(onboarded, done, onboarded) for done in range(1, 7)]
    assert (
        steps[:5] == [onboarded + timedelta(minutes=m) for m in (10, 30, 60, 120, 360)] and steps[5] is None
    )
    # A late import skips the steps already past.
    assert meteringpoints.next_import(onboarded, 1, onboarded + timedelta(hours=3)) == onboarded + timedelta(
        hours=6
    )
