"""The ElOverblik third-party API client (no Dagster): access token, metering points, hourly
time series.

ElOverblik hands a third party a long-lived *refresh* token (``ELOVERBLIK_TOKEN``); every call
needs a short-lived *access* token fetched with it from ``GET /api/Token``. The legacy cached that
token in Redis for an hour; here the client keeps it for an hour (a run rarely lasts longer, and
a 401 on a cached token fetches a new one once). Answers that are not the expected JSON are an
``EloverblikError`` of kind ``bad_answer``; transport failures and statuses are the shared
``FetchError`` kinds.
"""

import threading
import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import orjson
import requests

from ecr_pipelines.lib.http import ErrorKind, FetchError, request

TOKEN_SECONDS = 3600
BAD_ANSWER = "bad_answer"


class EloverblikError(Exception):
    """ElOverblik answered, but not with what the API promises (kind ``bad_answer``)."""

    kind = BAD_ANSWER


def _decode(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EloverblikError(f"{what}: the answer is not JSON ({exc})") from exc


class EloverblikClient:
    """One client per run; thread-safe (the measurement import fetches several points at once)."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        refresh_token: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._refresh_token = refresh_token
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_until = 0.0

    def access_token(self, *, renew: bool = False) -> str:
        with self._lock:
            if renew or self._token is None or self._clock() >= self._token_until:
                response = request(
                    self.session,
                    "GET",
                    f"{self.base_url}/api/Token",
                    headers={"Authorization": f"Bearer {self._refresh_token}", "Accept": "application/json"},
                )
                result = _decode(response.content, "token").get("result") if response.content else None
                if not isinstance(result, str) or not result:
                    raise EloverblikError("token: the answer has no access token in `result`")
                self._token = result
                self._token_until = self._clock() + TOKEN_SECONDS
            return self._token

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base_url}{path}"
        for attempt in (1, 2):
            headers = {
                "Authorization": f"Bearer {self.access_token(renew=attempt == 2)}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            }
            try:
                response = request(self.session, method, url, headers=headers, **kwargs)
            except FetchError as exc:
                # An access token ElOverblik stopped accepting before its hour: one new token.
                if exc.kind is ErrorKind.HTTP_STATUS and exc.status == 401 and attempt == 1:
                    continue
                raise
            return _decode(response.content, path)
        raise AssertionError("unreachable")

    def meteringpoints(self, customer_key: str) -> list[dict[str, Any]]:
        """The customer's metering points (raw ElOverblik dicts, child points included)."""
        answer = self._call(
            "GET", f"/api/Authorization/Authorization/MeteringPoints/customerKey/{customer_key}"
        )
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, list):
            raise EloverblikError("metering points: the answer has no `result` list")
        return result

    def timeseries(self, gsrns: Sequence[str], date_from: date, date_to: date) -> list[dict[str, Any]]:
        """The raw ``result`` entries for the points, hourly, from ``date_from`` up to but not
        including ``date_to`` (the API's own rule)."""
        body = orjson.dumps({"meteringPoints": {"meteringPoint": list(gsrns)}})
        answer = self._call(
            "POST",
            f"/api/MeterData/GetTimeSeries/{date_from.isoformat()}/{date_to.isoformat()}/Hour",
            data=body,
        )
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, list):
            raise EloverblikError("time series: the answer has no `result` list")
        return result
