"""The energy hub's webhooks: subscriptions, queueing, the legacy's exact signed bodies, delivery.

Rows are inserted by SQL into a migrated database of this module's own; deliveries go over a real
socket to a ``WebhookReceiver`` on the ``standin`` server, which checks each signature on its own.
Time is injected (``now``), never waited for.
"""

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.webhooks import WebhookReceiver
from ecr_pipelines.energy import webhooks
from ecr_pipelines.energy.webhooks import WebhookEvent
from ecr_pipelines_tests.conftest import own_migrated_engine

SUB = "user-1"
GSRN = "571313000000000001"
GSRN2 = "571313000000000002"
BEGIN = datetime(2019, 1, 1, tzinfo=UTC)
ISSUED = datetime(2020, 6, 9, 10, 5, 27, 123456, tzinfo=UTC)

# The legacy's bytes: json.dumps defaults, its field order, non-ASCII escaped, JSONB key order.
MEASUREMENT_BODY = (
    '{"sub": "user-1", "measurement": {"address": null, "begin": "2019-01-01T00:00:00+00:00", '
    '"end": "2019-01-01T01:00:00+00:00", "amount": 1234, "gsrn": "571313000000000001", '
    '"sector": "DK1", "type": "production"}}'
)
CONSUMPTION_BODY = (
    '{"sub": "user-1", "measurement": {"address": null, "begin": "2019-01-01T00:00:00+00:00", '
    '"end": "2019-01-01T01:00:00+00:00", "amount": 500, "gsrn": "571313000000000002", '
    '"sector": "DK2", "type": "consumption"}}'
)
GGO_BODY = (
    '{"sub": "user-1", "ggo": {"address": null, "begin": "2019-01-01T00:00:00+00:00", '
    '"end": "2019-01-01T01:00:00+00:00", "amount": 1234, "gsrn": "571313000000000001", '
    '"sector": "DK1", "issueTime": "2020-06-09 10:05:27.123456+00:00", '
    '"expireTime": "2020-09-07 10:05:27.123456+00:00", "technologyCode": "T020000", '
    '"fuelCode": "F01050100", "emissions": {"ch4": 0.1, "co2": 12.5}}}'
)
METERINGPOINT_BODY = (
    '{"sub": "user-1", "meteringpoint": {"gsrn": "571313000000000001", "type": "production", '
    '"sector": "DK1", "technologyCode": "T020000", "fuelCode": "F01050100", "streetCode": "0042", '
    '"streetName": "Vindvej", "buildingNumber": "7", "cityName": "\\u00c5rhus C", "postCode": "8000", '
    '"municipalityCode": "751"}}'
)


@pytest.fixture(scope="module")
def module_engine(pg_server_url: str) -> Iterator[sa.Engine]:
    with own_migrated_engine(pg_server_url, "energy_webhooks") as engine:
        yield engine


@pytest.fixture
def engine(module_engine: sa.Engine) -> sa.Engine:
    with module_engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE energy.webhook_delivery, energy.webhook_subscription, energy.ggo, energy.measurement, "
            "energy.meteringpoint RESTART IDENTITY CASCADE"
        )
    return module_engine


@pytest.fixture
def receiver(standin: StandInServer) -> WebhookReceiver:
    return WebhookReceiver(standin)


def add_point(
    conn: sa.Connection, gsrn: str = GSRN, sub: str = SUB, kind: str = "PRODUCTION", key: str | None = None
) -> int:
    production = kind == "PRODUCTION"
    return conn.execute(
        sa.text(
            "INSERT INTO energy.meteringpoint (sub, gsrn, type, sector, technology_code, fuel_code, street_code,"
            " street_name, building_number, city_name, postcode, municipality_code, ledger_extended_key)"
            " VALUES (:sub, :gsrn, :kind, :sector, :tech, :fuel, '0042', 'Vindvej', '7', :city, :postcode,"
            " '751', :key) RETURNING id"
        ),
        {
            "sub": sub,
            "gsrn": gsrn,
            "kind": kind,
            "sector": "DK1" if production else "DK2",
            "tech": "T020000" if production else None,
            "fuel": "F01050100" if production else None,
            "city": "Århus C" if production else "København K",
            "postcode": "8000" if production else "1000",
            "key": key,
        },
    ).scalar_one()


def add_measurement(
    conn: sa.Connection, gsrn: str = GSRN, begin: datetime = BEGIN, amount: int = 1234
) -> int:
    return conn.execute(
        sa.text(
            'INSERT INTO energy.measurement (gsrn, begin, "end", amount, published)'
            " VALUES (:gsrn, :begin, :end, :amount, true) RETURNING id"
        ),
        {"gsrn": gsrn, "begin": begin, "end": begin + timedelta(hours=1), "amount": amount},
    ).scalar_one()


def add_ggo(conn: sa.Connection, measurement_id: int) -> int:
    # Emissions in another key order than JSONB keeps them: the body has JSONB's, as the legacy's.
    return conn.execute(
        sa.text(
            "INSERT INTO energy.ggo (issue_time, expire_time, measurement_id, emissions)"
            ' VALUES (:issued, :expires, :m, CAST(\'{"co2": 12.5, "ch4": 0.1}\' AS jsonb)) RETURNING id'
        ),
        {"issued": ISSUED, "expires": ISSUED + timedelta(days=90), "m": measurement_id},
    ).scalar_one()


def queue(engine: sa.Engine, measurement_ids: list[int]) -> tuple[int, int]:
    """What the measurement import does: its new ids in a temporary table, queued in its transaction."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE new_measurement (id bigint) ON COMMIT DROP")
        conn.execute(
            sa.text("INSERT INTO new_measurement (id) VALUES (:id)"), [{"id": i} for i in measurement_ids]
        )
        return webhooks.queue_measurement_events(conn)


def deliveries(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT id, event::text AS event, status, attempts, created, next_attempt, sent, error, error_kind"
                    " FROM energy.webhook_delivery ORDER BY id"
                )
            )
        )


def created_at(engine: sa.Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT max(created) FROM energy.webhook_delivery")).scalar_one()


def test_signature_is_base64_hmac_sha256_and_a_null_secret_is_empty() -> None:
    # Values from `openssl dgst -sha256 -hmac <secret> -binary | base64`.
    assert webhooks.sign("secret", b'{"a": 1}') == "sha256=nvoUoYQQpXpDL78M441LwzM5A2pk5XuMhtoLseEi2XI="
    assert webhooks.sign(None, b'{"a": 1}') == "sha256=HDiOBQoAgUxwNSoK8D+8oEn8NJ686KTfHOOEM3Fa7tI="
    assert webhooks.sign("", b'{"a": 1}') == webhooks.sign(None, b'{"a": 1}')


def test_subscribe_adds_once_and_unsubscribe_needs_all_four_values(engine: sa.Engine) -> None:
    event = WebhookEvent.ON_MEASUREMENT_PUBLISHED
    with engine.begin() as conn:
        assert webhooks.subscribe(conn, event, SUB, "http://a/hook", "s1")
        assert not webhooks.subscribe(conn, event, SUB, "http://a/hook", "s1")
        assert webhooks.subscribe(conn, event, SUB, "http://a/hook", "s2")
        assert webhooks.subscribe(conn, event, SUB, "http://a/hook", None)
        assert not webhooks.subscribe(conn, "ON_MEASUREMENT_PUBLISHED", SUB, "http://a/hook", None)
        assert webhooks.subscribe(conn, WebhookEvent.ON_GGOS_ISSUED, SUB, "http://a/hook", "s1")
        assert conn.execute(sa.text("SELECT count(*) FROM energy.webhook_subscription")).scalar_one() == 4

        assert not webhooks.unsubscribe(conn, event, SUB, "http://a/hook", "wrong")
        assert not webhooks.unsubscribe(conn, event, "user-2", "http://a/hook", "s1")
        assert not webhooks.unsubscribe(conn, event, SUB, "http://b/hook", "s1")
        assert webhooks.unsubscribe(conn, event, SUB, "http://a/hook", "s1")
        assert not webhooks.unsubscribe(conn, event, SUB, "http://a/hook", "s1")
        assert webhooks.unsubscribe(conn, event, SUB, "http://a/hook", None)
        left = conn.execute(
            sa.text("SELECT event::text, secret FROM energy.webhook_subscription ORDER BY id")
        ).all()
    assert [tuple(r) for r in left] == [("ON_MEASUREMENT_PUBLISHED", "s2"), ("ON_GGOS_ISSUED", "s1")]


def test_unsubscribing_drops_the_queued_deliveries(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        point = add_point(conn)
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, "http://a/hook", "s")
        assert webhooks.queue_meteringpoints_available(conn, [point]) == 1
        assert webhooks.unsubscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, "http://a/hook", "s")
        assert webhooks.delivery_counts(conn) == {"queued": 0, "sent": 0, "dead": 0}


def test_nothing_is_queued_without_a_subscription(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        point = add_point(conn)
        measurement = add_measurement(conn)
        add_ggo(conn, measurement)
    assert queue(engine, [measurement]) == (0, 0)
    with engine.begin() as conn:
        # Subscriptions of someone else, and to other events, do not count either.
        webhooks.subscribe(conn, WebhookEvent.ON_MEASUREMENT_PUBLISHED, "user-2", "http://a/hook", "s")
        webhooks.subscribe(conn, WebhookEvent.ON_GGOS_ISSUED, "user-2", "http://a/hook", "s")
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, "user-2", "http://a/hook", "s")
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINTS_AVAILABLE, SUB, "http://a/hook", "s")
    assert queue(engine, [measurement]) == (0, 0)
    with engine.begin() as conn:
        assert webhooks.queue_meteringpoints_available(conn, [point]) == 0
        assert webhooks.queue_meteringpoints_available(conn, []) == 0
        # The point is marked as announced all the same.
        stamped = conn.execute(sa.text("SELECT available_queued FROM energy.meteringpoint")).scalar_one()
        assert stamped is not None
        assert webhooks.delivery_counts(conn) == {"queued": 0, "sent": 0, "dead": 0}


def test_a_bad_table_name_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="not a table name"):
        webhooks.queue_measurement_events(conn, "new_measurement; DROP TABLE x")


def test_delivers_the_legacy_bytes_signed(engine: sa.Engine, receiver: WebhookReceiver) -> None:
    for name, secret in (("measurements", "m-secret"), ("ggos", "g-secret"), ("points", None)):
        receiver.set_secret(name, secret)
    with engine.begin() as conn:
        point = add_point(conn)
        add_point(conn, GSRN2, kind="CONSUMPTION")
        produced = add_measurement(conn)
        consumed = add_measurement(conn, GSRN2, amount=500)
        add_ggo(conn, produced)
        webhooks.subscribe(
            conn, WebhookEvent.ON_MEASUREMENT_PUBLISHED, SUB, receiver.url("measurements"), "m-secret"
        )
        webhooks.subscribe(conn, WebhookEvent.ON_GGOS_ISSUED, SUB, receiver.url("ggos"), "g-secret")
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, receiver.url("points"), None)
        assert webhooks.queue_meteringpoints_available(conn, [point]) == 1
    assert queue(engine, [produced, consumed]) == (2, 1)

    with webhooks.make_webhook_session() as session:
        report = webhooks.send_due(engine, session)
    assert (report.sent, report.failed, report.dead, report.remaining_due) == (4, 0, 0, 0)

    assert receiver.all_signed()
    assert sorted(r.body.decode() for r in receiver.received("measurements")) == sorted(
        [MEASUREMENT_BODY, CONSUMPTION_BODY]
    )
    assert [r.body.decode() for r in receiver.received("ggos")] == [GGO_BODY]
    assert [r.body.decode() for r in receiver.received("points")] == [METERINGPOINT_BODY]
    got = receiver.received("points")[0]
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-hub-signature"] == webhooks.sign(None, METERINGPOINT_BODY.encode())
    assert got.json["meteringpoint"]["cityName"] == "Århus C"

    rows = deliveries(engine)
    assert {(r.status, r.attempts, r.error) for r in rows} == {("sent", 1, None)}
    assert all(r.sent is not None for r in rows)
    with engine.connect() as conn:
        assert webhooks.delivery_counts(conn) == {"queued": 0, "sent": 4, "dead": 0}
    # Sent once: nothing is due any more.
    with webhooks.make_webhook_session() as session:
        assert webhooks.send_due(engine, session).sent == 0
    assert len(receiver.received()) == 4


def test_bodies_are_utc_whatever_the_session_zone_and_take_injected_addresses(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, key="xprv-key")
        produced = add_measurement(conn)
        add_ggo(conn, produced)
        webhooks.subscribe(conn, WebhookEvent.ON_MEASUREMENT_PUBLISHED, SUB, "http://a/m", "s")
        webhooks.subscribe(conn, WebhookEvent.ON_GGOS_ISSUED, SUB, "http://a/g", "s")
    queue(engine, [produced])
    calls: list[tuple[str | None, str, datetime]] = []

    def address_of(key: str | None, prefix: str, begin: datetime) -> str:
        calls.append((key, prefix, begin))
        return f"{prefix.lower()}-address"

    with engine.connect() as conn:
        conn.exec_driver_sql("SET TIME ZONE 'Europe/Copenhagen'")
        bodies = webhooks.build_bodies(conn, [r.id for r in deliveries(engine)], address_of)
    assert list(bodies.values()) == [
        MEASUREMENT_BODY.replace('"address": null', '"address": "measurement-address"').encode(),
        GGO_BODY.replace('"address": null', '"address": "ggo-address"').encode(),
    ]
    assert calls == [("xprv-key", "MEASUREMENT", BEGIN), ("xprv-key", "GGO", BEGIN)]
    assert all(begin.utcoffset() == timedelta(0) for _, _, begin in calls)


def test_a_failed_attempt_is_retried_60_seconds_later(engine: sa.Engine, receiver: WebhookReceiver) -> None:
    receiver.set_secret("points", "s")
    receiver.fail("points", 500, times=1)
    with engine.begin() as conn:
        point = add_point(conn)
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, receiver.url("points"), "s")
        webhooks.queue_meteringpoints_available(conn, [point])
    now = created_at(engine) + timedelta(seconds=1)

    with webhooks.make_webhook_session() as session:
        report = webhooks.send_due(engine, session, now=now)
        assert (report.sent, report.failed, report.dead) == (0, 1, 0)
        [row] = deliveries(engine)
        assert (row.status, row.attempts, row.error_kind) == ("queued", 1, "http_status")
        assert row.error.startswith("HTTP 500")
        assert row.next_attempt == now + timedelta(seconds=60)
        assert report.errors == [(row.id, "http_status", row.error)]

        assert webhooks.send_due(engine, session, now=now + timedelta(seconds=59)).sent == 0
        assert len(receiver.received("points")) == 1

        report = webhooks.send_due(engine, session, now=now + timedelta(seconds=60))
    assert report.sent == 1
    [row] = deliveries(engine)
    assert (row.status, row.attempts, row.error, row.error_kind) == ("sent", 2, None, None)
    assert row.sent == now + timedelta(seconds=60)
    assert [r.status for r in receiver.received("points")] == [500, 200]
    assert receiver.received("points")[0].body == receiver.received("points")[1].body
    assert receiver.all_signed()


def test_only_200_is_success_and_a_refused_connection_is_a_failure(
    engine: sa.Engine, receiver: WebhookReceiver
) -> None:
    receiver.fail("created", 201, times=None)
    # A bound socket that does not listen: connections to it are refused, and the port stays ours.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
        with engine.begin() as conn:
            point = add_point(conn)
            webhooks.subscribe(
                conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, receiver.url("created"), None
            )
            webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, dead_url, None)
            webhooks.queue_meteringpoints_available(conn, [point])
        with webhooks.make_webhook_session() as session:
            report = webhooks.send_due(engine, session, now=created_at(engine))
    assert (report.sent, report.failed) == (0, 2)
    kinds = {r.error_kind for r in deliveries(engine)}
    assert kinds == {"http_status", "connection"}
    assert {r.status for r in deliveries(engine)} == {"queued"}


def test_gives_up_24_hours_after_created(engine: sa.Engine, receiver: WebhookReceiver) -> None:
    receiver.fail("points", 503, times=None)
    with engine.begin() as conn:
        point = add_point(conn)
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, receiver.url("points"), None)
        webhooks.queue_meteringpoints_available(conn, [point])
    created = created_at(engine)

    with webhooks.make_webhook_session() as session:
        # The next attempt would be exactly 24 h after created: still tried then.
        report = webhooks.send_due(engine, session, now=created + timedelta(hours=24, seconds=-60))
        assert (report.failed, report.dead) == (1, 0)
        [row] = deliveries(engine)
        assert (row.status, row.next_attempt) == ("queued", created + timedelta(hours=24))
        # That attempt fails too, and another would be later than 24 h: dead.
        report = webhooks.send_due(engine, session, now=created + timedelta(hours=24))
        assert (report.failed, report.dead, report.remaining_due) == (0, 1, 0)
        [row] = deliveries(engine)
        assert (row.status, row.attempts, row.error_kind) == ("dead", 2, "http_status")
        # Dead rows are never sent again.
        assert webhooks.send_due(engine, session, now=created + timedelta(days=2)).dead == 0
    assert len(receiver.received("points")) == 2


def test_a_delivery_with_nothing_to_send_is_dead_at_once(
    engine: sa.Engine, receiver: WebhookReceiver
) -> None:
    with engine.begin() as conn:
        point = add_point(conn)
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINTS_AVAILABLE, SUB, receiver.url("old"), None)
        # An old row of the plural event, which nothing sends any more.
        conn.execute(
            sa.text(
                "INSERT INTO energy.webhook_delivery (subscription_id, event, meteringpoint_id)"
                " VALUES (1, 'ON_METERINGPOINTS_AVAILABLE', :p)"
            ),
            {"p": point},
        )
    with webhooks.make_webhook_session() as session:
        report = webhooks.send_due(engine, session)
    assert (report.sent, report.failed, report.dead) == (0, 0, 1)
    [row] = deliveries(engine)
    assert (row.status, row.attempts, row.error_kind) == ("dead", 0, "no_body")
    assert receiver.received() == []


def test_two_concurrent_senders_never_deliver_one_row_twice(
    engine: sa.Engine, receiver: WebhookReceiver
) -> None:
    with engine.begin() as conn:
        add_point(conn)
        ids = [add_measurement(conn, begin=BEGIN + timedelta(hours=h)) for h in range(40)]
        webhooks.subscribe(conn, WebhookEvent.ON_MEASUREMENT_PUBLISHED, SUB, receiver.url("m"), None)
    assert queue(engine, ids) == (40, 0)
    now = created_at(engine)
    start = threading.Barrier(2)
    sent: list[int] = []

    def sender() -> None:
        with webhooks.make_webhook_session() as session:
            start.wait()
            while True:
                report = webhooks.send_due(engine, session, now=now, limit=3, workers=2)
                sent.append(report.sent)
                if report.sent + report.failed + report.dead == 0:
                    break

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bodies = [r.body for r in receiver.received("m")]
    assert len(bodies) == 40
    assert len(set(bodies)) == 40
    assert sum(sent) == 40
    assert {(r.status, r.attempts) for r in deliveries(engine)} == {("sent", 1)}


def test_a_first_attempt_past_the_deadline_is_the_last(engine: sa.Engine, receiver: WebhookReceiver) -> None:
    receiver.fail("points", 500, times=None)
    with engine.begin() as conn:
        point = add_point(conn)
        webhooks.subscribe(conn, WebhookEvent.ON_METERINGPOINT_AVAILABLE, SUB, receiver.url("points"), None)
        webhooks.queue_meteringpoints_available(conn, [point])
    with webhooks.make_webhook_session() as session:
        report = webhooks.send_due(engine, session, now=created_at(engine) + timedelta(hours=25))
    assert (report.failed, report.dead) == (0, 1)
    [row] = deliveries(engine)
    assert (row.status, row.attempts) == ("dead", 1)
