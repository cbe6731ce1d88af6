"""The CKAN action client (shared by the services) against a stand-in CKAN on loopback."""

import pytest

from ecr_pipelines.dev.standins import Fault, RecordedRequest, Reply, StandInServer
from ecr_pipelines.lib import ckan as ckan_module
from ecr_pipelines.lib.ckan import CkanClient, CkanError, action_base
from ecr_pipelines.lib.http import make_session

ACTION = "/api/3/action"


def ok(result: object) -> Reply:
    return Reply.json({"help": "h", "success": True, "result": result})


def client(server: StandInServer, **kwargs: object) -> CkanClient:
    return CkanClient(make_session(retries=0, backoff=0), server.url(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["https://ckan.test", "https://ckan.test/", "https://ckan.test/api/3", "https://ckan.test/api/3/action/"],
)
def test_action_base_accepts_site_or_api_urls(url: str) -> None:
    assert action_base(url) == "https://ckan.test/api/3/action"


def test_action_returns_the_result_and_sends_parameters(standin: StandInServer) -> None:
    standin.route(f"{ACTION}/organization_show", handler=lambda r: ok({"name": r.query["id"]}))
    ckan = client(standin)
    assert ckan.action("organization_show", id="wfp", include_datasets=False) == {"name": "wfp"}
    sent = standin.requests_to(f"{ACTION}/organization_show")[0]
    assert sent.query == {"id": "wfp", "include_datasets": "false"}
    assert ckan.calls == 1


def test_ckan_errors_name_the_action_and_the_reason(standin: StandInServer) -> None:
    standin.route(
        f"{ACTION}/organization_show",
        status=404,
        json={"success": False, "error": {"__type": "Not Found Error", "message": "Not found"}},
    )
    standin.route(f"{ACTION}/package_show", body=b"<html>gateway</html>", status=502)
    standin.route(f"{ACTION}/status_show", json={"success": False, "error": "Access denied"})
    ckan = client(standin)
    with pytest.raises(CkanError, match=r"CKAN organization_show: HTTP 404: Not found") as caught:
        ckan.action("organization_show", id="nobody")
    assert caught.value.status == 404
    with pytest.raises(CkanError, match=r"package_show: answer is not JSON \(HTTP 502\)"):
        ckan.action("package_show", id="x")
    with pytest.raises(CkanError, match="Access denied"):
        ckan.action("status_show")


def test_transport_failures_are_ckan_errors(standin: StandInServer) -> None:
    standin.route(f"{ACTION}/site_read", json={"success": True, "result": True})
    standin.inject(f"{ACTION}/site_read", Fault(reset=True))
    with pytest.raises(CkanError, match="site_read: connection"):
        client(standin).action("site_read")
    with pytest.raises(CkanError, match="unsupported_scheme"):
        CkanClient(make_session(retries=0), "ftp://ckan.test").action("site_read")


def test_post_sends_json_and_the_api_key(standin: StandInServer) -> None:
    standin.route(f"{ACTION}/package_create", method="POST", handler=lambda r: ok(r.json()))
    result = client(standin, api_key="secret").post("package_create", {"name": "p", "tags": [{"name": "a"}]})
    assert result == {"name": "p", "tags": [{"name": "a"}]}
    assert standin.requests_to(f"{ACTION}/package_create")[0].headers["Authorization"] == "secret"


def test_package_search_pages_until_the_count(standin: StandInServer) -> None:
    packages = [{"id": f"p{i}"} for i in range(7)]

    def search(request: RecordedRequest) -> Reply:
        start, rows = int(request.query["start"]), int(request.query["rows"])
        rows = min(rows, 3)  # the site caps rows, as CKAN's search.rows_max does
        return ok({"count": len(packages), "results": packages[start : start + rows]})

    standin.route(f"{ACTION}/package_search", handler=search)
    found = list(client(standin).package_search(rows=5, fq="organization:x"))
    assert [p["id"] for p in found] == [p["id"] for p in packages]
    calls = standin.requests_to(f"{ACTION}/package_search")
    assert [c.query["start"] for c in calls] == ["0", "3", "6"]
    assert all(c.query["fq"] == "organization:x" for c in calls)


def test_package_search_gives_up_when_stuck(standin: StandInServer) -> None:
    def stuck(request: RecordedRequest) -> Reply:
        start = int(request.query["start"])
        return ok({"count": 10, "results": [{"id": "a"}, {"id": "b"}] if start == 0 else []})

    standin.route(f"{ACTION}/package_search", handler=stuck)
    found = []
    with pytest.raises(CkanError, match=r"no progress for 5 pages \(count 10, fetched 2\)"):
        for package in client(standin).package_search(rows=2):
            found.append(package)
    assert len(found) == 2
    # one page with results, then five that fetched nothing
    assert len(standin.requests_to(f"{ACTION}/package_search")) == 1 + 5


def test_organization_list_pages_until_empty(standin: StandInServer) -> None:
    names = [f"org-{i}" for i in range(5)]

    def listing(request: RecordedRequest) -> Reply:
        offset, limit = int(request.query["offset"]), int(request.query["limit"])
        return ok(names[offset : offset + limit])

    standin.route(f"{ACTION}/organization_list", handler=listing)
    assert list(client(standin).organization_list(limit=2)) == names
    assert [r.query["offset"] for r in standin.requests_to(f"{ACTION}/organization_list")] == [
        "0",
        "2",
        "4",
        "5",
    ]


def test_search_count_returns_the_count_and_first_result(standin: StandInServer) -> None:
    standin.route(
        f"{ACTION}/package_search", handler=lambda r: ok({"count": 42, "results": [{"id": r.query["sort"]}]})
    )
    assert client(standin).search_count(sort="metadata_modified desc") == (
        42,
        {"id": "metadata_modified desc"},
    )


class _Clock:
    """Stands in for the ``time`` module of the CKAN client: sleeping advances it, instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_delay_paces_consecutive_calls(standin: StandInServer, monkeypatch: pytest.MonkeyPatch) -> None:
    standin.route(f"{ACTION}/site_read", json={"success": True, "result": True})
    clock = _Clock()
    monkeypatch.setattr(ckan_module, "time", clock)
    ckan = client(standin, delay=0.25)
    for _ in range(3):
        ckan.action("site_read")
    clock.now += 0.1  # time spent elsewhere counts towards the pause
    ckan.action("site_read")
    assert clock.sleeps == [0.25, 0.25, 0.15]  # none before the first call
    assert len(standin.requests_to(f"{ACTION}/site_read")) == 4 == ckan.calls


def test_no_delay_never_sleeps(standin: StandInServer, monkeypatch: pytest.MonkeyPatch) -> None:
    standin.route(f"{ACTION}/site_read", json={"success": True, "result": True})
    clock = _Clock()
    monkeypatch.setattr(ckan_module, "time", clock)
    ckan = client(standin)
    for _ in range(3):
        ckan.action("site_read")
    assert clock.sleeps == [] and len(standin.requests_to(f"{ACTION}/site_read")) == 3
