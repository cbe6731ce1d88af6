"""Reading a CKAN datastore resource page by page, the way the legacy ckanpackager did.

Every call is a ``POST`` of a JSON body to the ``datastore_search`` action URL the request
names, with ``Authorization: <key>`` only when an API key was given. The sequence of calls is
the legacy's:

1. the caller's parameters with ``offset=0, limit=0``: the ``fields`` (the header) and the
   ``_backend`` of the site (absent on plain CKAN);
2. pages of ``min(page_size, limit)`` rows (``page_size`` when there is no limit):

   * plain CKAN: ``offset`` paging, ``offset`` growing by the page limit;
   * ``_backend == "solr"``: no ``offset``, ``cursor="*"`` and then each answer's
     ``next_cursor``;
   * ``_backend == "versioned-datastore"``: no ``offset``, then each answer's ``after``;
   * a caller's ``offset > 0`` always means offset paging (a cursor cannot start mid-way);

   until a page comes back empty, or ``limit`` rows came (the last page is cut).

Two guards the legacy lacked, neither of which changes a normal sequence: a site that capped
the page (its answer's ``limit`` is below the one asked for, as CKAN does above ``rows_max``)
moves the offset by what it really used instead of skipping rows, and a versioned datastore page
without ``after`` ends the download instead of starting it over.

Rows stay in pages: a page is decoded, handed on, and dropped; the next one is already being
fetched by a background thread (``prefetch``) so that the site prepares it while this process
writes the previous one: at most three pages live at once (handed over, waiting, being
fetched). Answers are read in one piece and decoded with orjson, or with the standard
library's decoder where orjson would differ (integers beyond 64 bits, which it turns into
floats) or refuses (NaN); on datastore pages orjson is about 2.5 times as fast. For large
CSV/TSV downloads with offset paging, ``encoded_pages_by_workers`` sends the same requests from
worker processes that also encode the pages. Failures
are ``DatastoreError``: the ``lib/http`` classification for transport trouble and HTTP errors
(``http_status`` with the code and CKAN's own message), ``invalid_answer`` for a 200 that is
not a successful search result. The API key never appears in errors or reprs.
"""

import json
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import requests
import urllib3
import urllib3.util.retry

from ecr_pipelines.lib.ckan import CkanError
from ecr_pipelines.lib.http import ErrorKind, FetchError, check_scheme, classify

DEFAULT_PAGE_SIZE = 5000  # the legacy PAGE_SIZE: "CKAN times out requests at 60 s"
# What a datastore request may send on to CKAN (the legacy schema's "forward" flags).
FORWARDED = ("resource_id", "filters", "q", "plain", "language", "limit", "offset", "fields", "sort")
SOLR = "solr"
VERSIONED = "versioned-datastore"
INVALID_ANSWER = "invalid_answer"
ACTION = "datastore_search"

Page = list[dict[str, Any]]
T = TypeVar("T")


# Every byte that is not an ASCII digit becomes a space, so a run of digits is a run of "0"s.
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_NUMBER = b"0" * 19


def _loads(content: bytes) -> Any:
    """JSON with orjson (several times faster than ``json`` on datastore pages), except where it
    would differ: orjson turns integers beyond 64 bits into floats, losing digits that ``json``
    keeps, and refuses NaN and Infinity. A run of 19 digits anywhere (a cheap byte scan) sends
    the page to ``json``, as does anything orjson refuses."""
    if _LONG_NUMBER in content.translate(_DIGITS_ONLY):
        return json.loads(content)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(content)


class DatastoreError(CkanError):
    """A ``datastore_search`` call that failed. ``kind`` is an ``ErrorKind`` value of
    ``lib/http`` (``http_status``, ``connection``, ``timeout``, ...) or ``invalid_answer``."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(ACTION, f"{kind}: {message}", status)
        self.kind = kind
        self.reason = message

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "status": self.status, "message": self.reason}

    def __reduce__(self) -> tuple[Any, ...]:  # raised in worker processes, re-raised here
        return (DatastoreError, (self.kind, self.reason, self.status))


@dataclass(frozen=True)
class Description:
    """What the first (``limit=0``) call tells: the columns in CKAN's order and the backend."""

    fields: tuple[str, ...]
    types: tuple[str, ...]
    backend: str | None
    total: int | None

    @property
    def paging(self) -> str:
        return {SOLR: "cursor", VERSIONED: "after"}.get(self.backend or "", "offset")


def shown_url(url: str) -> str:
    """The URL for messages: without credentials in its authority, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def ckan_error_text(body: Any) -> str:
    """CKAN's explanation in an error answer (``error.message`` and any field errors)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    message = str(error.get("message") or error.get("__type") or "")
    details = {k: v for k, v in error.items() if k not in ("message", "__type")}
    return f"{message} {json.dumps(details, ensure_ascii=False)}".strip() if details else message


def _count(params: Mapping[str, Any], name: str) -> int:
    """The legacy ``int(value or 0)``, with a clear error instead of a crash mid-download."""
    value = params.get(name)
    if value in (None, ""):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, not {number}")
    return number


class DatastoreSearch:
    """One resource's rows, page by page. ``params`` are the forwarded request parameters
    (``resource_id``, ``filters``, ``q``, ``plain``, ``language``, ``limit``, ``offset``,
    ``fields``, ``sort``); ``None`` values are left out, as the legacy did."""

    def __init__(
        self,
        session: requests.Session,
        api_url: str,
        params: Mapping[str, Any],
        *,
        api_key: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        prefetch: bool = True,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._session = session
        self._url = api_url
        self._shown = shown_url(api_url)
        self._headers = {"Authorization": api_key} if api_key else {}
        self.params = {k: v for k, v in params.items() if v is not None}
        self.offset = _count(self.params, "offset")
        self.limit = _count(self.params, "limit")
        self.page_size = page_size
        self.prefetch = prefetch
        self.calls = 0
        self._description: Description | None = None

    def __repr__(self) -> str:  # never the API key
        return f"DatastoreSearch({self._shown!r}, {self.params!r}, page_size={self.page_size})"

    # -- HTTP ----------------------------------------------------------------------------------------
    def _post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls += 1
        try:
            check_scheme(self._url)
            # Read in one call rather than requests' 10 kB chunks: each chunk is a GIL hand-over,
            # and a thread waiting for the GIL behind a busy consumer would stall on every one.
            response = self._session.post(self._url, json=body, headers=self._headers, stream=True)
            with response:
                content = response.raw.read(decode_content=True)
        except FetchError as exc:
            raise DatastoreError(exc.kind.value, f"{exc.message} ({self._shown})", exc.status) from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # The body is read through urllib3 directly, whose errors requests does not wrap.
            try:
                failure = classify(exc, self._shown)
            except Exception:
                failure = FetchError(ErrorKind.CONNECTION, "response body truncated or corrupt", self._shown)
            raise DatastoreError(failure.kind.value, f"{failure.message} ({self._shown})") from exc
        try:
            answer = _loads(content)
        except ValueError:
            answer = None
        if not response.ok:
            reason = ckan_error_text(answer)
            message = f"HTTP {response.status_code}" + (f": {reason}" if reason else "") + f" ({self._shown})"
            raise DatastoreError(ErrorKind.HTTP_STATUS.value, message, response.status_code)
        if not isinstance(answer, dict):
            raise DatastoreError(INVALID_ANSWER, f"the answer is not a JSON object ({self._shown})", 200)
        result = answer.get("result")
        if answer.get("success") is not True or not isinstance(result, dict):
            reason = ckan_error_text(answer) or "success is not true"
            raise DatastoreError(INVALID_ANSWER, f"{reason} ({self._shown})", response.status_code)
        return result

    # -- the legacy algorithm ------------------------------------------------------------------------
    def describe(self) -> Description:
        """The first call: the caller's parameters with ``offset=0, limit=0``."""
        if self._description is None:
            result = self._post({**self.params, "offset": 0, "limit": 0})
            fields = result.get("fields")
            if not isinstance(fields, list) or not all(isinstance(f, dict) and "id" in f for f in fields):
                raise DatastoreError(INVALID_ANSWER, f"the answer has no fields list ({self._shown})", 200)
            total = result.get("total")
            self._description = Description(
                fields=tuple(str(f["id"]) for f in fields),
                types=tuple(str(f.get("type") or "") for f in fields),
                backend=result.get("_backend") or None,
                total=total if isinstance(total, int) else None,
            )
        return self._description

    def _records(self, result: Mapping[str, Any]) -> Page:
        records = result.get("records")
        if not isinstance(records, list) or (records and not isinstance(records[0], dict)):
            raise DatastoreError(INVALID_ANSWER, f"the answer has no records list ({self._shown})", 200)
        return records

    def _step(self, result: Mapping[str, Any], page_limit: int) -> int:
        """How far the offset moves after a page: the page limit, or less where CKAN capped it."""
        used = result.get("limit")
        capped = isinstance(used, int) and not isinstance(used, bool) and 0 < used < page_limit
        return used if capped else page_limit  # type: ignore[return-value]

    def paging(self) -> str:
        """``offset``, ``cursor`` or ``after``: how the pages will be asked for."""
        return "offset" if self.offset > 0 else self.describe().paging

    def pages(self) -> Iterator[Page]:
        """The rows as decoded pages (the last one cut at ``limit``); the empty page ends it."""
        self.describe()
        if not self.prefetch:
            return self._fetch_pages()
        return in_background(self._fetch_pages(), name="ckan-datastore-prefetch")

    def rows(self) -> Iterator[dict[str, Any]]:
        for page in self.pages():
            yield from page

    def _fetch_pages(self) -> Iterator[Page]:
        requested = self.limit
        page_limit = self.page_size if requested == 0 else min(self.page_size, requested)
        backend = None if self.offset > 0 else self.describe().backend
        body: dict[str, Any] = {**self.params, "limit": page_limit}
        if backend == SOLR:
            body.pop("offset", None)
            body["cursor"] = "*"
        elif backend == VERSIONED:
            body.pop("offset", None)
        else:
            body["offset"] = self.offset
        count = 0
        while True:
            result = self._post(body)
            records = self._records(result)
            if not records:
                return
            if requested and count + len(records) >= requested:
                yield records[: requested - count]
                return
            count += len(records)
            # The next request is prepared before the page is handed on, so that a prefetching
            # thread can send it while the consumer writes this one.
            if backend == SOLR:
                cursor = result.get("next_cursor")
                if not isinstance(cursor, str) or not cursor:
                    raise DatastoreError(
                        INVALID_ANSWER, f"the solr backend gave no next_cursor ({self._shown})", 200
                    )
                body["cursor"] = cursor
            elif backend == VERSIONED:
                after = result.get("after")
                if after is None:  # no way on: the legacy would have started over
                    yield records
                    return
                body["after"] = after
            else:
                body["offset"] += self._step(result, page_limit)
            yield records


# -- offset paging by worker processes ------------------------------------------------------------
# Decoding a page and encoding it as CSV is Python work that holds the GIL: in one process, a
# thread per stage still runs one stage at a time. With offset paging every request is known in
# advance, so worker processes can each fetch, decode and encode whole pages while this process
# only puts the encoded pages in order and deflates them. The requests are the legacy's (the
# same offsets, the same limits); only their timing differs.
PARALLEL_MIN_ROWS = 100_000  # below this, starting processes costs more than it saves
DEFAULT_WORKERS = 2

_worker_session: requests.Session | None = None


def session_options(session: requests.Session) -> dict[str, Any]:
    """The settings of a ``lib/http`` session (timeouts, retries, TLS), for the worker processes'
    own sessions; a session made otherwise gives ``make_session``'s defaults."""
    adapter = session.get_adapter("https://")
    options: dict[str, Any] = {"verify": session.verify}
    timeout = getattr(adapter, "_timeout", None)
    if isinstance(timeout, tuple) and len(timeout) == 2:
        options.update(connect_timeout=timeout[0], read_timeout=timeout[1])
    retry = getattr(adapter, "max_retries", None)
    if isinstance(retry, urllib3.util.retry.Retry):
        options.update(retries=int(retry.total or 0), backoff=float(retry.backoff_factor))
    user_agent = session.headers.get("User-Agent")
    if isinstance(user_agent, str):
        options["user_agent"] = user_agent
    return options


def _start_worker(options: dict[str, Any]) -> None:
    global _worker_session
    from ecr_pipelines.lib.http import make_session

    _worker_session = make_session(**options)


@dataclass(frozen=True)
class _PageJob:
    api_url: str
    api_key: str | None = field(repr=False)
    body: dict[str, Any]
    delimiter: str
    fields: tuple[str, ...]
    types: tuple[str, ...]
    keep: int | None  # encode only the first rows (the page where the limit is reached)


def _encode_page(job: _PageJob) -> tuple[bytes, int, int, int]:
    """In a worker: one request; the page encoded; (bytes, rows in the answer, rows encoded, step)."""
    from ecr_pipelines.ckan.formats import DelimitedEncoder

    assert _worker_session is not None
    search = DatastoreSearch(_worker_session, job.api_url, {}, api_key=job.api_key, prefetch=False)
    result = search._post(job.body)
    records = search._records(result)
    kept = records if job.keep is None else records[: job.keep]
    data = DelimitedEncoder(job.fields, job.types, job.delimiter).page(kept)
    return data, len(records), len(kept), search._step(result, int(job.body["limit"]))


class _Planned:
    def __init__(self, index: int, future: Future[tuple[bytes, int, int, int]]) -> None:
        self.index = index
        self.future = future


def parallel_rows(search: "DatastoreSearch") -> int | None:
    """How many rows offset paging by workers would fetch, or None when it cannot be used (not
    offset paging, or the site did not say how many rows there are)."""
    description = search.describe()
    if search.paging() != "offset" or description.total is None:
        return None
    available = max(description.total - search.offset, 0)
    return min(available, search.limit) if search.limit else available


def encoded_pages_by_workers(
    search: "DatastoreSearch", delimiter: str, *, workers: int, options: dict[str, Any]
) -> Iterator[tuple[bytes, int]]:
    """CSV/TSV pages (without header) and their row counts, in order, fetched and encoded by
    ``workers`` processes. The legacy's offsets, limits and stop rules: page 0 first (its answer
    tells whether CKAN capped the page); then the pages up to the one expected to end the download
    (the empty page after ``total`` rows, or the page where ``limit`` is reached), at most
    ``workers + 1`` at a time; past that plan one page at a time until a page is empty, as the
    legacy would if rows were added meanwhile. A page that disagrees with the plan (rows removed
    meanwhile) is asked for again with the right cut; pages asked for beyond an early end are
    dropped."""
    description = search.describe()
    requested = search.limit
    page_limit = search.page_size if requested == 0 else min(search.page_size, requested)
    available = max((description.total or 0) - search.offset, 0)
    context = multiprocessing.get_context("spawn")  # fork is unsafe in a process with threads

    def job(index: int, step: int, keep: int | None) -> _PageJob:
        body = {**search.params, "limit": page_limit, "offset": search.offset + index * step}
        return _PageJob(
            search._url, search._headers.get("Authorization"), body, delimiter, description.fields,
            description.types, keep,
        )  # fmt: skip

    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(options,)
    ) as pool:
        try:

            def submit(index: int, step: int, keep: int | None) -> _Planned:
                search.calls += 1
                return _Planned(index, pool.submit(_encode_page, job(index, step, keep)))

            def keep_for(index: int, step: int) -> int | None:
                left = requested - index * step
                return left if requested and left < page_limit else None

            first = submit(0, page_limit, keep_for(0, page_limit))
            step = first.future.result()[3]
            if requested and requested <= available:
                last = -(-requested // step) - 1  # the page where the limit is reached
            else:
                last = -(-available // step)  # the empty page after the rows
            pending = deque([first])
            next_index = 1
            count = 0
            while pending:
                while len(pending) <= workers and next_index <= last:
                    pending.append(submit(next_index, step, keep_for(next_index, step)))
                    next_index += 1
                planned = pending.popleft()
                data, in_page, encoded, _ = planned.future.result()
                if in_page == 0:
                    return
                want = requested - count if requested and count + in_page >= requested else None
                if (want if want is not None else in_page) != encoded:
                    # The plan assumed full pages before this one; ask again with the right cut.
                    again = submit(planned.index, step, want)
                    data, in_page, encoded, _ = again.future.result()
                if want is not None:
                    yield data, encoded
                    return
                count += in_page
                yield data, encoded
                if planned.index == last:
                    last += 1  # past the plan: on until an empty page, as the legacy
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def in_background(source: Iterator[T], *, depth: int = 1, name: str = "ckan-background") -> Iterator[T]:
    """``source`` run ahead in a thread of its own, at most ``depth`` items ahead.

    While the consumer handles item N, the thread produces item N+1 (for pages: sends the request
    and decodes the answer); whatever either side does outside the GIL (socket reads, deflate,
    file writes) then overlaps with the other's Python work. An error of the source is raised in
    the consumer; a consumer that stops early (or fails) stops the thread after its current item,
    and waits for that, so nothing runs on behind its back (a session it closes next, say).
    """
    handover: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                handover.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handover.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
