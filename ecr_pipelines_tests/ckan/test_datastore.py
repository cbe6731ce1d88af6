"""Paging through datastore_search as the legacy ckanpackager did, against the stand-in CKAN on
loopback: the request bodies are what the stand-in received."""

from typing import Any

import pytest

from ecr_pipelines.ckan.datastore import DatastoreError, DatastoreSearch
from ecr_pipelines.dev.standins import Fault, Reply, StandInServer
from ecr_pipelines.dev.standins.ckan import ACTION_PATH, CkanStandIn, Table, rows_table, synthetic_table
from ecr_pipelines.lib.http import make_session

PAGING = ("offset", "limit", "cursor", "after")


@pytest.fixture
def ckan(standin: StandInServer) -> CkanStandIn:
    return CkanStandIn(standin)


def numbered(total: int, **kwargs: Any) -> Table:
    """Rows {"_id": n + 1, "name": "row n"}."""
    fields = [{"id": "_id", "type": "int"}, {"id": "name", "type": "text"}]
    return Table(fields=fields, total=total, row=lambda n: {"_id": n + 1, "name": f"row {n}"}, **kwargs)


def search(ckan: CkanStandIn, params: dict[str, Any], **kwargs: Any) -> DatastoreSearch:
    kwargs.setdefault("prefetch", False)
    return DatastoreSearch(make_session(retries=0, backoff=0), ckan.api_url, params, **kwargs)


def paging_bodies(ckan: CkanStandIn) -> list[dict[str, Any]]:
    """What each data request asked for, paging parameters only."""
    return [{k: v for k, v in s.items() if k in PAGING} for s in ckan.data_searches]


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["_id"] for row in rows]


@pytest.mark.parametrize("prefetch", [False, True])
def test_offset_paging_until_an_empty_page(ckan: CkanStandIn, prefetch: bool) -> None:
    ckan.add_table("r", numbered(7))
    reader = search(ckan, {"resource_id": "r"}, page_size=3, prefetch=prefetch)
    assert ids(list(reader.rows())) == [1, 2, 3, 4, 5, 6, 7]
    # First the description (the caller's parameters with offset 0 and limit 0), then pages of
    # the page size until one comes back empty.
    assert ckan.searches[0] == {"resource_id": "r", "offset": 0, "limit": 0}
    assert paging_bodies(ckan) == [
        {"offset": 0, "limit": 3},
        {"offset": 3, "limit": 3},
        {"offset": 6, "limit": 3},
        {"offset": 9, "limit": 3},
    ]
    assert reader.calls == 5 and reader.paging() == "offset"


def test_the_legacy_offset_and_limit_example(ckan: CkanStandIn) -> None:
    # The legacy's own test: offset 4, limit 10, page size 2 → offsets 4, 6, 8, 10, 12, the last
    # one {"offset": 12, "limit": 2}, and no request after the tenth row.
    ckan.add_table("r", numbered(100))
    rows = list(search(ckan, {"resource_id": "r", "offset": 4, "limit": 10}, page_size=2).rows())
    assert ids(rows) == list(range(5, 15))
    assert paging_bodies(ckan) == [{"offset": o, "limit": 2} for o in (4, 6, 8, 10, 12)]


def test_a_limit_below_the_page_size_is_one_request(ckan: CkanStandIn) -> None:
    ckan.add_table("r", numbered(100))
    rows = list(search(ckan, {"resource_id": "r", "offset": 4, "limit": 10}, page_size=200).rows())
    assert ids(rows) == list(range(5, 15))
    assert paging_bodies(ckan) == [{"offset": 4, "limit": 10}]


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_limit_reached_mid_page_cuts_the_page_and_stops(ckan: CkanStandIn, prefetch: bool) -> None:
    ckan.add_table("r", numbered(100))
    reader = search(ckan, {"resource_id": "r", "limit": 7}, page_size=3, prefetch=prefetch)
    pages = list(reader.pages())
    assert [ids(p) for p in pages] == [[1, 2, 3], [4, 5, 6], [7]]
    assert paging_bodies(ckan) == [{"offset": o, "limit": 3} for o in (0, 3, 6)]


def test_an_empty_resource_is_the_description_and_one_empty_page(ckan: CkanStandIn) -> None:
    ckan.add_table("r", numbered(0))
    reader = search(ckan, {"resource_id": "r"})
    assert list(reader.pages()) == []
    assert reader.describe().fields == ("_id", "name")
    assert paging_bodies(ckan) == [{"offset": 0, "limit": 5000}]


@pytest.mark.parametrize("prefetch", [False, True])
def test_solr_backend_pages_with_a_cursor(ckan: CkanStandIn, prefetch: bool) -> None:
    ckan.add_table("r", numbered(7, backend="solr"))
    reader = search(ckan, {"resource_id": "r"}, page_size=3, prefetch=prefetch)
    assert ids(list(reader.rows())) == [1, 2, 3, 4, 5, 6, 7]
    assert reader.describe().backend == "solr" and reader.paging() == "cursor"
    # No offset once the backend is known: "*" first, then each answer's next_cursor.
    assert paging_bodies(ckan) == [
        {"limit": 3, "cursor": "*"},
        {"limit": 3, "cursor": "cursor-3"},
        {"limit": 3, "cursor": "cursor-6"},
        {"limit": 3, "cursor": "cursor-7"},
    ]


@pytest.mark.parametrize("prefetch", [False, True])
def test_versioned_datastore_pages_with_after(ckan: CkanStandIn, prefetch: bool) -> None:
    ckan.add_table("r", numbered(7, backend="versioned-datastore"))
    reader = search(ckan, {"resource_id": "r", "limit": 100}, page_size=3, prefetch=prefetch)
    assert ids(list(reader.rows())) == [1, 2, 3, 4, 5, 6, 7]
    assert reader.paging() == "after"
    assert paging_bodies(ckan) == [
        {"limit": 3},
        {"limit": 3, "after": [2]},
        {"limit": 3, "after": [5]},
        {"limit": 3, "after": [6]},
    ]


@pytest.mark.parametrize("backend", ["solr", "versioned-datastore"])
def test_a_caller_offset_forces_offset_paging(ckan: CkanStandIn, backend: str) -> None:
    ckan.add_table("r", numbered(10, backend=backend))
    reader = search(ckan, {"resource_id": "r", "offset": 5}, page_size=3)
    assert ids(list(reader.rows())) == [6, 7, 8, 9, 10]
    assert reader.paging() == "offset"
    assert paging_bodies(ckan) == [{"offset": o, "limit": 3} for o in (5, 8, 11)]


def test_a_capped_page_moves_the_offset_by_what_ckan_used(ckan: CkanStandIn) -> None:
    # CKAN caps limit at ckan.datastore.search.rows_max and says so in the answer's limit; moving
    # the offset by the asked-for limit (the legacy) would skip the rows in between.
    ckan.rows_max = 4
    ckan.add_table("r", numbered(10))
    assert ids(list(search(ckan, {"resource_id": "r"}, page_size=6).rows())) == list(range(1, 11))
    assert paging_bodies(ckan) == [{"offset": o, "limit": 6} for o in (0, 4, 8, 12)]


def test_parameters_are_forwarded_and_none_left_out(ckan: CkanStandIn) -> None:
    ckan.add_table("r", numbered(3))
    params = {
        "resource_id": "r",
        "q": "needle",
        "filters": {"name": ["row 1", "row 2"]},
        "fields": "name,_id",
        "sort": "_id desc",
        "plain": False,
        "language": "english",
        "offset": None,
    }
    reader = search(ckan, params)
    rows = list(reader.rows())
    assert reader.describe().fields == ("name", "_id")  # CKAN's order, as the fields asked
    assert rows[0] == {"name": "row 0", "_id": 1}
    for sent in ckan.searches:
        assert {k: sent[k] for k in ("q", "filters", "fields", "sort", "plain", "language")} == {
            k: params[k] for k in ("q", "filters", "fields", "sort", "plain", "language")
        }
        assert "offset" in sent  # the paging's own offset, not the caller's None


def test_the_api_key_is_a_header_only_when_given(ckan: CkanStandIn, standin: StandInServer) -> None:
    ckan.add_table("private", numbered(2, api_key="secret-key"))
    ckan.add_table("public", numbered(2))
    assert len(list(search(ckan, {"resource_id": "private"}, api_key="secret-key").rows())) == 2
    assert len(list(search(ckan, {"resource_id": "public"}).rows())) == 2
    sent = standin.requests_to(ACTION_PATH)
    assert all(r.headers.get("Authorization") == "secret-key" for r in sent[:3])
    assert all("Authorization" not in r.headers for r in sent[3:])
    assert all("secret-key" not in r.body.decode() for r in sent)
    with pytest.raises(DatastoreError) as refused:
        search(ckan, {"resource_id": "private"}, api_key="wrong").describe()
    assert refused.value.kind == "http_status" and refused.value.status == 403
    assert "secret-key" not in repr(search(ckan, {"resource_id": "r"}, api_key="secret-key"))


def test_ckan_errors_are_classified_with_ckans_message(ckan: CkanStandIn) -> None:
    with pytest.raises(
        DatastoreError, match=r'HTTP 404: Not found: Resource "nope" was not found'
    ) as missing:
        search(ckan, {"resource_id": "nope"}).describe()
    assert (missing.value.kind, missing.value.status) == ("http_status", 404)
    ckan.add_table("r", numbered(3))
    with pytest.raises(
        DatastoreError, match=r'HTTP 409: Validation Error .*field \\"x\\" not in resource'
    ) as bad:
        search(ckan, {"resource_id": "r", "fields": "x"}).describe()
    assert bad.value.status == 409


def test_an_error_mid_way_is_raised_after_the_pages_before_it(ckan: CkanStandIn) -> None:
    ckan.add_table("r", numbered(10, fail_at_row=6))
    pages = search(ckan, {"resource_id": "r"}, page_size=3, prefetch=True).pages()
    assert ids(next(pages)) == [1, 2, 3]
    assert ids(next(pages)) == [4, 5, 6]
    with pytest.raises(DatastoreError) as failed:
        next(pages)
    assert failed.value.kind == "http_status" and failed.value.status == 500


def test_transport_failures_are_classified(ckan: CkanStandIn, standin: StandInServer) -> None:
    ckan.add_table("r", numbered(10))
    standin.inject(ACTION_PATH, Fault(reset=True, times=1), method="POST")
    with pytest.raises(DatastoreError) as reset:
        search(ckan, {"resource_id": "r"}).describe()
    assert reset.value.kind == "connection"
    standin.inject(ACTION_PATH, Fault(truncate=40, times=1), method="POST")
    with pytest.raises(DatastoreError) as truncated:
        search(ckan, {"resource_id": "r"}).describe()
    assert truncated.value.kind == "connection"
    with pytest.raises(DatastoreError) as refused:
        DatastoreSearch(make_session(retries=0), "http://127.0.0.1:9/api", {"resource_id": "r"}).describe()
    assert refused.value.kind == "connection"


def test_answers_that_are_not_search_results(standin: StandInServer) -> None:
    standin.route("/html", method="POST", body=b"<html>hello</html>")
    standin.route("/failed", method="POST", json={"success": False, "error": {"message": "no"}})
    standin.route("/nofields", method="POST", json={"success": True, "result": {"records": []}})
    for path, reason in (("/html", "not a JSON object"), ("/failed", "no"), ("/nofields", "no fields")):
        reader = DatastoreSearch(make_session(retries=0), standin.url(path), {"resource_id": "r"})
        with pytest.raises(DatastoreError, match=reason) as caught:
            reader.describe()
        assert caught.value.kind == "invalid_answer"


def test_a_versioned_page_without_after_ends_the_download(standin: StandInServer) -> None:
    # The legacy would have sent no "after" and started over, forever.
    fields = [{"id": "_id", "type": "int"}]
    answers = iter(
        [
            {"fields": fields, "records": [], "_backend": "versioned-datastore"},
            {"fields": fields, "records": [{"_id": 1}], "after": None},
        ]
    )
    standin.route(
        "/v", method="POST", handler=lambda r: Reply.json({"success": True, "result": next(answers)})
    )
    reader = DatastoreSearch(make_session(retries=0), standin.url("/v"), {"resource_id": "r"})
    assert list(reader.rows()) == [{"_id": 1}]
    assert reader.calls == 2


def test_invalid_limits_are_refused_before_any_call(ckan: CkanStandIn) -> None:
    with pytest.raises(ValueError, match="limit must be a whole number"):
        search(ckan, {"resource_id": "r", "limit": "ten"})
    with pytest.raises(ValueError, match="offset must not be negative"):
        search(ckan, {"resource_id": "r", "offset": -1})
    assert ckan.searches == []


def test_a_consumer_that_stops_early_stops_the_prefetch(ckan: CkanStandIn) -> None:
    ckan.add_table("r", numbered(1000))
    pages = search(ckan, {"resource_id": "r"}, page_size=10, prefetch=True).pages()
    next(pages)
    pages.close()  # type: ignore[attr-defined]
    asked = len(ckan.data_searches)
    assert asked <= 3  # the page handed over, the one waiting, the one being fetched
    assert len(ckan.data_searches) == asked  # nothing runs on after close


def test_the_synthetic_table_serves_the_same_rows_either_way(ckan: CkanStandIn) -> None:
    table = ckan.add_table("s", synthetic_table(50))
    fast = list(search(ckan, {"resource_id": "s"}, page_size=20).rows())
    chosen = list(search(ckan, {"resource_id": "s", "fields": table.field_ids}, page_size=20).rows())
    assert fast == chosen == [table.row(n) for n in range(50)]
    assert list(fast[0]) == table.field_ids


def test_literal_rows_keep_missing_keys_missing(ckan: CkanStandIn) -> None:
    ckan.add_table("r", rows_table([{"_id": 1, "a": "x"}, {"_id": 2}]))
    assert list(search(ckan, {"resource_id": "r"}).rows()) == [{"_id": 1, "a": "x"}, {"_id": 2}]


def test_numbers_are_decoded_exactly(standin: StandInServer) -> None:
    # orjson would turn the integers beyond 64 bits into floats; such pages go to json instead.
    body = (
        b'{"success": true, "result": {"fields": [{"id": "n", "type": "numeric"}], "records": '
        b'[{"n": 123456789012345678901234567890}, {"n": -9223372036854775809}, {"n": 2.5}, {"n": NaN}]}}'
    )
    standin.route(
        "/big", method="POST", handler=lambda r: Reply(200, body, {"Content-Type": "application/json"})
    )
    reader = DatastoreSearch(make_session(retries=0), standin.url("/big"), {"resource_id": "r", "limit": 4})
    values = [row["n"] for row in reader.rows()]
    assert values[:3] == [123456789012345678901234567890, -9223372036854775809, 2.5]
    assert values[3] != values[3]  # NaN, which orjson refuses and json reads
