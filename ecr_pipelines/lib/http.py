"""The one HTTP client every upstream call goes through.

A ``requests.Session`` with connect/read timeouts on every request, urllib3 ``Retry`` with
exponential backoff for connection failures and 429/502/503/504 answers, a ``User-Agent``
naming the project and its version, and TLS verification on unless switched off. Failures are
turned into one small classification (``ErrorKind``) that stages store in their error columns.
"""

import hashlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.settings import USER_AGENT

CHUNK = 64 * 1024
HEAD_BYTES = 64 * 1024
RETRY_STATUSES = (429, 502, 503, 504)


class ErrorKind(StrEnum):
    HTTP_STATUS = "http_status"
    CONNECTION = "connection"
    SSL = "ssl"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    UNSUPPORTED_SCHEME = "unsupported_scheme"


class FetchError(Exception):
    """An upstream call that did not give a usable answer, classified."""

    def __init__(self, kind: ErrorKind, message: str, url: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.url = url
        self.status = status

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"{self.kind.value}: {self.message}{where}"

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "status": self.status, "message": self.message, "url": self.url}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: requests hides urllib3's MaxRetryError in
    ``args[0]``, which hides the real cause in ``.reason``."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += [arg for arg in current.args if isinstance(arg, BaseException)]
        stack.extend(e for e in linked if isinstance(e, BaseException))


def classify(exc: BaseException, url: str = "") -> FetchError:
    """Map an exception from requests/urllib3 (or our own) onto ``ErrorKind``."""
    if isinstance(exc, FetchError):
        return exc
    chain = list(_causes(exc))
    if isinstance(exc, requests.exceptions.InvalidSchema | requests.exceptions.MissingSchema):
        return FetchError(ErrorKind.UNSUPPORTED_SCHEME, str(exc), url)
    if any(isinstance(e, requests.exceptions.SSLError | ssl.SSLError) for e in chain):
        return FetchError(ErrorKind.SSL, "TLS handshake or certificate failure", url)
    # urllib3's NewConnectionError (refused, unreachable) subclasses its TimeoutError for
    # historical reasons; it is a connection failure.
    timeouts = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if any(
        isinstance(e, timeouts) and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain
    ):
        return FetchError(ErrorKind.TIMEOUT, "no answer within the timeout", url)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return FetchError(ErrorKind.CONNECTION, "response body truncated or corrupt", url)
    if isinstance(exc, requests.exceptions.RetryError):
        return FetchError(ErrorKind.CONNECTION, "retries exhausted", url)
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | OSError):
        return FetchError(ErrorKind.CONNECTION, f"connection failed: {type(exc).__name__}", url)
    raise exc


def check_scheme(url: str) -> None:
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(ErrorKind.UNSUPPORTED_SCHEME, f"cannot fetch {scheme or 'scheme-less'} URLs", url)


class _TimeoutAdapter(HTTPAdapter):
    """requests has no session-wide timeout; this adapter supplies one to every request."""

    def __init__(self, timeout: tuple[float, float], **kwargs: object) -> None:
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def make_session(
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 0.5,
    verify: bool = True,
    user_agent: str = USER_AGENT,
    retry_statuses: tuple[int, ...] = RETRY_STATUSES,
) -> requests.Session:
    """A session for one upstream. Retries cover connection errors and the transient statuses;
    POST is retried too because every call we make is idempotent (searches and upserts)."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        backoff_max=30,
        status_forcelist=retry_statuses,
        allowed_methods=frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = _TimeoutAdapter((connect_timeout, read_timeout), max_retries=retry, pool_maxsize=32)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    session.verify = verify
    return session


def request(session: requests.Session, method: str, url: str, **kwargs: object) -> requests.Response:
    """One call; a non-2xx answer or a transport failure becomes a ``FetchError``."""
    check_scheme(url)
    try:
        response = session.request(method, url, **kwargs)
    except requests.exceptions.RequestException as exc:
        raise classify(exc, url) from exc
    if not response.ok:
        raise FetchError(ErrorKind.HTTP_STATUS, f"HTTP {response.status_code}", url, response.status_code)
    return response


@dataclass
class DownloadResult:
    key: str
    size: int
    sha1: str
    content_type: str | None
    etag: str | None
    head: bytes = field(repr=False, default=b"")  # first bytes, for charset / file-type sniffing


class _CappedStream:
    """A file-like view of a streamed response body that hashes, keeps the first bytes, and
    stops with TOO_LARGE as soon as the cap is passed (before the rest is read)."""

    def __init__(self, response: requests.Response, max_bytes: int, url: str) -> None:
        self._chunks = response.iter_content(CHUNK)
        # A bytearray: S3 reads 8 MiB at a time, and growing bytes chunk by chunk is quadratic.
        self._buffer = bytearray()
        self._max = max_bytes
        self._url = url
        self.size = 0
        self.sha1 = hashlib.sha1()
        self.head = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            except requests.exceptions.RequestException as exc:
                raise classify(exc, self._url) from exc
            self.size += len(chunk)
            if self.size > self._max:
                raise FetchError(ErrorKind.TOO_LARGE, f"larger than {self._max} bytes", self._url)
            self.sha1.update(chunk)
            if len(self.head) < HEAD_BYTES:
                self.head += chunk[: HEAD_BYTES - len(self.head)]
            self._buffer += chunk
        if size < 0 or size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        return data


def _capped(response: requests.Response, max_bytes: int, url: str) -> _CappedStream:
    """The body as a capped stream; refused at once when its Content-Length is over the cap."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(ErrorKind.TOO_LARGE, f"Content-Length {declared} > {max_bytes} bytes", url)
    return _CappedStream(response, max_bytes, url)


def get_bytes(
    session: requests.Session, url: str, *, max_bytes: int, headers: dict[str, str] | None = None
) -> bytes:
    """A small body (a listing page) read whole, streamed so that a body over ``max_bytes`` is
    refused (``FetchError`` TOO_LARGE) before more of it is read."""
    response = request(session, "GET", url, headers=headers, stream=True)
    with response:
        return _capped(response, max_bytes, url).read()


def download_to_blob(
    session: requests.Session,
    url: str,
    store: BlobStore,
    key: str,
    *,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
) -> DownloadResult:
    """Stream ``url`` into ``store`` under ``key`` without holding the body in memory.

    Raises ``FetchError`` (the object is then not written, or the old one is kept).
    """
    response = request(session, "GET", url, headers=headers, stream=True)
    with response:
        stream = _capped(response, max_bytes, url)
        kind = content_type or response.headers.get("Content-Type")
        store.put_stream(key, stream, kind)  # type: ignore[arg-type]
        return DownloadResult(
            key=key,
            size=stream.size,
            sha1=stream.sha1.hexdigest(),
            content_type=response.headers.get("Content-Type"),
            etag=response.headers.get("ETag"),
            head=stream.head,
        )
