"""Telling data-flow (Airflow) that a data store table changed, as the legacy service did (B3, B7).

After a load, the legacy ``data-store-service`` triggered the data-flow DAG
``DATAFLOW_UPLOADER_DAG_ID`` (default ``DSSGenericPipeline``) through Airflow's experimental
API, HAWK-signed (sha256) with ``DATAFLOW_HAWK_ID`` / ``DATAFLOW_HAWK_KEY``::

    POST {DATAFLOW_BASE_URL}/api/experimental/dags/{dag_id}/dag_runs
         {"conf": {"data_uploader_schema_name": schema, "data_uploader_table_name": "L0" | "L1"}}
    GET  {DATAFLOW_BASE_URL}/api/experimental/dags/{dag_id}/dag_runs/{run id}  -> {"state": ...}

The run id used in the GET is the trigger answer's ``run_id`` with the prefix and the time zone
cut off (``manual__2019-08-29T14:35:19.512837+00:00`` -> ``2019-08-29T14:35:19.512837``): the
experimental API looks runs up by execution date. An upload waited for ``success`` (every 5 s,
360 times); ``wait_for_dag`` does the same within ``DATAFLOW_TIMEOUT_SECONDS``.

Answers are checked the HAWK way: a successful answer must carry a ``Server-Authorization``
header that matches its body, content type and our request. data-flow's API signs every answer
of a view it serves, so an answer without the header did not come from data-flow's API (a proxy
error page, a wrong ``DATAFLOW_BASE_URL``): it is refused as ``unsigned_response`` rather than
believed. ``DataflowSettings.require_response_signature=False`` relaxes that for a server known
not to sign. Error answers (4xx/5xx) are not checked: they are failures either way.

Every problem is a ``DataflowError`` with a ``kind`` (``DataflowErrorKind``). The HAWK key only
ever goes into the MAC computation: it is kept out of ``repr``, messages and logs, and any text
from the server is scrubbed of it before it is quoted.

``requests`` sessions come from ``ecr_pipelines.lib.http.make_session``. Its retries resend the
same signed request (same nonce and timestamp); data-flow does not record nonces, so a retry is
accepted, but a retried trigger can start a second DAG run when the first did arrive, and a
retry more than 60 s after signing (after a read timeout) fails data-flow's timestamp check and
comes back as ``unauthorized``.
"""

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlparse

import mohawk
import mohawk.exc
import mohawk.util
import requests

from ecr_pipelines.lib.http import ErrorKind, FetchError, request
from ecr_pipelines.lib.settings import env_str

log = logging.getLogger(__name__)

DEFAULT_DAG_ID = "DSSGenericPipeline"
DEFAULT_TIMEOUT_SECONDS = 1800.0
ALGORITHM = "sha256"
JSON = "application/json"
SUCCESS = "success"
FAILED = "failed"
TIMEOUT = "timeout"
# mohawk compares our request's timestamp with the clock when it checks the answer; its default
# of 60 s would refuse a good answer that took longer (a slow server, a retried request). The
# MAC still binds the answer to this request's nonce and timestamp, so a wide window is safe.
RESPONSE_SKEW_SECONDS = 900
_QUOTED_TEXT = 200


class DataflowErrorKind(StrEnum):
    UNAUTHORIZED = "unauthorized"  # 401/403: data-flow refused our id, key or signature
    NOT_FOUND = "not_found"  # 404: no such DAG (or run)
    HTTP_STATUS = "http_status"  # any other non-2xx answer
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    SSL = "ssl"
    BAD_SIGNATURE = "bad_signature"  # Server-Authorization present but not matching
    UNSIGNED_RESPONSE = "unsigned_response"  # a 2xx answer without Server-Authorization
    BAD_RESPONSE = "bad_response"  # not the JSON shape the experimental API answers


class DataflowError(Exception):
    """A data-flow call that did not give a usable, authentic answer, classified."""

    def __init__(
        self, kind: DataflowErrorKind, message: str, *, status: int | None = None, url: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.url = url

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "status": self.status, "message": self.message, "url": self.url}


@dataclass(frozen=True)
class DataflowSettings:
    """Where data-flow is and how to sign for it. ``hawk_key`` is left out of ``repr``."""

    base_url: str
    hawk_id: str
    hawk_key: str = field(repr=False)
    dag_id: str = DEFAULT_DAG_ID
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    require_response_signature: bool = True

    def __post_init__(self) -> None:
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"DATAFLOW_BASE_URL must be an http(s):// URL, not {self.base_url!r}")
        _check_header_value("DATAFLOW_HAWK_ID", self.hawk_id)
        # mohawk encodes the key as ASCII for the HMAC; say so here, once, without quoting it.
        if not self.hawk_key.isascii():
            raise ValueError("DATAFLOW_HAWK_KEY must be ASCII")
        if not self.dag_id:
            raise ValueError("DATAFLOW_UPLOADER_DAG_ID must not be empty")
        if not (self.timeout_seconds >= 0 and math.isfinite(self.timeout_seconds)):
            raise ValueError(f"DATAFLOW_TIMEOUT_SECONDS must be a number >= 0, not {self.timeout_seconds!r}")

    @classmethod
    def from_env(cls) -> "DataflowSettings | None":
        """The ``DATAFLOW_*`` settings; None when ``DATAFLOW_BASE_URL`` is unset (no trigger).

        Raises ``ValueError`` naming the variable that is missing or wrong."""
        base_url = env_str("DATAFLOW_BASE_URL")
        if base_url is None:
            return None
        hawk_id = env_str("DATAFLOW_HAWK_ID")
        if hawk_id is None:
            raise ValueError("DATAFLOW_BASE_URL is set but DATAFLOW_HAWK_ID is not")
        hawk_key = env_str("DATAFLOW_HAWK_KEY")
        if hawk_key is None:
            raise ValueError("DATAFLOW_BASE_URL is set but DATAFLOW_HAWK_KEY is not")
        timeout = env_str("DATAFLOW_TIMEOUT_SECONDS")
        try:
            timeout_seconds = DEFAULT_TIMEOUT_SECONDS if timeout is None else float(timeout)
        except ValueError:
            raise ValueError(f"DATAFLOW_TIMEOUT_SECONDS must be a number, not {timeout!r}") from None
        return cls(
            base_url=base_url,
            hawk_id=hawk_id,
            hawk_key=hawk_key,
            dag_id=env_str("DATAFLOW_UPLOADER_DAG_ID", DEFAULT_DAG_ID) or DEFAULT_DAG_ID,
            timeout_seconds=timeout_seconds,
        )

    def dag_runs_url(self, run_id: str | None = None) -> str:
        # Quoted so that the URL signed is byte for byte the URL requests sends; ':' stays as the
        # legacy sent it (execution dates are full of them).
        url = f"{self.base_url.rstrip('/')}/api/experimental/dags/{quote(self.dag_id, safe='')}/dag_runs"
        return url if run_id is None else f"{url}/{quote(run_id, safe=':')}"

    def credentials(self) -> dict[str, str]:
        # A new dict per call: mohawk writes into the credentials it is given.
        return {"id": self.hawk_id, "key": self.hawk_key, "algorithm": ALGORITHM}


def _check_header_value(name: str, value: str) -> None:
    try:
        mohawk.util.validate_header_attr(value, name=name)
    except mohawk.exc.BadHeaderValue:
        raise ValueError(f"{name} holds a character a HAWK header cannot carry") from None


def _scrub(text: str, settings: DataflowSettings) -> str:
    return text.replace(settings.hawk_key, "***") if settings.hawk_key else text


def _error(
    settings: DataflowSettings,
    kind: DataflowErrorKind,
    message: str,
    *,
    status: int | None = None,
    url: str = "",
) -> DataflowError:
    return DataflowError(kind, _scrub(message, settings), status=status, url=url)


_FETCH_KINDS = {
    ErrorKind.CONNECTION: DataflowErrorKind.CONNECTION,
    ErrorKind.TIMEOUT: DataflowErrorKind.TIMEOUT,
    ErrorKind.SSL: DataflowErrorKind.SSL,
}


def _from_fetch_error(settings: DataflowSettings, exc: FetchError, url: str, missing: str) -> DataflowError:
    if exc.kind is not ErrorKind.HTTP_STATUS:
        return _error(
            settings, _FETCH_KINDS.get(exc.kind, DataflowErrorKind.CONNECTION), exc.message, url=url
        )
    status = exc.status
    if status in (401, 403):
        kind = DataflowErrorKind.UNAUTHORIZED
        message = f"data-flow refused the HAWK credentials of id {settings.hawk_id!r} (HTTP {status})"
    elif status == 404:
        kind = DataflowErrorKind.NOT_FOUND
        message = f"HTTP 404: {missing}"
    else:
        kind = DataflowErrorKind.HTTP_STATUS
        message = f"HTTP {status}"
    return _error(settings, kind, message, status=status, url=url)


def _call(
    session: requests.Session,
    settings: DataflowSettings,
    method: str,
    url: str,
    body: bytes | None,
    missing: str,
) -> Any:
    """One signed call; the answer's JSON once its signature is checked. ``missing`` says what a
    404 means for this call."""
    content = body if body is not None else b""
    content_type = JSON if body is not None else ""
    sender = mohawk.Sender(
        settings.credentials(),
        url,
        method,
        content=content,
        content_type=content_type,
    )
    headers = {"Authorization": sender.request_header}
    if body is not None:
        headers["Content-Type"] = JSON
    try:
        response = request(session, method, url, data=body, headers=headers)
    except FetchError as exc:
        raise _from_fetch_error(settings, exc, url, missing) from exc
    _check_signature(settings, sender, response, url)
    try:
        return response.json()
    except ValueError:
        raise _error(
            settings, DataflowErrorKind.BAD_RESPONSE, f"not JSON: {_quoted(response, settings)}", url=url
        ) from None


def _check_signature(
    settings: DataflowSettings, sender: mohawk.Sender, response: requests.Response, url: str
) -> None:
    header = response.headers.get("Server-Authorization")
    if header is None:
        if settings.require_response_signature:
            raise _error(
                settings,
                DataflowErrorKind.UNSIGNED_RESPONSE,
                "the answer has no Server-Authorization header, so it cannot be from data-flow's API",
                status=response.status_code,
                url=url,
            )
        log.warning("data-flow answer to %s is not signed; accepted (require_response_signature off)", url)
        return
    _quiet_nonce_warning.active = True
    try:
        sender.accept_response(
            header,
            content=response.content,
            content_type=response.headers.get("Content-Type", ""),
            timestamp_skew_in_seconds=RESPONSE_SKEW_SECONDS,
        )
    except (mohawk.exc.HawkFail, KeyError) as exc:
        # The class name says what failed (MacMismatch, MisComputedContentHash, ...); mohawk's
        # own text quotes MACs and hashes, which help nobody reading a run's error column.
        raise _error(
            settings,
            DataflowErrorKind.BAD_SIGNATURE,
            f"the answer's Server-Authorization does not verify ({type(exc).__name__})",
            status=response.status_code,
            url=url,
        ) from None
    finally:
        _quiet_nonce_warning.active = False


class _QuietNonceWarning(logging.Filter, threading.local):
    """Drops mohawk's "seen_nonce was None" warning while this thread checks an answer.

    A ``Server-Authorization`` header carries no nonce of its own (it signs ours), so there is
    no replay to look up, yet mohawk warns about it on every answer: 360 lines per upload
    wait. The flag is per thread, so a HAWK receiver elsewhere in the process keeps the warning.
    """

    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active and str(record.msg).startswith("seen_nonce was None"))


_quiet_nonce_warning = _QuietNonceWarning()
logging.getLogger("mohawk.base").addFilter(_quiet_nonce_warning)


def _quoted(response: requests.Response, settings: DataflowSettings) -> str:
    text = response.text[:_QUOTED_TEXT]
    return repr(_scrub(text, settings))


def parse_run_id(answer_run_id: str) -> str:
    """The execution date the experimental API looks a run up by, cut from the trigger answer's
    ``run_id`` as the legacy did: ``manual__2019-08-29T14:35:19.512837+00:00`` ->
    ``2019-08-29T14:35:19.512837``. ``ValueError`` when it has no ``__``."""
    parts = answer_run_id.split("__")
    if len(parts) < 2 or not parts[1].split("+")[0]:
        raise ValueError(f"run_id {answer_run_id!r} is not <type>__<execution date>")
    return parts[1].split("+")[0]


def trigger_dag(session: requests.Session, settings: DataflowSettings, schema: str, table: str) -> str:
    """Start a run of the uploader DAG for ``schema``.``table`` (``L0`` or ``L1``); return its run id
    (the execution date, see ``parse_run_id``)."""
    url = settings.dag_runs_url()
    payload = {"conf": {"data_uploader_schema_name": schema, "data_uploader_table_name": table}}
    body = json.dumps(payload).encode()
    answer = _call(session, settings, "POST", url, body, f"data-flow has no DAG {settings.dag_id!r}")
    raw = answer.get("run_id") if isinstance(answer, dict) else None
    if not isinstance(raw, str):
        raise _error(settings, DataflowErrorKind.BAD_RESPONSE, "the trigger answer has no run_id", url=url)
    try:
        run_id = parse_run_id(raw)
    except ValueError as exc:
        raise _error(settings, DataflowErrorKind.BAD_RESPONSE, str(exc), url=url) from None
    log.info("data-flow DAG %s triggered for %s.%s: run %s", settings.dag_id, schema, table, run_id)
    return run_id


def dag_state(session: requests.Session, settings: DataflowSettings, run_id: str) -> str:
    """The state data-flow reports for the run (``running``, ``success``, ``failed``, ...)."""
    url = settings.dag_runs_url(run_id)
    missing = f"data-flow has no run {run_id!r} of DAG {settings.dag_id!r} (or no such DAG)"
    answer = _call(session, settings, "GET", url, None, missing)
    state = answer.get("state") if isinstance(answer, dict) else None
    if not isinstance(state, str):
        raise _error(settings, DataflowErrorKind.BAD_RESPONSE, "the run answer has no state", url=url)
    return state


def wait_for_dag(
    session: requests.Session,
    settings: DataflowSettings,
    run_id: str,
    *,
    poll_seconds: float = 5,
    timeout_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll the run until it is ``success`` or ``failed``; ``timeout`` when neither came within
    ``timeout_seconds`` (default ``settings.timeout_seconds``).

    The time waited is counted both as the sleeps asked for (the legacy's "360 polls of 5 s",
    and what a test's fake ``sleep`` advances) and on ``clock``, so slow answers count too.
    Any other state (``running``, ``queued``, ...) means keep waiting. A failed poll raises
    ``DataflowError``: the session's retries have already been spent on it.
    """
    if not poll_seconds > 0:
        raise ValueError(f"poll_seconds must be > 0, not {poll_seconds!r}")
    budget = settings.timeout_seconds if timeout_seconds is None else timeout_seconds
    started = clock()
    slept = 0.0
    while True:
        state = dag_state(session, settings, run_id)
        if state in (SUCCESS, FAILED):
            log.info("data-flow run %s of %s: %s", run_id, settings.dag_id, state)
            return state
        waited = max(slept, clock() - started)
        if waited >= budget:
            log.warning(
                "data-flow run %s of %s still %r after %.0f s: timeout",
                run_id,
                settings.dag_id,
                state,
                waited,
            )
            return TIMEOUT
        # The last poll falls on the deadline rather than a whole interval past it.
        pause = min(poll_seconds, budget - waited)
        sleep(pause)
        slept += pause
