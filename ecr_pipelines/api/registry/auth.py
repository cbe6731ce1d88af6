"""What every registry route shares (part A and part B of the registry API): the legacy's token
check, its JSON rendering and its date formats, and the domain path segment.

Auth is the legacy's: the ``Authorization`` header carries the bare ``API_TOKEN`` (no scheme) and a
refusal is a 401 with the legacy's JSON body. Two deliberate differences: the comparison is
constant-time (``hmac.compare_digest``), and an empty ``API_TOKEN`` refuses every request (the
legacy let a request without the header through, which left an unconfigured deployment open).
Every registry route is wrapped, exports and logs included (the legacy left those open); only
``/healthcheck`` (in ``app.py``) is open.

``protected(endpoint)`` turns a plain function ``endpoint(request) -> Response | JSON-able`` into
a Starlette endpoint: it checks the token, reads the body once (so that the plain function, run in
Starlette's thread pool, can get the form or JSON without awaiting), renders ``ApiError`` and plain
return values as the legacy's JSON. Forms (url-encoded or multipart) are read by the application's
shared ``api.forms.read_form`` (first value of a repeated field, as Flask gave it); any other body
is kept as bytes for the JSON routes. Both are size-capped (413 above ``MAX_FORM_BYTES``).
"""

import functools
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.api.forms import FORM_TYPES, MAX_FORM_BYTES, BadForm, FormTooLarge, read_form

DOMAINS = ("FGAS", "ODS")

UNAUTHORIZED = {
    "status": "Unauthorized",
    "message": "You need to be authenticated in order to access this resource.",
}
NOT_FOUND = {"status": "Not Found", "message": "The requested resource was not found."}
INVALID_DOMAIN = {"error": "Invalid domain"}

Endpoint = Callable[[Request], Any]


class ApiError(Exception):
    """Raised anywhere inside a protected endpoint: answered as ``json_response(body, status)``."""

    def __init__(self, status: int, body: Any = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = NOT_FOUND if body is None and status == 404 else body


def not_found(body: Any = None) -> ApiError:
    return ApiError(404, body)


def format_date(value: date | None) -> str | None:
    """The legacy's wire date, ``DD/MM/YYYY`` (a datetime loses its time)."""
    return None if value is None else value.strftime("%d/%m/%Y")


def format_datetime(value: datetime | None) -> str | None:
    """The legacy's wire datetime, ``DD/MM/YYYY HH:MM``; zone-aware values are shown in UTC, so
    the answer does not depend on the database session's time zone."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%d/%m/%Y %H:%M")


def _legacy_json(value: Any) -> Any:
    # datetime is a date: test it first.
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return format_date(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(data: Any) -> str:
    """The legacy's JSON text (two-space indent, ASCII), dates in the legacy's formats."""
    return json.dumps(data, indent=2, default=_legacy_json)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


def unauthorized() -> Response:
    return json_response(UNAUTHORIZED, status=401)


def domain_of(path_value: str, status: int = 404) -> str:
    """The domain path segment, exactly ``FGAS`` or ``ODS`` as the legacy stored it; anything else
    is a 404 (the legacy found nothing for it), or the given status (the legacy's auditor routes
    answered 400 ``{"error": "Invalid domain"}``)."""
    if path_value in DOMAINS:
        return path_value
    raise ApiError(status, INVALID_DOMAIN)


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison of the header with the token; an empty token matches nothing."""
    if not token or header is None:
        return False
    return hmac.compare_digest(header.encode("utf-8"), token.encode("utf-8"))


def context_of(request: Request) -> ApiContext:
    return request.app.state.context


def form(request: Request) -> Mapping[str, str]:
    """The request's form fields (read by ``protected``); empty for other bodies."""
    return getattr(request.state, "form", {})


def body(request: Request) -> bytes:
    """The request's raw body (read by ``protected``)."""
    return getattr(request.state, "body", b"")


def json_body(request: Request) -> Any:
    """The request's body as JSON; a 400 when it is not JSON (the legacy failed the same way)."""
    try:
        return json.loads(body(request) or b"null")
    except ValueError:
        raise ApiError(400, {"error": "The body is not JSON."}) from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _capped_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise FormTooLarge(f"The body is larger than {MAX_FORM_BYTES:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:  # a chunked body has no Content-Length to refuse it by
            raise FormTooLarge(f"The body is larger than {MAX_FORM_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_request(request: Request) -> Response | None:
    """Read the form or the body into ``request.state``; an answer when it cannot be read."""
    request.state.form = {}
    request.state.body = b""
    try:
        if _media_type(request) in FORM_TYPES:
            request.state.form = await read_form(request, MAX_FORM_BYTES)
        else:
            request.state.body = await _capped_body(request)
    except FormTooLarge as exc:
        return json_response({"error": str(exc)}, status=413)
    except (BadForm, UnicodeDecodeError) as exc:
        return json_response({"error": f"The form could not be read: {exc}"}, status=400)
    return None


def protected(endpoint: Endpoint) -> Callable[[Request], Any]:
    """The Starlette endpoint for a plain function behind the legacy token check.

    The function runs in Starlette's thread pool (it may block on the database); it returns a
    ``Response`` or any JSON-able value (rendered with ``json_response``), or raises ``ApiError``.
    """

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        token = context_of(request).settings.api_token
        if not token_matches(request.headers.get("authorization"), token):
            return unauthorized()
        refused = await _read_request(request)
        if refused is not None:
            return refused
        try:
            answer = await run_in_threadpool(endpoint, request)
        except ApiError as error:
            return json_response(error.body, status=error.status)
        if isinstance(answer, Response):
            return answer
        return json_response(answer)

    return guarded
