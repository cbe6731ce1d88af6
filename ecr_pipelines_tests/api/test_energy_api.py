"""``POST /disclosure`` under a real uvicorn: disclosures compiled by the energy stage (against the
ledger stand-in) into a local blob store, the stored document served byte for byte, other views
computed live, unknown ids and unreadable bodies."""

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from ecr_pipelines.api.context import ApiSettings
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ledger import LedgerStandIn
from ecr_pipelines.energy.disclosure import disclosure_key, disclosure_view, view_json
from ecr_pipelines.energy.stages.disclosures import compile_due, create_disclosure
from ecr_pipelines.lib.blobstore import BlobStore, open_blob_store
from ecr_pipelines.lib.http import make_session
from ecr_pipelines_tests.api.conftest import ServeApi
from ecr_pipelines_tests.conftest import own_migrated_engine
from ecr_pipelines_tests.energy.test_disclosures import (
    DAY1,
    GSRN_A,
    GSRN_B,
    KEY_A,
    KEY_B,
    WIND,
    add_hours,
    add_point,
    request,
    settle,
)

SESSION = make_session(retries=0, connect_timeout=2, read_timeout=5)


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[sa.Engine]:
    with own_migrated_engine(pg_server_url, "t_api_energy") as engine:
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
def base(serve_api: ServeApi, engine: sa.Engine, tmp_path: Path) -> str:
    return serve_api(
        ApiSettings(
            database_url=engine.url.render_as_string(hide_password=False),
            blob_store_url=str(tmp_path / "blobs"),
        )
    )


def post(base: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{base}/disclosure", data=data, headers={"Content-Type": "application/json"}, timeout=10
    )


def live(engine: sa.Engine, public_id: str, **kwargs: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return disclosure_view(conn, public_id, **kwargs)


@pytest.fixture
def compiled(engine: sa.Engine, store: BlobStore, standin: StandInServer) -> str:
    """Two points over two days, published per point, with GGOs retired to three hours on the
    ledger stand-in; compiled by the stage (document in the store)."""
    ledger = LedgerStandIn(standin)
    with engine.begin() as conn:
        add_point(conn, GSRN_A, key=KEY_A, street="Nørregade")
        add_point(conn, GSRN_B, key=KEY_B)
        add_hours(conn, GSRN_A, DAY1, [1000 + n for n in range(48)])
        add_hours(conn, GSRN_B, DAY1, [10 * n for n in range(40)])
        public_id = create_disclosure(
            conn,
            "alice",
            request(
                [GSRN_A, GSRN_B],
                publicizeMeteringpoints=True,
                publicizeGsrn=True,
                publicizePhysicalAddress=True,
            ),
        )
    settle(ledger, KEY_A, DAY1, [("g-1", 300, WIND), ("g-2", 200, ("T999999", "F99999999"))])
    settle(ledger, KEY_A, DAY1 + timedelta(hours=25), [("g-3", 500, WIND)])
    settle(ledger, KEY_B, DAY1 + timedelta(hours=3), [("g-4", 30, WIND)])
    report = compile_due(engine, SESSION, store, ledger_url=ledger.url())
    assert report.kinds == {"compiled": 1}
    return public_id


def test_the_default_view_is_the_stored_document_byte_for_byte(
    base: str, compiled: str, engine: sa.Engine, store: BlobStore
) -> None:
    stored = store.get_bytes(disclosure_key(compiled))
    answer = post(base, {"id": compiled})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.content == stored
    document = answer.json()
    assert document["success"] is True and document["state"] == "AVAILABLE"
    assert [series["gsrn"] for series in document["data"]] == [GSRN_A, GSRN_B]
    assert document["data"][0]["address"] == "Nørregade 1, 8000 Aarhus C"
    # utcOffset 0 is the same view; unknown fields are ignored.
    assert post(base, {"id": compiled, "utcOffset": 0, "resolution": None, "extra": 1}).content == stored

    # The document is what the pipeline published: a measurement imported since shows in a live
    # view, not in the stored one (until the next compile), and the database is not asked.
    with engine.begin() as conn:
        add_hours(conn, GSRN_B, DAY1 + timedelta(hours=40), [777])
    assert post(base, {"id": compiled}).content == stored
    hourly = post(base, {"id": compiled, "resolution": "hour"}).json()
    assert hourly["data"][1]["measurements"][40] == 777


@pytest.mark.parametrize(
    ("body", "view"),
    [
        ({"utcOffset": 2}, {"utc_offset": 2}),
        ({"utcOffset": "-1"}, {"utc_offset": -1}),
        ({"resolution": "day"}, {"resolution": "day"}),
        ({"resolution": "all"}, {"resolution": "all"}),
        (
            {"dateRange": {"begin": "2024-01-02", "end": "2024-01-05"}, "utcOffset": 1},
            {"date_range": ("2024-01-02", "2024-01-05"), "utc_offset": 1},
        ),
    ],
)
def test_other_views_are_computed_live(
    base: str, compiled: str, engine: sa.Engine, body: dict[str, Any], view: dict[str, Any]
) -> None:
    from datetime import date

    if "date_range" in view:
        view["date_range"] = tuple(date.fromisoformat(day) for day in view["date_range"])
    answer = post(base, {"id": compiled, **body})
    assert answer.status_code == 200
    expected = live(engine, compiled, **view)
    assert answer.content == view_json(expected)
    assert answer.json()["labels"] == expected["labels"] and expected["success"] is True


def test_a_disclosure_not_compiled_yet_is_answered_from_the_database(
    base: str, engine: sa.Engine, store: BlobStore
) -> None:
    with engine.begin() as conn:
        add_point(conn, GSRN_A)
        add_hours(conn, GSRN_A, DAY1, [5, 6])
        public_id = create_disclosure(conn, "alice", request([GSRN_A]))
    assert not store.exists(disclosure_key(public_id))
    answer = post(base, {"id": public_id})
    assert answer.status_code == 200
    document = answer.json()
    assert document["state"] == "PENDING" and document["data"][0]["measurements"][:3] == [5, 6, None]
    assert document == live(engine, public_id)


@pytest.mark.parametrize("public_id", ["4b0c7c51-0000-4000-8000-000000000000", "../../ckan/x", "a/b.json"])
def test_an_unknown_id_is_the_legacy_not_found_answer(base: str, public_id: str) -> None:
    answer = post(base, {"id": public_id})
    assert answer.status_code == 200
    assert answer.json() == {"success": False, "message": f'Disclosure with ID "{public_id}" not found'}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "The body must be JSON"),
        (b"", "The body must be JSON"),
        (["x"], "The body must be a JSON object"),
        ({}, "id is required"),
        ({"id": 7}, "id is required"),
        ({"id": "x", "utcOffset": "east"}, "utcOffset must be a whole number"),
        ({"id": "x", "utcOffset": True}, "utcOffset must be a whole number"),
        ({"id": "x", "resolution": "week"}, "resolution must be one of all, year, month, day, hour"),
        ({"id": "x", "dateRange": "2024"}, "dateRange must be an object"),
        ({"id": "x", "dateRange": {"begin": "2024-01-01"}}, "dateRange.end must be a date"),
    ],
)
def test_an_unreadable_body_is_a_400(base: str, body: Any, message: str) -> None:
    answer = post(base, body)
    assert answer.status_code == 400
    assert answer.json()["success"] is False and message in answer.json()["message"]


def test_the_views_own_checks_are_400s_too(base: str, compiled: str) -> None:
    for body, message in [
        ({"utcOffset": 30}, "utcOffset must be a whole number of hours within"),
        ({"dateRange": {"begin": "2024-01-03", "end": "2024-01-01"}}, "begin must not be after end"),
    ]:
        answer = post(base, {"id": compiled, **body})
        assert answer.status_code == 400
        assert answer.json()["success"] is False and message in answer.json()["message"]
    assert requests.get(f"{base}/disclosure", timeout=5).status_code == 405
