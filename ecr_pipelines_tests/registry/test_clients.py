"""The registry clients over loopback: paging, auth headers, status handling, BDR calls."""

import pytest

from ecr_pipelines.dev.standins import Fault, RecordedRequest, Reply, StandInServer
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.registry.clients import (
    BdrEndpointClient,
    BdrRegistryClient,
    RegistryApiError,
    RegistryClient,
)

FGAS_PATH = "/rest/api/latest/fgasundertakings/"
ODS_PATH = "/rest/api/latest/odsundertakings/"


def session():
    return make_session(retries=1, backoff=0.01, read_timeout=5)


def test_fgas_pages_by_number_of_pages_header(standin: StandInServer) -> None:
    for page in (1, 2, 3):
        standin.route(
            FGAS_PATH,
            query={"pageNumber": str(page)},
            json=[{"id": page * 10 + i} for i in range(2)],
            headers={"numberOfPages": "3"},
        )
    client = RegistryClient(session(), standin.url(), "api-user", "s3cret", "FGAS")
    pages = list(client.undertakings(page_size=2))
    assert [r["id"] for page in pages for r in page] == [10, 11, 20, 21, 30, 31]
    first = standin.requests_to(FGAS_PATH)[0]
    assert first.headers["user"] == "api-user" and first.headers["password"] == "s3cret"
    assert first.query == {"pageSize": "2", "pageNumber": "1"}


def test_fgas_without_page_size_is_one_request_and_window_is_sent(standin: StandInServer) -> None:
    import datetime

    standin.route(FGAS_PATH, json=[{"id": 1}], headers={"numberOfPages": "9"})
    client = RegistryClient(session(), standin.url(), "u", "p", "FGAS")
    assert list(client.undertakings(datetime.date(2025, 11, 6))) == [[{"id": 1}]]
    (request,) = standin.requests_to(FGAS_PATH)
    assert request.query == {"updatedSince": "06/11/2025"}


def test_ods_pages_by_offset_until_row_count(standin: StandInServer) -> None:
    def handler(request: RecordedRequest) -> Reply:
        offset, size = int(request.query.get("offset", 0)), int(request.query["pageSize"])
        rows = [{"id": i} for i in range(offset, min(offset + size, 7))]
        return Reply.json({"rows": rows, "rowCount": 7})

    standin.route(ODS_PATH, handler=handler)
    client = RegistryClient(session(), standin.url(), "u", "p", "ODS")
    assert [r["id"] for page in client.undertakings(page_size=3) for r in page] == list(range(7))
    assert [r.query.get("offset") for r in standin.requests_to(ODS_PATH)] == [None, "3", "6"]


def test_one_company_by_id_sends_no_window(standin: StandInServer) -> None:
    import datetime

    standin.route(FGAS_PATH, json=[{"id": 5}])
    client = RegistryClient(session(), standin.url(), "u", "p", "FGAS")
    list(client.undertakings(datetime.date(2025, 1, 1), None, external_id=5))
    assert standin.requests_to(FGAS_PATH)[0].query == {"organizationId": "5"}


def test_404_is_no_data_and_401_ends_the_run(standin: StandInServer) -> None:
    standin.route(FGAS_PATH, json={}, status=404)
    assert list(RegistryClient(session(), standin.url(), "u", "p", "FGAS").undertakings()) == []
    standin.route(ODS_PATH, json={}, status=401)
    with pytest.raises(RegistryApiError, match="401 Unauthorized"):
        list(RegistryClient(session(), standin.url(), "u", "p", "ODS").undertakings())


def test_server_errors_are_retried_then_end_the_run_clearly(standin: StandInServer) -> None:
    standin.route(FGAS_PATH, json=[{"id": 1}])
    standin.inject(FGAS_PATH, Fault(status=503, times=1))
    assert list(RegistryClient(session(), standin.url(), "u", "p", "FGAS").undertakings()) == [[{"id": 1}]]
    standin.inject(FGAS_PATH, Fault(status=500))
    with pytest.raises(RegistryApiError, match="HTTP 500"):
        list(RegistryClient(session(), standin.url(), "u", "p", "FGAS").undertakings())


def test_bdr_registry_old_companies_with_key(standin: StandInServer) -> None:
    standin.route("/company/obligation/fgases/", json=[{"pk": 1}])
    standin.route("/company/obligation/ods/", json=[], status=403)
    client = BdrRegistryClient(session(), standin.url(), "key-1")
    assert client.old_companies("FGAS") == [{"pk": 1}]
    assert standin.requests_to("/company/obligation/fgases/")[0].headers["Authorization"] == "key-1"
    with pytest.raises(RegistryApiError, match="BDR_API_KEY"):
        client.old_companies("ODS")


def test_bdr_endpoint_success_fail_and_unreachable(standin: StandInServer) -> None:
    path = "/ReportekEngine/update_company_collection"
    standin.route(
        path,
        json={"status": "success", "message": "ok"},
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    client = BdrEndpointClient(session(), standin.url(), "bdr", "pw")
    assert client.update_company_collection(1, "FGAS", "de", "X").ok
    request = standin.requests_to(path)[0]
    assert request.query == {"company_id": "1", "domain": "FGAS", "country": "de", "name": "X"}
    assert request.headers["Authorization"].startswith("Basic ")

    standin.route(path, json={"status": "fail", "message": "no such old collection"}, status=404)
    result = client.update_company_collection(1, "FGAS", "de", "X", "fgas30123")
    assert not result.ok and "no such old collection" in result.message

    with StandInServer() as gone:
        url = gone.url()
    unreachable = BdrEndpointClient(make_session(retries=0), url, "bdr", "pw")
    result = unreachable.update_company_collection(1, "FGAS", "de", "X")
    assert not result.ok and "unreachable" in result.message
    assert unreachable.folder_exists("FGAS", "de", "1") is None


def test_bdr_endpoint_is_skipped_when_not_configured() -> None:
    client = BdrEndpointClient(session(), "", None, None)
    assert client.update_company_collection(1, "FGAS", "de", "X").ok
    assert client.folder_exists("FGAS", "de", "1") is True
    assert client.collections() == []
