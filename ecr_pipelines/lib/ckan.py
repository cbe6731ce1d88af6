"""A small client of the CKAN action API (``/api/3/action/<name>``), on the shared HTTP session.

Used for the legacy IATI Registry and meant for the CKAN packager too, so it knows nothing
about IATI. Every answer is checked the same way: HTTP status, JSON body, ``success: true``;
anything else raises ``CkanError`` naming the action and CKAN's own error message.

Paging:

* ``organization_list`` pages with ``offset`` / ``limit`` until a page comes back empty.
* ``package_search`` pages with ``start`` / ``rows`` until as many results as ``count`` were
  fetched. ``start`` advances by what a page really returned (CKAN caps ``rows``). When neither
  ``count`` nor the number fetched moves for ``stuck_pages`` pages in a row, the registry is
  not making progress and the search is abandoned with an error instead of looping forever.
"""

import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests

from ecr_pipelines.lib.http import FetchError, check_scheme, classify

DEFAULT_ROWS = 1000
STUCK_PAGES = 5


class CkanError(RuntimeError):
    """A CKAN call that failed, with the action name and CKAN's (or the transport's) reason."""

    def __init__(self, action: str, message: str, status: int | None = None) -> None:
        super().__init__(f"CKAN {action}: {message}")
        self.action = action
        self.status = status


def action_base(url: str) -> str:
    """``https://host`` / ``https://host/api/3`` / ``https://host/api/3/action`` → the action root."""
    base = url.rstrip("/")
    if base.endswith("/api/3/action"):
        return base
    if base.endswith("/api/3"):
        return base + "/action"
    return base + "/api/3/action"


def _error_text(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or error.get("__type") or ""
        details = {k: v for k, v in error.items() if k not in ("message", "__type")}
        return f"{message} {details}".strip() if details else str(message)
    return str(error) if error else "success is not true"


class CkanClient:
    """Calls actions of one CKAN site. ``delay`` seconds separate consecutive calls (the public
    IATI Registry asked clients to pace themselves); ``api_key`` is sent as ``Authorization``."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        *,
        api_key: str | None = None,
        delay: float = 0.0,
        timeout: float | tuple[float, float] | None = None,
    ) -> None:
        if not url:
            raise CkanError("(setup)", "no CKAN URL configured")
        self.session = session
        self.base = action_base(url)
        self.headers = {"Authorization": api_key} if api_key else {}
        self.delay = delay
        self.timeout = timeout
        self.calls = 0
        self._last_call = 0.0

    def _pace(self) -> None:
        if self.delay and self._last_call:
            wait = self._last_call + self.delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_call = time.monotonic()

    def _call(self, method: str, name: str, **kwargs: Any) -> Any:
        url = f"{self.base}/{name}"
        self._pace()
        self.calls += 1
        try:
            check_scheme(url)
            response = self.session.request(method, url, headers=self.headers, timeout=self.timeout, **kwargs)
            body = response.json() if response.content else None
        except FetchError as exc:
            raise CkanError(name, str(exc)) from exc
        except requests.exceptions.JSONDecodeError:
            raise CkanError(
                name, f"answer is not JSON (HTTP {response.status_code})", response.status_code
            ) from None
        except requests.exceptions.RequestException as exc:
            raise CkanError(name, str(classify(exc, url))) from exc
        if not isinstance(body, dict) or response.status_code != 200 or body.get("success") is not True:
            raise CkanError(name, f"HTTP {response.status_code}: {_error_text(body)}", response.status_code)
        return body.get("result")

    def action(self, name: str, /, **params: Any) -> Any:
        """GET an action with query parameters; return its ``result``."""
        query = {k: _query_value(v) for k, v in params.items() if v is not None}
        return self._call("GET", name, params=query)

    def post(self, name: str, data: Mapping[str, Any]) -> Any:
        """POST an action with a JSON body (write actions, long queries); return its ``result``."""
        return self._call("POST", name, json=dict(data))

    # -- paging ------------------------------------------------------------------------------------
    def organization_list(self, limit: int = DEFAULT_ROWS, **params: Any) -> Iterator[Any]:
        """Every organization (names, or dicts with ``all_fields=True``), page by page."""
        offset = 0
        while True:
            page = self.action("organization_list", offset=offset, limit=limit, **params)
            if not isinstance(page, list):
                raise CkanError("organization_list", f"result is a {type(page).__name__}, not a list")
            if not page:
                return
            yield from page
            offset += len(page)

    def package_search(
        self, rows: int = DEFAULT_ROWS, stuck_pages: int = STUCK_PAGES, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Every result of a search (``q``, ``fq``, ``sort``, ...), page by page."""
        fetched = 0
        last: tuple[int, int] | None = None
        unchanged = 0
        while True:
            result = self.action("package_search", rows=rows, start=fetched, **params)
            if not isinstance(result, dict) or not isinstance(result.get("results"), list):
                raise CkanError("package_search", "result has no results list")
            count = result.get("count")
            if not isinstance(count, int):
                raise CkanError("package_search", "result has no count")
            page = result["results"]
            yield from page
            fetched += len(page)
            if fetched >= count:
                return
            if last == (count, fetched):
                unchanged += 1
                if unchanged >= stuck_pages:
                    raise CkanError(
                        "package_search",
                        f"no progress for {stuck_pages} pages (count {count}, fetched {fetched}); giving up",
                    )
            else:
                unchanged = 0
            last = (count, fetched)

    def search_count(self, **params: Any) -> tuple[int, dict[str, Any] | None]:
        """``count`` of a search and its first result (with ``sort``, e.g. the newest change)."""
        result = self.action("package_search", rows=1, **params)
        if not isinstance(result, dict) or not isinstance(result.get("count"), int):
            raise CkanError("package_search", "result has no count")
        results = result.get("results") or []
        return result["count"], (results[0] if results else None)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
