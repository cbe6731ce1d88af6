"""The CKAN packager's intake: the legacy ckanpackager's form posts, on the packager's own tables.

CKAN (ckanext-ckanpackager) posts download requests here as it posted them to the legacy Flask
service: every route is a ``POST`` of a form (``application/x-www-form-urlencoded``, or
``multipart/form-data`` as Flask also read) carrying ``secret``, compared in constant time with
``CKAN_SECRET``; an empty ``CKAN_SECRET`` refuses every request. Answers and errors keep the
legacy's JSON: ``{"status": "success", "message": ...}``, and ``{"status": "failed", "error":
"BadRequestError" | "NotAuthorizedError", "message": ...}`` with 400 / 401.

Nothing here packages anything. A ``/package_*`` request is validated and queued by
``ckan.stages.requests.submit``, the very function ``ckan_request_job`` calls, so a request
queued here and one queued through Dagster give the same ``ckan.package_request`` row (params,
cache key, queue); the ``ckan_queue_sensor`` then starts the run of its queue. A per-request CKAN
API key (the legacy's ``key`` field) is held by ``submit`` in the row's ``api_key`` column, never
in ``params``, and never logged here. ``/statistics*`` read the legacy statistics tables through
``ckan.statistics``; ``/clear_caches`` deletes the stored packages with the daily clean-up's own
function (``ckan.stages.cleanup.delete_expired``, with no age limit).

Settings shared with the packager's Dagster resource, read the same way from the environment
(without Dagster): ``CKAN_SLOW_REQUEST``, ``CKAN_CACHE_TIME`` (both decide the queue of a
request, so both sides must agree) and ``CKAN_ANONYMIZE_EMAILS`` (the statistics' e-mail filter is
hashed as the stored addresses are).
"""

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.api.forms import BadForm, FormTooLarge, read_form
from ecr_pipelines.ckan import statistics
from ecr_pipelines.ckan.dwc import flag
from ecr_pipelines.ckan.package import DEFAULT_SLOW_REQUEST, BadRequest
from ecr_pipelines.ckan.stages.cleanup import delete_expired
from ecr_pipelines.ckan.stages.packages import QUEUES
from ecr_pipelines.ckan.stages.requests import DEFAULT_CACHE_TIME, submit
from ecr_pipelines.lib.settings import env_number, env_str

log = logging.getLogger(__name__)

# The legacy's default SUCCESS_MESSAGE, word for word (CKAN shows it to the requester).
SUCCESS_MESSAGE = (
    "The resource will be emailed to you shortly. This make take a little longer if our servers "
    "are busy, so please be patient!"
)
NOT_AUTHORIZED = "Wrong/missing secret"
PACKAGE_ROUTES = {"/package_datastore": "datastore", "/package_dwc_archive": "dwc", "/package_url": "url"}
# dagster.yaml lets one run per `ckan/queue` tag value go at a time, and there is one value per
# queue: the legacy's one Celery worker per queue.
WORKER_COUNT = len(QUEUES)
# An EML template is the largest field CKAN sends (a few kB); the legacy set no limit.
MAX_FORM_BYTES = 4 * 1024 * 1024
SOURCE = "api"

Form = dict[str, str]
Handler = Callable[[Form, Mapping[str, Any]], Response]


@dataclass(frozen=True)
class IntakeSettings:
    secret: str = field(default="", repr=False)
    slow_request: int = DEFAULT_SLOW_REQUEST
    cache_time: int = DEFAULT_CACHE_TIME
    anonymize_emails: bool = False

    @classmethod
    def from_env(cls, secret: str) -> "IntakeSettings":
        """The packager's variables, checked as its Dagster resource checks them: a value that is
        not usable stops the application from starting, naming the variable."""
        return cls(
            secret=secret,
            slow_request=env_number("CKAN_SLOW_REQUEST", DEFAULT_SLOW_REQUEST),
            cache_time=env_number("CKAN_CACHE_TIME", DEFAULT_CACHE_TIME),
            anonymize_emails=_env_flag("CKAN_ANONYMIZE_EMAILS"),
        )


def _env_flag(name: str) -> bool:
    raw = env_str(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} must be true or false")


class Refused(Exception):
    """A request answered with the legacy's error JSON."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"status": "failed", "error": self.error, "message": self.message}, status_code=self.status
        )


def bad_request(message: str) -> Refused:
    return Refused(400, "BadRequestError", message)


# -- the form -------------------------------------------------------------------------------------


async def _form(request: Request) -> Form:
    try:
        return await read_form(request, MAX_FORM_BYTES)
    except FormTooLarge as exc:
        raise Refused(413, "BadRequestError", str(exc)) from None
    except (BadForm, UnicodeDecodeError) as exc:
        raise bad_request(f"The form could not be read: {exc}") from None


def authorized(form: Mapping[str, str], secret: str) -> bool:
    """``secret`` equal to the configured one, compared in constant time; nothing passes when
    none is configured."""
    given = form.get("secret")
    if not secret or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


def _endpoint(settings: IntakeSettings, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Read the form and check the secret on the event loop, then run ``handler`` (database work)
    in the thread pool."""

    async def endpoint(request: Request) -> Response:
        try:
            form = await _form(request)
            if not authorized(form, settings.secret):
                raise Refused(401, "NotAuthorizedError", NOT_AUTHORIZED)
            return await run_in_threadpool(handler, form, request.path_params)
        except Refused as refused:
            return refused.response()

    return endpoint


def _whole_number(form: Mapping[str, str], name: str, default: int) -> int:
    raw = form.get(name)
    if raw is None:
        return default
    try:
        number = int(raw.strip())
    except ValueError:
        raise bad_request(f"Parameter {name} must be a whole number, not {raw!r}") from None
    if number < 0:
        raise bad_request(f"Parameter {name} must not be negative")
    return number


# -- the routes ---------------------------------------------------------------------------------


def routes(context: ApiContext) -> list[BaseRoute]:
    settings = IntakeSettings.from_env(context.settings.ckan_secret)

    def package(kind: str) -> Handler:
        def queue(form: Form, path: Mapping[str, Any]) -> Response:
            raw: dict[str, Any] = {name: value for name, value in form.items() if name != "secret"}
            # ckan_request_job queues the flag as true or not at all; a form sends text, and
            # "false" must not pin the archive (the packager reads the flag with dwc.flag).
            if "for_gbif" in raw:
                if flag(raw["for_gbif"]):
                    raw["for_gbif"] = True
                else:
                    del raw["for_gbif"]
            try:
                request_id, pkg = submit(
                    context.engine,
                    kind,
                    raw,
                    source=SOURCE,
                    slow_request=settings.slow_request,
                    cache_time=settings.cache_time,
                )
            except BadRequest as exc:
                raise bad_request(str(exc)) from None
            log.info("ckan request %s (%s) queued on the %s queue", request_id, kind, pkg.speed)
            return JSONResponse({"status": "success", "message": SUCCESS_MESSAGE})

        return queue

    def status(form: Form, path: Mapping[str, Any]) -> Response:
        with context.engine.connect() as conn:
            # A row another system inserted has no queue yet: the fast queue's run admits it.
            waiting = dict(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(speed, 'fast') AS queue, count(*) FROM ckan.package_request "
                        "WHERE status IN ('queued', 'running') GROUP BY 1"
                    )
                ).all()
            )
            processed = conn.execute(
                sa.text("SELECT count(*) FROM ckan.package_request WHERE status IN ('done', 'failed')")
            ).scalar_one()
        lengths = {queue: int(waiting.get(queue, 0)) for queue in QUEUES}
        return JSONResponse(
            {
                "worker_count": WORKER_COUNT,
                "queue_length": sum(lengths.values()),
                "queue_lengths": lengths,
                "processed_requests": int(processed),
            }
        )

    def clear_caches(form: Form, path: Mapping[str, Any]) -> Response:
        # Every live package but the pinned ones (GBIF exports, whose link is published), the
        # same rule as the daily clean-up, with no age limit.
        report = delete_expired(context.engine, context.blobs, ttl_days=0)
        if report.failed:
            key, error = report.failed[0]
            raise Refused(
                500,
                "StoreError",
                f"{len(report.failed)} package(s) could not be deleted and are kept (first: {key}: {error})",
            )
        log.info("clear_caches: %d packages deleted, %d pinned kept", report.deleted, report.kept_pinned)
        return JSONResponse(
            {
                "status": "success",
                "message": "Done.",
                "deleted": report.deleted,
                "kept_pinned": report.kept_pinned,
            }
        )

    def statistics_of(form: Form, path: Mapping[str, Any]) -> Response:
        kind = path.get("kind")
        # As the legacy: a field that is present filters, even when empty.
        resource_id = form.get("resource_id")
        if kind is None:
            with context.engine.connect() as conn:
                totals = statistics.get_totals(conn, resource_id)
            return JSONResponse({"status": True, "totals": totals})
        if kind not in ("requests", "errors"):
            raise bad_request(f"Unknown statistics request {kind}")
        reader = statistics.get_requests if kind == "requests" else statistics.get_errors
        offset = _whole_number(form, "offset", 0)
        limit = _whole_number(form, "limit", 100)
        with context.engine.connect() as conn:
            rows = reader(
                conn,
                offset=offset,
                limit=limit,
                resource_id=resource_id,
                email=form.get("email"),
                anonymize=settings.anonymize_emails,
            )
        return JSONResponse({"success": True, kind: rows})

    def post(path: str, handler: Handler) -> Route:
        return Route(path, _endpoint(settings, handler), methods=["POST"])

    return [
        post("/", status),
        post("/status", status),
        post("/clear_caches", clear_caches),
        *(post(path, package(kind)) for path, kind in PACKAGE_ROUTES.items()),
        post("/statistics", statistics_of),
        post("/statistics/{kind}", statistics_of),
    ]
