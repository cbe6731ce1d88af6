"""Disclosures: create, compile against the ledger stand-in into a local blob store, and the
public view's rules (resolution, labels, offsets, ranges, per point or anonymised)."""

import json
import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa
from bip32 import BIP32

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ledger import LedgerStandIn
from ecr_pipelines.energy.disclosure import (
    DisclosureRefused,
    choose_resolution,
    disclosure_key,
    disclosure_view,
    labels,
    span_resolution,
    technology_label,
)
from ecr_pipelines.energy.ledger import SETTLEMENT, address_of
from ecr_pipelines.energy.stages.disclosures import STAGE, compile_due, create_disclosure, delete_disclosure
from ecr_pipelines.lib.batch import has_due
from ecr_pipelines.lib.blobstore import BlobStore, LocalBlobStore, open_blob_store
from ecr_pipelines.lib.http import make_session
from ecr_pipelines_tests.conftest import own_migrated_engine

KEY_A = BIP32.from_seed(bytes(32)).get_xpriv()
KEY_B = BIP32.from_seed(bytes([1] * 32)).get_xpriv()
DAY1 = datetime(2024, 1, 1, tzinfo=UTC)
WIND = ("T020000", "F01050100")
UNKNOWN = ("T999999", "F99999999")
GSRN_A = "571313000000000001"
GSRN_B = "571313000000000002"


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[sa.Engine]:
    with own_migrated_engine(pg_server_url, "t_energy_disclosures") as engine:
        yield engine


@pytest.fixture(autouse=True)
def _clean(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE energy.disclosure_ggo, energy.disclosure_settlement, energy.disclosure_meteringpoint, "
            "energy.disclosure, energy.measurement, energy.meteringpoint RESTART IDENTITY CASCADE"
        )


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return open_blob_store(str(tmp_path / "blobs"))


@pytest.fixture
def ledger(standin: StandInServer) -> LedgerStandIn:
    return LedgerStandIn(standin)


SESSION = make_session(retries=0, connect_timeout=2, read_timeout=5)


# -- helpers ----------------------------------------------------------------------------------------


def add_point(
    conn: sa.Connection,
    gsrn: str,
    *,
    sub: str = "alice",
    type: str = "CONSUMPTION",
    disabled: bool = False,
    key: str | None = None,
    street: str = "Vej",
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO energy.meteringpoint (sub, gsrn, type, sector, disabled, ledger_extended_key, "
            "street_name, building_number, postcode, city_name) "
            "VALUES (:sub, :gsrn, CAST(:type AS energy.measurementtype), 'DK1', :disabled, :key, "
            ":street, '1', '8000', 'Aarhus C')"
        ),
        {"sub": sub, "gsrn": gsrn, "type": type, "disabled": disabled, "key": key, "street": street},
    )


def add_hours(
    conn: sa.Connection, gsrn: str, start: datetime, amounts: list[int], *, published: bool = True
) -> None:
    conn.execute(
        sa.text(
            'INSERT INTO energy.measurement (gsrn, begin, "end", amount, published) '
            "VALUES (:gsrn, :begin, :end, :amount, :published)"
        ),
        [
            {
                "gsrn": gsrn,
                "begin": start + timedelta(hours=n),
                "end": start + timedelta(hours=n + 1),
                "amount": amount,
                "published": published,
            }
            for n, amount in enumerate(amounts)
        ],
    )


def request(
    gsrn: list[str], begin: str = "2024-01-01", end: str = "2024-01-02", **extra: Any
) -> dict[str, Any]:
    return {
        "name": "Our consumption",
        "description": "A year of it",
        "begin": begin,
        "end": end,
        "maxResolution": "hour",
        "publicizeMeteringpoints": False,
        "publicizeGsrn": False,
        "publicizePhysicalAddress": False,
        "gsrn": gsrn,
        **extra,
    }


def create(engine: sa.Engine, gsrn: list[str], **kwargs: Any) -> str:
    with engine.begin() as conn:
        return create_disclosure(conn, "alice", request(gsrn, **kwargs))


def retire(
    conn: sa.Connection, public_id: str, gsrn: str, begin: datetime, ggos: list[tuple[int, tuple[str, str]]]
) -> None:
    """A settlement of the measurement of ``gsrn`` at ``begin`` with retired GGOs, as a compile
    would have recorded it."""
    settlement = conn.execute(
        sa.text(
            "INSERT INTO energy.disclosure_settlement (disclosure_id, measurement_id, address) "
            "SELECT d.id, m.id, :address FROM energy.disclosure d, energy.measurement m "
            "WHERE d.public_id = :public_id AND m.gsrn = :gsrn AND m.begin = :begin RETURNING id"
        ),
        {
            "public_id": public_id,
            "gsrn": gsrn,
            "begin": begin,
            "address": f"s-{gsrn}-{int(begin.timestamp())}",
        },
    ).scalar_one()
    for n, (amount, (technology, fuel)) in enumerate(ggos):
        conn.execute(
            sa.text(
                'INSERT INTO energy.disclosure_ggo (settlement_id, address, amount, begin, "end", sector, '
                "technology_code, fuel_code) VALUES (:s, :address, :amount, :begin, :end, 'DK1', :t, :f)"
            ),
            {
                "s": settlement,
                "address": f"g-{settlement}-{n}",
                "amount": amount,
                "begin": begin,
                "end": begin + timedelta(hours=1),
                "t": technology,
                "f": fuel,
            },
        )


def disclosure(engine: sa.Engine, public_id: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT state::text AS state, error, error_kind, compiled, blob_key FROM energy.disclosure "
                "WHERE public_id = :p"
            ),
            {"p": public_id},
        ).one()


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM energy.{table}")).scalar_one()


def view(engine: sa.Engine, public_id: str, **kwargs: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return disclosure_view(conn, public_id, **kwargs)


def hour_labels(day: date, days: int = 1) -> list[str]:
    start = datetime(day.year, day.month, day.day)
    return [(start + timedelta(hours=n)).strftime("%Y-%m-%d %H:00") for n in range(24 * days)]


# -- create -----------------------------------------------------------------------------------------


def test_create_inserts_a_pending_disclosure_with_its_points(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_point(conn, GSRN_B)
    public_id = create(engine, [GSRN_B, GSRN_A, GSRN_B], maxResolution="day", publicizeGsrn=True)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                'SELECT state::text, sub, begin, "end", name, max_resolution::text, publicize_gsrn, '
                "publicize_meteringpoints FROM energy.disclosure WHERE public_id = :p"
            ),
            {"p": public_id},
        ).one()
        points = conn.execute(
            sa.text("SELECT gsrn FROM energy.disclosure_meteringpoint ORDER BY gsrn")
        ).scalars()
        assert tuple(row) == (
            "PENDING",
            "alice",
            date(2024, 1, 1),
            date(2024, 1, 2),
            "Our consumption",
            "day",
            True,
            False,
        )
        assert list(points) == [GSRN_A, GSRN_B]
        assert has_due(conn, STAGE)


@pytest.mark.parametrize(
    ("gsrn", "extra", "message"),
    [
        (["bob-point"], {}, 'GSRN "bob-point" is not available, or is not eligible for disclosure'),
        (["production"], {}, 'GSRN "production" is not available'),
        (["disabled"], {}, 'GSRN "disabled" is not available'),
        (["unknown"], {}, 'GSRN "unknown" is not available'),
        ([GSRN_A, "bob-point"], {}, 'GSRN "bob-point"'),
        ([], {}, "`gsrn` must be a list of at least one GSRN"),
        ([GSRN_A], {"begin": "2024-02-01"}, "must not be after `end`"),
        ([GSRN_A], {"name": "  "}, "`name` must be a non-empty string"),
        ([GSRN_A], {"maxResolution": "week"}, "`maxResolution` must be one of"),
        ([GSRN_A], {"publicizeGsrn": "yes"}, "`publicizeGsrn` must be true or false"),
        ([GSRN_A], {"end": "tomorrow"}, "`end` must be a date"),
        ([GSRN_A], {"colour": "red"}, "unknown fields: colour"),
    ],
)
def test_create_refusals(engine: sa.Engine, gsrn: list[str], extra: dict[str, Any], message: str) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_point(conn, "bob-point", sub="bob")
        add_point(conn, "production", type="PRODUCTION")
        add_point(conn, "disabled", disabled=True)
    with pytest.raises(DisclosureRefused, match=message), engine.begin() as conn:
        create_disclosure(conn, "alice", request(gsrn, **extra))
    assert count(engine, "disclosure") == 0
    assert count(engine, "disclosure_meteringpoint") == 0


def test_delete_removes_the_disclosure_and_its_document(engine: sa.Engine, store: BlobStore) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [1, 2])
    public_id = create(engine, [GSRN_A])
    compile_due(engine, SESSION, store, ledger_url=None)
    assert store.exists(disclosure_key(public_id))
    with engine.begin() as conn:
        assert not delete_disclosure(conn, public_id, sub="bob", store=store)
        assert delete_disclosure(conn, public_id, sub="alice", store=store)
        assert not delete_disclosure(conn, public_id)
    assert not store.exists(disclosure_key(public_id))
    assert count(engine, "disclosure_meteringpoint") == 0


# -- compile ----------------------------------------------------------------------------------------


def settle(
    ledger: LedgerStandIn, key: str, begin: datetime, parts: list[tuple[str, int, tuple[str, str]]]
) -> str:
    """A settlement on the ledger for the hour ``begin`` of the point holding ``key``, retiring
    GGOs ``(address, amount, (technology, fuel))`` of that hour."""
    where = address_of(key, SETTLEMENT, begin)
    assert where is not None
    ledger.put_settlement(where, f"m-{where}", [(ggo, amount) for ggo, amount, _ in parts])
    for ggo, amount, (technology, fuel) in parts:
        ledger.put_ggo(ggo, amount, begin, begin + timedelta(hours=1), "DK1", technology, fuel)
    return where


def test_compile_end_to_end(engine: sa.Engine, store: BlobStore, ledger: LedgerStandIn) -> None:
    amounts = [1000 + n for n in range(48)]
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key=KEY_A)
        add_hours(conn, GSRN_A, DAY1, amounts[:47])
        add_hours(conn, GSRN_A, DAY1 + timedelta(hours=47), [9999], published=False)
        # 00:00 the day after the end: compiled (the legacy's inclusive end), outside every label
        add_hours(conn, GSRN_A, DAY1 + timedelta(days=2), [7])
    public_id = create(engine, [GSRN_A])
    settle(ledger, KEY_A, DAY1, [("g-wind-1", 300, WIND), ("g-unknown-1", 200, UNKNOWN)])
    settle(ledger, KEY_A, DAY1 + timedelta(hours=1), [("g-wind-2", 400, WIND)])
    late = settle(ledger, KEY_A, DAY1 + timedelta(hours=25), [("g-wind-3", 500, WIND)])

    report = compile_due(engine, SESSION, store, ledger_url=ledger.url())

    assert report.kinds == {"compiled": 1} and report.errors == 0
    assert report.counts["measurements"] == 48 and report.counts["settlements"] == 3
    row = disclosure(engine, public_id)
    assert (row.state, row.error, row.blob_key) == ("AVAILABLE", None, disclosure_key(public_id))
    assert row.compiled is not None
    assert count(engine, "disclosure_settlement") == 3 and count(engine, "disclosure_ggo") == 4
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT address, amount, technology_code, fuel_code, begin FROM energy.disclosure_ggo "
                "WHERE address = 'g-unknown-1'"
            )
        ).one()
    assert tuple(stored) == ("g-unknown-1", 200, *UNKNOWN, DAY1)

    document = json.loads(store.get_bytes(disclosure_key(public_id)))
    assert document["success"] is True and document["state"] == "AVAILABLE"
    assert (document["begin"], document["end"], document["description"]) == (
        "2024-01-01",
        "2024-01-02",
        "A year of it",
    )
    assert document["labels"] == hour_labels(date(2024, 1, 1), 2)
    [series] = document["data"]
    assert series["gsrn"] is None and series["address"] is None
    assert series["measurements"] == amounts[:47] + [None]
    wind = [None] * 48
    wind[0], wind[1], wind[25] = 300, 400, 500
    unknown = [None] * 48
    unknown[0] = 200
    assert series["ggos"] == [{"group": ["Unknown"], "values": unknown}, {"group": ["Wind"], "values": wind}]
    assert document == view(engine, public_id)

    # Recompiling (the nightly run) reads every settlement again but no GGO twice, and adds
    # only what was retired since.
    assert compile_due(engine, SESSION, store, ledger_url=ledger.url()).due == 0
    ledger.put_settlement(late, "m", [("g-wind-3", 500), ("g-wind-4", 50)])
    ledger.put_ggo("g-wind-4", 50, DAY1 + timedelta(hours=25), DAY1 + timedelta(hours=26), "DK1", *WIND)
    report = compile_due(engine, SESSION, store, ledger_url=ledger.url(), all=True)
    assert report.kinds == {"compiled": 1}
    assert count(engine, "disclosure_settlement") == 3 and count(engine, "disclosure_ggo") == 5
    assert ledger.reads[late] == 2
    assert all(ledger.reads[g] == 1 for g in ("g-wind-1", "g-unknown-1", "g-wind-2", "g-wind-3", "g-wind-4"))
    wind[25] = 550
    document = json.loads(store.get_bytes(disclosure_key(public_id)))
    assert document["data"][0]["ggos"][1] == {"group": ["Wind"], "values": wind}
    # And once more with nothing new: nothing added.
    compile_due(engine, SESSION, store, ledger_url=ledger.url(), all=True)
    assert count(engine, "disclosure_ggo") == 5


def test_a_ledger_failure_fails_that_disclosure_alone(
    engine: sa.Engine, store: BlobStore, ledger: LedgerStandIn
) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key=KEY_A)
        add_point(conn, GSRN_B, key=KEY_B)
        add_hours(conn, GSRN_A, DAY1, [1, 2, 3])
        add_hours(conn, GSRN_B, DAY1, [4, 5, 6])
    first = create(engine, [GSRN_A])
    second = create(engine, [GSRN_B])
    broken = settle(ledger, KEY_A, DAY1 + timedelta(hours=1), [("g-a", 1, WIND)])
    settle(ledger, KEY_B, DAY1, [("g-b", 4, WIND)])
    ledger.fail(broken, 500)

    report = compile_due(engine, SESSION, store, ledger_url=ledger.url())

    assert report.kinds == {"failed": 1, "compiled": 1}
    assert report.errors_by_class == {"http_status": 1} and report.stopped is None
    failed = disclosure(engine, first)
    assert (failed.state, failed.error_kind, failed.blob_key) == ("PENDING", "http_status", None)
    assert "HTTP 500" in failed.error
    assert disclosure(engine, second).state == "AVAILABLE"
    assert not store.exists(disclosure_key(first))
    # A failed disclosure waits before it is due again, unless the wait is over.
    assert compile_due(engine, SESSION, store, ledger_url=ledger.url()).due == 0
    ledger.recover(broken)
    report = compile_due(engine, SESSION, store, ledger_url=ledger.url(), retry_after=0)
    assert report.kinds == {"compiled": 1}
    recovered = disclosure(engine, first)
    assert (recovered.state, recovered.error, recovered.error_kind) == ("AVAILABLE", None, None)
    assert view(engine, first)["data"][0]["ggos"][0]["values"][1] == 1


def test_a_ledger_error_code_is_stored_with_its_code(
    engine: sa.Engine, store: BlobStore, ledger: LedgerStandIn
) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key=KEY_A)
        add_hours(conn, GSRN_A, DAY1, [1])
    public_id = create(engine, [GSRN_A])
    where = address_of(KEY_A, SETTLEMENT, DAY1)
    assert where is not None
    ledger.fail(where, 500, code=30)
    report = compile_due(engine, SESSION, store, ledger_url=ledger.url())
    assert report.errors_by_class == {"ledger_error": 1}
    row = disclosure(engine, public_id)
    assert row.state == "PENDING" and row.error.startswith("ledger_error 30:")


def test_an_unreachable_ledger_stops_the_run(engine: sa.Engine, store: BlobStore) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key=KEY_A)
        add_point(conn, GSRN_B, key=KEY_B)
        add_hours(conn, GSRN_A, DAY1, [1])
        add_hours(conn, GSRN_B, DAY1, [2])
    first = create(engine, [GSRN_A])
    second = create(engine, [GSRN_B])
    # A bound port that does not listen refuses connections.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/ledger"
        report = compile_due(engine, SESSION, store, ledger_url=url)
    assert report.errors_by_class == {"connection": 1} and report.stopped is not None
    assert (
        disclosure(engine, first).state == "PENDING" and disclosure(engine, first).error_kind == "connection"
    )
    untouched = disclosure(engine, second)
    assert (untouched.state, untouched.error) == ("PENDING", None)


def test_without_a_ledger_nothing_is_retired_but_the_document_is_written(
    engine: sa.Engine, store: BlobStore, ledger: LedgerStandIn
) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key=KEY_A)
        add_hours(conn, GSRN_A, DAY1, [10, 20])
    public_id = create(engine, [GSRN_A], maxResolution="day")
    settle(ledger, KEY_A, DAY1, [("g", 10, WIND)])
    messages: list[str] = []
    report = compile_due(engine, SESSION, store, ledger_url=None, progress=messages.append)
    assert report.kinds == {"compiled_without_ledger": 1}
    assert "LEDGER_URL is not set" in report.other_rows[0][2] and "LEDGER_URL is not set" in messages[0]
    assert ledger.total_reads == 0
    assert disclosure(engine, public_id).state == "AVAILABLE"
    document = json.loads(store.get_bytes(disclosure_key(public_id)))
    assert document["labels"] == ["2024-01-01", "2024-01-02"]
    assert document["data"] == [{"gsrn": None, "address": None, "measurements": [30, None], "ggos": []}]


def test_a_point_without_a_key_is_not_read(
    engine: sa.Engine, store: BlobStore, ledger: LedgerStandIn
) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [10, 20])
    create(engine, [GSRN_A])
    report = compile_due(engine, SESSION, store, ledger_url=ledger.url())
    assert report.kinds == {"compiled": 1}
    assert report.counts["measurements_without_key"] == 2 and ledger.total_reads == 0


def test_a_point_with_a_broken_key_is_not_read_and_said_so(
    engine: sa.Engine, store: BlobStore, ledger: LedgerStandIn
) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key="xprv-broken")
        add_hours(conn, GSRN_A, DAY1, [10, 20])
    public_id = create(engine, [GSRN_A])
    report = compile_due(engine, SESSION, store, ledger_url=ledger.url())
    assert report.kinds == {"compiled_with_invalid_keys": 1} and GSRN_A in report.other_rows[0][2]
    assert ledger.total_reads == 0 and disclosure(engine, public_id).state == "AVAILABLE"


class _RefusingStore(LocalBlobStore):
    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> int:
        raise OSError("disk full")


def test_a_store_that_refuses_leaves_the_disclosure_pending(engine: sa.Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [10])
    public_id = create(engine, [GSRN_A])
    report = compile_due(engine, SESSION, _RefusingStore(tmp_path / "refusing"), ledger_url=None)
    assert report.errors_by_class == {"blob_store": 1}
    row = disclosure(engine, public_id)
    assert (row.state, row.error_kind, row.blob_key) == ("PENDING", "blob_store", None)
    assert "disk full" in row.error


# -- the view ---------------------------------------------------------------------------------------


def test_resolution_rules() -> None:
    assert span_resolution(date(2024, 1, 1), date(2024, 1, 2)) == "hour"
    assert span_resolution(date(2024, 1, 1), date(2024, 1, 3)) == "day"
    assert span_resolution(date(2024, 1, 1), date(2024, 2, 28)) == "day"  # 59 days
    assert span_resolution(date(2024, 1, 1), date(2024, 2, 29)) == "month"  # 60 days
    assert span_resolution(date(2024, 1, 1), date(2026, 12, 29)) == "month"
    assert span_resolution(date(2024, 1, 1), date(2026, 12, 30)) == "year"  # 1095 days
    assert choose_resolution(None, date(2024, 1, 1), date(2024, 1, 1), "day") == "day"
    assert choose_resolution("hour", date(2024, 1, 1), date(2024, 3, 1), "month") == "month"
    assert choose_resolution("year", date(2024, 1, 1), date(2024, 1, 1), "hour") == "year"
    assert choose_resolution("all", date(2024, 1, 1), date(2024, 1, 1), "hour") == "all"
    assert labels(date(2024, 1, 15), date(2024, 3, 10), "month") == ["2024-01", "2024-02", "2024-03"]
    assert labels(date(2023, 12, 31), date(2024, 1, 1), "month") == ["2023-12", "2024-01"]
    assert labels(date(2023, 6, 1), date(2025, 1, 1), "year") == ["2023", "2024", "2025"]
    assert labels(date(2024, 2, 28), date(2024, 3, 1), "day") == ["2024-02-28", "2024-02-29", "2024-03-01"]
    assert labels(date(2024, 1, 1), date(2024, 1, 1), "all") == ["All-time"]


def test_an_unknown_disclosure(engine: sa.Engine) -> None:
    assert view(engine, "nope") == {"success": False, "message": 'Disclosure with ID "nope" not found'}


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        ("2024-01-01", hour_labels(date(2024, 1, 1))),
        ("2024-01-03", ["2024-01-01", "2024-01-02", "2024-01-03"]),
        ("2024-02-29", ["2024-01", "2024-02"]),
        ("2026-12-30", ["2024", "2025", "2026"]),
    ],
)
def test_the_span_picks_the_resolution(engine: sa.Engine, end: str, expected: list[str]) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
    public_id = create(engine, [GSRN_A], end=end)
    assert view(engine, public_id)["labels"] == expected


def test_max_resolution_caps_and_a_requested_resolution_wins(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [1] * 48)
    capped = create(engine, [GSRN_A], maxResolution="day")
    assert view(engine, capped)["labels"] == ["2024-01-01", "2024-01-02"]
    assert view(engine, capped)["data"][0]["measurements"] == [24, 24]
    assert view(engine, capped, resolution="hour")["labels"] == ["2024-01-01", "2024-01-02"]
    assert view(engine, capped, resolution="month")["labels"] == ["2024-01"]
    free = create(engine, [GSRN_A])
    assert len(view(engine, free)["labels"]) == 48
    assert view(engine, free, resolution="day")["data"][0]["measurements"] == [24, 24]
    with pytest.raises(ValueError):
        view(engine, free, resolution="week")


def test_resolution_all_is_one_bucket(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [1, 2, 3])
        # outside the range: not summed
        add_hours(conn, GSRN_A, DAY1 + timedelta(days=2), [100])
    public_id = create(engine, [GSRN_A], maxResolution="all")
    with engine.begin() as conn:
        retire(conn, public_id, GSRN_A, DAY1, [(1, WIND), (1, UNKNOWN)])
        retire(conn, public_id, GSRN_A, DAY1 + timedelta(hours=2), [(2, WIND)])
    document = view(engine, public_id, resolution="hour")
    assert document["labels"] == ["All-time"]
    assert document["data"][0]["measurements"] == [6]
    assert document["data"][0]["ggos"] == [
        {"group": ["Unknown"], "values": [1]},
        {"group": ["Wind"], "values": [3]},
    ]


def test_the_utc_offset_moves_the_hours_under_the_labels(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1 - timedelta(hours=2), [1])  # 2023-12-31 22:00 UTC
        add_hours(conn, GSRN_A, DAY1, [2])  # 2024-01-01 00:00 UTC
        add_hours(conn, GSRN_A, DAY1 + timedelta(hours=22), [3])  # 2024-01-01 22:00 UTC
    public_id = create(engine, [GSRN_A], end="2024-01-01")
    with engine.begin() as conn:
        retire(conn, public_id, GSRN_A, DAY1, [(2, WIND)])
    utc = view(engine, public_id)
    local = view(engine, public_id, utc_offset=2)
    assert utc["labels"] == local["labels"] == hour_labels(date(2024, 1, 1))
    expected_utc = [None] * 24
    expected_utc[0], expected_utc[22] = 2, 3
    expected_local = [None] * 24
    expected_local[0], expected_local[2] = 1, 2  # 22:00 UTC the day after is 00:00 the day after
    assert utc["data"][0]["measurements"] == expected_utc
    assert local["data"][0]["measurements"] == expected_local
    assert local["data"][0]["ggos"][0]["values"][2] == 2
    # At UTC-1 the day begins at 01:00 UTC: the hour at 00:00 UTC is the evening before.
    west = view(engine, public_id, utc_offset=-1, resolution="day")
    assert west["labels"] == ["2024-01-01"] and west["data"][0]["measurements"] == [3]


def test_the_date_range_is_clipped_to_the_disclosure(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [1] * 24 * 10)
    public_id = create(engine, [GSRN_A], end="2024-01-10")
    assert view(engine, public_id)["labels"][0] == "2024-01-01"  # 10 days: by day
    early = view(engine, public_id, date_range=(date(2023, 12, 1), date(2024, 1, 2)))
    assert early["labels"] == hour_labels(date(2024, 1, 1), 2)
    assert early["data"][0]["measurements"] == [1] * 48
    assert (early["begin"], early["end"]) == ("2024-01-01", "2024-01-10")
    late = view(engine, public_id, date_range=(date(2024, 2, 1), date(2024, 3, 1)))
    assert late["labels"] == hour_labels(date(2024, 1, 10))
    inside = view(engine, public_id, date_range=(date(2024, 1, 3), date(2024, 1, 5)), resolution="day")
    assert inside["labels"] == ["2024-01-03", "2024-01-04", "2024-01-05"]
    assert inside["data"][0]["measurements"] == [24, 24, 24]
    with pytest.raises(ValueError):
        view(engine, public_id, date_range=(date(2024, 1, 5), date(2024, 1, 3)))


def test_series_per_point_or_anonymised(engine: sa.Engine) -> None:
    gsrn_c = "571313000000000003"
    with engine.begin() as conn:
        add_point(conn, GSRN_B, street="Bvej")
        add_point(conn, GSRN_A, street="Avej")
        add_point(conn, gsrn_c)
        add_hours(conn, GSRN_A, DAY1, [1, 2])
        add_hours(conn, GSRN_B, DAY1 + timedelta(hours=1), [10])
        add_hours(conn, gsrn_c, DAY1, [1000])
    options = {"maxResolution": "day", "end": "2024-01-01"}
    by_gsrn = create(
        engine, [GSRN_B, GSRN_A, gsrn_c], publicizeMeteringpoints=True, publicizeGsrn=True, **options
    )
    by_address = create(
        engine, [GSRN_B, GSRN_A], publicizeMeteringpoints=True, publicizePhysicalAddress=True, **options
    )
    anonymous = create(
        engine, [GSRN_B, GSRN_A, gsrn_c], publicizeGsrn=True, publicizePhysicalAddress=True, **options
    )
    with engine.begin() as conn:
        retire(conn, by_gsrn, GSRN_B, DAY1 + timedelta(hours=1), [(7, WIND)])
        retire(conn, anonymous, GSRN_B, DAY1 + timedelta(hours=1), [(7, WIND)])
        retire(conn, anonymous, GSRN_A, DAY1, [(1, WIND)])
        # a disabled point has no series, and nothing of it counts
        retire(conn, anonymous, gsrn_c, DAY1, [(500, WIND)])
        conn.execute(
            sa.text("UPDATE energy.meteringpoint SET disabled = true WHERE gsrn = :g"), {"g": gsrn_c}
        )
    assert view(engine, by_gsrn)["data"] == [
        {"gsrn": GSRN_A, "address": None, "measurements": [3], "ggos": []},
        {"gsrn": GSRN_B, "address": None, "measurements": [10], "ggos": [{"group": ["Wind"], "values": [7]}]},
    ]
    assert [(s["gsrn"], s["address"]) for s in view(engine, by_address)["data"]] == [
        (None, "Avej 1, 8000 Aarhus C"),
        (None, "Bvej 1, 8000 Aarhus C"),
    ]
    assert view(engine, anonymous)["data"] == [
        {"gsrn": None, "address": None, "measurements": [13], "ggos": [{"group": ["Wind"], "values": [8]}]}
    ]


def test_unpublished_measurements_do_not_count(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [1])
        add_hours(conn, GSRN_A, DAY1 + timedelta(hours=1), [100], published=False)
    public_id = create(engine, [GSRN_A], maxResolution="all")
    assert view(engine, public_id)["data"][0]["measurements"] == [1]


def test_technology_labels(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM energy.technology")).scalar_one() == 2666
        assert technology_label(conn, *WIND) == "Wind"
        assert technology_label(conn, "T050000", "F02030100") == "Naturalgas"
        assert technology_label(conn, *UNKNOWN) == "Unknown"
        assert technology_label(conn, None, None) == "Unknown"
