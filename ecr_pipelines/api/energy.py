"""The energy hub's public disclosure read: ``POST /disclosure``, no authentication.

The legacy datahub-service answered its web front end here; of its API only this read is
served, so that published disclosure links keep working. The body is the legacy's JSON
``{"id", "utcOffset": 0, "resolution"?, "dateRange"?: {"begin", "end"}}``.

* The default view (no resolution, no date range, UTC) is the document the compile stage
  (``energy.stages.disclosures``) wrote to the blob store, ``energy/disclosures/<id>.json``,
  served byte for byte without touching the database: a published link keeps answering while the
  database is busy, and costs one object read.
* Any other view, and a disclosure whose document is not there (not compiled yet, or the store
  failing), is computed from the database by ``energy.disclosure.disclosure_view``, the function
  the compile stage wrote the document with.

As the legacy: whatever the disclosure's state (``state`` is in the answer), an unknown id is
``{"success": false, "message": 'Disclosure with ID "x" not found'}`` with status 200 (the legacy's
controller returned it as an ordinary answer), and a body that cannot be read is 400 with
``{"success": false, "message"}``. Unknown fields are ignored (a front end of another version may
send more; the legacy's own request schema changed over time).
"""

import json
import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.energy.disclosure import RESOLUTIONS, disclosure_key, disclosure_view, view_json
from ecr_pipelines.lib.blobstore import BlobNotFound

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# Public ids are UUIDs; only such a name is looked up as a blob key (nothing from the request
# reaches the store otherwise). Any other id still gets its answer from the database.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
JSON_TYPE = "application/json"


class BadBody(ValueError):
    """A request body the read cannot use; the message says why."""


@dataclass(frozen=True)
class DisclosureQuery:
    public_id: str
    utc_offset: int = 0
    resolution: str | None = None
    date_range: tuple[date, date] | None = None

    @property
    def default_view(self) -> bool:
        """The view the compile stage stored (an explicit ``utcOffset: 0`` is the same view)."""
        return self.utc_offset == 0 and self.resolution is None and self.date_range is None


def _offset(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise BadBody("utcOffset must be a whole number of hours")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise BadBody("utcOffset must be a whole number of hours")


def _day(value: Any, name: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise BadBody(f"dateRange.{name} must be a date (YYYY-MM-DD)")


def parse_query(body: bytes) -> DisclosureQuery:
    """The legacy's request fields, checked; ``BadBody`` names the first problem."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadBody("The body must be JSON") from None
    if not isinstance(raw, dict):
        raise BadBody("The body must be a JSON object")
    public_id = raw.get("id")
    if not isinstance(public_id, str) or not public_id.strip():
        raise BadBody("id is required: the disclosure's public id (a string)")
    resolution = raw.get("resolution")
    if resolution is not None and resolution not in RESOLUTIONS:
        raise BadBody(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    date_range = raw.get("dateRange")
    if date_range is not None:
        if not isinstance(date_range, dict):
            raise BadBody("dateRange must be an object {begin, end}")
        date_range = (_day(date_range.get("begin"), "begin"), _day(date_range.get("end"), "end"))
    return DisclosureQuery(public_id, _offset(raw.get("utcOffset")), resolution, date_range)


def _failed(message: str, status: int) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status)


def routes(context: ApiContext) -> list[BaseRoute]:
    def stored(query: DisclosureQuery) -> bytes | None:
        if not _PLAIN_ID.fullmatch(query.public_id):
            return None
        try:
            return context.blobs.get_bytes(disclosure_key(query.public_id))
        except BlobNotFound:
            return None  # not compiled yet: the database has its state
        except Exception as exc:  # the store failing: the database can still answer
            log.warning("disclosure document of %s not readable: %s", query.public_id, type(exc).__name__)
            return None

    def answer(query: DisclosureQuery) -> Response:
        if query.default_view:
            document = stored(query)
            if document is not None:
                return Response(document, media_type=JSON_TYPE)
        try:
            with context.engine.connect() as conn:
                view = disclosure_view(
                    conn,
                    query.public_id,
                    utc_offset=query.utc_offset,
                    resolution=query.resolution,
                    date_range=query.date_range,
                )
        except ValueError as exc:  # the view's own checks (offset range, begin after end)
            return _failed(str(exc), 400)
        return Response(view_json(view), media_type=JSON_TYPE)

    async def disclosure(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _failed(f"The body is larger than {MAX_BODY_BYTES:,} bytes", 413)
        try:
            query = parse_query(body)
        except BadBody as exc:
            return _failed(str(exc), 400)
        return await run_in_threadpool(answer, query)

    return [Route("/disclosure", disclosure, methods=["POST"])]
