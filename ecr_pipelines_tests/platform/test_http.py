"""The shared HTTP client against the stand-in server: every injected fault is classified,
retries happen and stop, downloads stream into the blob store under a size cap."""

import hashlib
from pathlib import Path

import pytest
import requests

from ecr_pipelines.dev.standins import Fault, StandInServer
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.http import ErrorKind, FetchError, download_to_blob, make_session, request
from ecr_pipelines.lib.settings import USER_AGENT


def _session(**kwargs: object) -> requests.Session:
    options = {"connect_timeout": 2.0, "read_timeout": 2.0, "retries": 2, "backoff": 0.01}
    options.update(kwargs)
    return make_session(**options)  # type: ignore[arg-type]


def test_ok_answer_carries_our_user_agent(standin: StandInServer) -> None:
    standin.route("/ping", json={"ok": True})
    assert request(_session(), "GET", standin.url("/ping")).json() == {"ok": True}
    assert standin.requests_to("/ping")[0].headers["User-Agent"] == USER_AGENT


@pytest.mark.parametrize("status", [404, 500, 401])
def test_error_status_is_classified_with_its_code(standin: StandInServer, status: int) -> None:
    standin.route("/x", json={}, status=status)
    with pytest.raises(FetchError) as err:
        request(_session(), "GET", standin.url("/x"))
    assert (err.value.kind, err.value.status) == (ErrorKind.HTTP_STATUS, status)


def test_transient_statuses_are_retried_then_succeed(standin: StandInServer) -> None:
    standin.route("/flaky", json={"n": 1})
    standin.inject("/flaky", Fault(status=503, times=2))
    assert request(_session(), "GET", standin.url("/flaky")).json() == {"n": 1}
    assert len(standin.requests_to("/flaky")) == 3


def test_retries_stop_and_the_last_status_is_reported(standin: StandInServer) -> None:
    standin.route("/down", json={})
    standin.inject("/down", Fault(status=503))
    with pytest.raises(FetchError) as err:
        request(_session(retries=2), "GET", standin.url("/down"))
    assert (err.value.kind, err.value.status) == (ErrorKind.HTTP_STATUS, 503)
    assert len(standin.requests_to("/down")) == 3  # first try + 2 retries


def test_non_transient_statuses_are_not_retried(standin: StandInServer) -> None:
    standin.route("/gone", json={}, status=404)
    with pytest.raises(FetchError):
        request(_session(), "GET", standin.url("/gone"))
    assert len(standin.requests_to("/gone")) == 1


def test_connection_reset_is_a_connection_error_after_retries(standin: StandInServer) -> None:
    standin.route("/reset", json={})
    standin.inject("/reset", Fault(reset=True))
    with pytest.raises(FetchError) as err:
        request(_session(retries=1), "GET", standin.url("/reset"))
    assert err.value.kind == ErrorKind.CONNECTION
    assert len(standin.requests_to("/reset")) == 2


def test_reset_once_is_recovered_by_a_retry(standin: StandInServer) -> None:
    standin.route("/blip", json={"ok": 1})
    standin.inject("/blip", Fault(reset=True, times=1))
    assert request(_session(), "GET", standin.url("/blip")).json() == {"ok": 1}


def test_slow_answer_is_a_timeout(standin: StandInServer) -> None:
    standin.route("/slow", json={})
    # The answer would come, late: only a read timeout that is applied turns it into an error.
    standin.inject("/slow", Fault(delay=2.0))
    with pytest.raises(FetchError) as err:
        request(_session(read_timeout=0.3, retries=0), "GET", standin.url("/slow"))
    assert err.value.kind == ErrorKind.TIMEOUT
    assert len(standin.requests_to("/slow")) == 1  # retries=0: given up, not retried


def test_refused_connection_is_a_connection_error() -> None:
    with StandInServer() as server:
        url = server.url("/x")
    with pytest.raises(FetchError) as err:
        request(_session(retries=0), "GET", url)
    assert err.value.kind == ErrorKind.CONNECTION


def test_tls_failure_is_an_ssl_error(standin: StandInServer) -> None:
    standin.route("/x", json={})
    # TLS against a plain-HTTP server fails in the handshake, a real SSL error.
    with pytest.raises(FetchError) as err:
        request(_session(retries=0), "GET", standin.url("/x").replace("http://", "https://"))
    assert err.value.kind == ErrorKind.SSL


@pytest.mark.parametrize("url", ["ftp://example.test/file.xml", "file:///etc/passwd", "example.test/x"])
def test_unsupported_schemes_are_refused_before_any_traffic(url: str) -> None:
    with pytest.raises(FetchError) as err:
        request(_session(), "GET", url)
    assert err.value.kind == ErrorKind.UNSUPPORTED_SCHEME


def test_missing_header_fault_drops_the_header(standin: StandInServer) -> None:
    standin.route("/index.json", json={"datasets": []})
    assert request(_session(), "HEAD", standin.url("/index.json")).headers.get("ETag")
    standin.inject("/index.json", Fault(drop_headers=("ETag",)), method="HEAD")
    assert "ETag" not in request(_session(), "HEAD", standin.url("/index.json")).headers


def test_download_streams_into_the_blob_store(standin: StandInServer, tmp_path: Path) -> None:
    body = b"<iati-activities/>" * 50_000
    standin.route("/f.xml", body=body, headers={"Content-Type": "application/xml"})
    store = LocalBlobStore(tmp_path)
    result = download_to_blob(_session(), standin.url("/f.xml"), store, "source/f.xml", max_bytes=10**7)
    assert store.get_bytes("source/f.xml") == body
    assert result.size == len(body) and result.sha1 == hashlib.sha1(body).hexdigest()
    assert result.head == body[: len(result.head)] and len(result.head) == 64 * 1024
    assert result.content_type == "application/xml" and result.etag


def test_truncated_body_fails_and_keeps_the_old_object(standin: StandInServer, tmp_path: Path) -> None:
    standin.route("/t.xml", body=b"x" * 100_000)
    standin.inject("/t.xml", Fault(truncate=1000))
    store = LocalBlobStore(tmp_path)
    store.put_bytes("source/t.xml", b"previous")
    with pytest.raises(FetchError) as err:
        download_to_blob(_session(), standin.url("/t.xml"), store, "source/t.xml", max_bytes=10**7)
    assert err.value.kind == ErrorKind.CONNECTION
    assert store.get_bytes("source/t.xml") == b"previous"


def test_size_cap_from_the_header_and_while_streaming(standin: StandInServer, tmp_path: Path) -> None:
    standin.route("/big.xml", body=b"y" * 300_000)
    store = LocalBlobStore(tmp_path)
    with pytest.raises(FetchError) as err:
        download_to_blob(_session(), standin.url("/big.xml"), store, "big.xml", max_bytes=100_000)
    assert err.value.kind == ErrorKind.TOO_LARGE
    # Without a Content-Length the cap is enforced on the bytes actually read.
    standin.inject("/big.xml", Fault(drop_headers=("Content-Length",)))
    with pytest.raises(FetchError) as err:
        download_to_blob(_session(), standin.url("/big.xml"), store, "big.xml", max_bytes=100_000)
    assert err.value.kind == ErrorKind.TOO_LARGE
    assert not store.exists("big.xml")
