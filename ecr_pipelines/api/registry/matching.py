"""The registry API's matching routes for the BDR helpdesk (``/candidate/...``) and the routes that
start Dagster runs (``/sync/...``, ``/match/...``), at the legacy paths and with its JSON shapes.

Matching: verify, verify-none, manual and unverify call ``ecr_pipelines.registry.operator``, the
code the Dagster operator jobs run, the same way: one transaction holds the change, the BDR call
(for companies that did not pass the checks) and the queued notification mails, so a BDR refusal
or an unknown id changes nothing; the mails go out after the commit through the outbox, so a mail
server failure leaves the verification standing and the mail queued for the next sender. The BDR
client and the mailer come from the environment variables of the Dagster resources
(``BDR_ENDPOINT_URL``/``_USER``/``_PASSWORD``, ``SEND_MATCHING_MAILS``, ``SMTP_URL``,
``MAIL_FROM``, ``HTTP_*``), built without Dagster.

Sync and match: the legacy ran these inside the request; here they start the Dagster job through
Dagster's GraphQL client (``DAGSTER_WEBSERVER_URL``) and answer at once with the run id, so a long
sync never holds a request and the run is logged, retried and serialised like every other. The
legacy query arguments become the job's run config; an unknown or malformed argument is refused
(400) instead of failing inside the run.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.api.registry.auth import ApiError, context_of, domain_of, form, json_response, protected
from ecr_pipelines.api.registry.undertakings import load_undertakings, undertaking_columns
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.lib.mail import Mailer
from ecr_pipelines.lib.outbox import send_pending
from ecr_pipelines.lib.settings import ecr_home, env_bool, env_number, env_str
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry import operator
from ecr_pipelines.registry.clients import BdrEndpointClient, BdrResult
from ecr_pipelines.registry.operator import (
    OperatorError,
    Outcome,
    Recipient,
    matching_mails_blocked,
    send_matching_mails,
)
from ecr_pipelines.registry.store.undertakings import parse_window_date

log = logging.getLogger(__name__)

# automation.service_tags("registry"), written out: that module imports Dagster.
SERVICE_TAGS = {"ecr/service": "registry"}
GRAPHQL_TIMEOUT_SECONDS = 30
# Who flushed, for the flush run's log, when the caller names nobody (the legacy route took no user).
FLUSH_USER = "registry API"

# The jobs of ecr_pipelines/registry/defs/jobs.py, and the op / asset names their run config uses.
SYNC_JOB = "registry_sync_job"
OLD_COMPANIES_JOB = "registry_old_companies_job"
LICENCES_JOB = "registry_licences_job"
MATCH_JOB = "registry_match_job"
FLUSH_JOB = "registry_flush_job"
COLLECTIONS_ASSET = "bdr_collections"

BDR_REFUSED = 502


# -- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchingSettings:
    """What the operator actions need besides the database, read once from the environment under
    the Dagster resources' variable names; secrets are kept out of ``repr``."""

    bdr_endpoint_url: str = ""
    bdr_endpoint_user: str = field(default="", repr=False)
    bdr_endpoint_password: str = field(default="", repr=False)
    send_matching_mails: bool = False
    smtp_url: str | None = field(default=None, repr=False)
    mail_from: str = "ecr-pipelines@localhost"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    verify_tls: bool = True

    @classmethod
    def from_env(cls) -> "MatchingSettings":
        return cls(
            bdr_endpoint_url=env_str("BDR_ENDPOINT_URL", "") or "",
            bdr_endpoint_user=env_str("BDR_ENDPOINT_USER", "") or "",
            bdr_endpoint_password=env_str("BDR_ENDPOINT_PASSWORD", "") or "",
            send_matching_mails=send_matching_mails(env_str("SEND_MATCHING_MAILS")),
            smtp_url=env_str("SMTP_URL"),
            mail_from=env_str("MAIL_FROM", "ecr-pipelines@localhost") or "ecr-pipelines@localhost",
            connect_timeout=env_number("HTTP_CONNECT_TIMEOUT", 10.0, float),
            read_timeout=env_number("HTTP_READ_TIMEOUT", 60.0, float),
            retries=env_number("HTTP_RETRIES", 3),
            verify_tls=env_bool("HTTPS_VERIFY", True),
        )

    def mails_blocked(self) -> str | None:
        """Why no verification mail is queued (None: they are): the Dagster resource's rule."""
        return matching_mails_blocked(self.send_matching_mails, self.bdr_endpoint_url)

    def bdr(self) -> "_WatchedBdr":
        session = make_session(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries=self.retries,
            verify=self.verify_tls,
        )
        return _WatchedBdr(session, self.bdr_endpoint_url, self.bdr_endpoint_user, self.bdr_endpoint_password)

    def mailer(self) -> Mailer:
        return Mailer(self.smtp_url, self.mail_from, ecr_home() / "outbox")


class _WatchedBdr(BdrEndpointClient):
    """The BDR client, remembering a refusal: an ``OperatorError`` after one is BDR saying no
    (answered 502), any other an unknown id or link (404)."""

    refusal: str | None = None

    def update_company_collection(self, *args: Any, **kwargs: Any) -> BdrResult:
        result = super().update_company_collection(*args, **kwargs)
        if not result.ok:
            self.refusal = result.message
        return result


# -- answers ---------------------------------------------------------------------------------------


def undertaking_dicts(sql: Sql, domain: str, where: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Undertakings of a domain as the legacy's ``/candidate`` routes answered them: its raw
    ``as_dict`` (the table's columns, ``company_id``, no ``id``), built by the read side's
    ``undertaking_columns`` so both parts of the API show an undertaking alike. ``where`` is a
    fixed clause of this module, never request text."""
    rows = load_undertakings(sql, f"u.domain = :d AND {where}", {"d": domain, **params})
    return [undertaking_columns(row) for row in rows]


def _one_undertaking(sql: Sql, domain: str, external_id: int) -> dict[str, Any]:
    rows = undertaking_dicts(sql, domain, "u.external_id = :e", {"e": external_id})
    if not rows:
        raise ApiError(404)
    return rows[0]


def candidates(sql: Sql, domain: str) -> list[dict[str, Any]]:
    """``/candidate/<d>/list``: every unverified undertaking of the domain, with or without
    proposed links, and the names of the old companies it is linked to."""
    rows = sql.all(
        "SELECT u.id, u.external_id, u.name, u.date_updated, u.status, c.name AS country "
        "FROM registry.undertaking u LEFT JOIN registry.address a ON a.id = u.address_id "
        "LEFT JOIN registry.country c ON c.id = a.country_id "
        "WHERE u.domain = :d AND NOT u.oldcompany_verified ORDER BY u.id",
        {"d": domain},
    )
    names = sql.grouped(
        "SELECT l.undertaking_id, o.name FROM registry.old_company_link l "
        "JOIN registry.old_company o ON o.id = l.oldcompany_id "
        "JOIN registry.undertaking u ON u.id = l.undertaking_id "
        "WHERE u.domain = :d AND NOT u.oldcompany_verified ORDER BY l.undertaking_id, o.id",
        {"d": domain},
    )
    return [
        {
            "undertaking": {
                "company_id": row.external_id,
                "name": row.name,
                # The legacy wrote this one date in ISO form, unlike its other dates.
                "date_updated": row.date_updated.isoformat() if isinstance(row.date_updated, date) else None,
                "status": row.status,
                "country": row.country,
            },
            "links": [{"name": name} for name in names.get(row.id, [])],
        }
        for row in rows
    ]


def _link_dict(sql: Sql, domain: str, external_id: int) -> dict[str, Any]:
    """The verified link of an undertaking, as the legacy's verify answered it."""
    rows = sql.all(
        "SELECT l.verified, l.date_added, l.date_verified, u.external_id AS company_id, "
        "o.external_id AS collection_id FROM registry.undertaking u "
        "JOIN registry.old_company_link l ON l.undertaking_id = u.id AND l.oldcompany_id = u.oldcompany_id "
        "JOIN registry.old_company o ON o.id = l.oldcompany_id "
        "WHERE u.domain = :d AND u.external_id = :e",
        {"d": domain, "e": external_id},
    )
    if not rows:
        raise ApiError(404)
    return dict(rows[0]._mapping)


# -- request pieces --------------------------------------------------------------------------------


def _int_segment(request: Request, name: str) -> int:
    """An id path segment; anything but a whole number finds nothing (404)."""
    try:
        return int(request.path_params[name])
    except ValueError:
        raise ApiError(404) from None


def _user(request: Request) -> str:
    """The helpdesk user named in the form: written to ``matching_log``, so it is required."""
    user = (form(request).get("user") or "").strip()
    if not user:
        raise ApiError(400, {"error": "The form field user is required."})
    return user


# (sql, bdr, mail_to) -> Outcome
Action = Callable[[Sql, BdrEndpointClient, Sequence[Recipient]], Outcome]
# (sql) -> the answer, read in the same transaction after the action
Answer = Callable[[Sql], Any]


def _operate(context: ApiContext, settings: MatchingSettings, action: Action, answer: Answer) -> Any:
    """Run one operator action as the Dagster operator ops do: one transaction for the change, the
    BDR call and the queued mails; the mails sent after the commit."""
    bdr = settings.bdr()
    try:
        with context.engine.begin() as conn:
            sql = Sql(conn)
            blocked = settings.mails_blocked()
            if blocked is None:
                mail_to: list[Recipient] = operator.notification_addresses(sql)
            else:
                if settings.send_matching_mails:
                    log.warning(blocked)  # asked for mails that cannot be sent, as the legacy warned
                mail_to = []
            outcome = action(sql, bdr, mail_to)
            result = answer(sql)
    except OperatorError as exc:
        if bdr.refusal is not None:
            raise ApiError(BDR_REFUSED, {"error": str(exc)}) from None
        raise ApiError(404) from None
    finally:
        bdr.session.close()
    if outcome.mails_queued:
        report = send_pending(context.engine, settings.mailer().send)
        for mail_id, error in report.failed:
            log.warning("mail %s not sent (kept in pipeline.mail_outbox for a retry): %s", mail_id, error)
    return result


# -- starting Dagster runs -------------------------------------------------------------------------


class BadArguments(ValueError):
    """Query arguments a route cannot turn into run config."""


@dataclass(frozen=True)
class Launch:
    """A run to start: job, run config, and (for part of an asset job) the asset keys."""

    job: str
    run_config: dict[str, Any] = field(default_factory=dict)
    asset_selection: list[str] | None = None


def _arguments(query: Mapping[str, str], allowed: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The query arguments, each parsed; unknown or malformed ones raise ``BadArguments``."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadArguments(
            f"unknown argument(s): {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}"
        )
    values: dict[str, Any] = {}
    for name, text in query.items():
        try:
            values[name] = allowed[name](text)
        except ValueError as exc:
            raise BadArguments(f"{name}={text!r}: {exc}") from None
    return values


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a whole number") from None


def _window_date(text: str) -> str:
    parse_window_date(text)  # refused here rather than by the run
    return text


# Legacy argument -> the undertaking sync's run config field (UndertakingSyncConfig).
_SYNC_ARGUMENTS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "days": ("days", _whole),
    "updated_since": ("updated_since", _window_date),
    "page_size": ("page_size", _whole),
    "id": ("external_id", _whole),
    "registration_id": ("registration_id", str),
}


def sync_undertakings(domain: str, query: Mapping[str, str]) -> Launch:
    """``/sync/fgases``, ``/sync/ods``: ``registry_sync_job`` for one domain (the other left out),
    which then creates, binds and renames the BDR collections as the legacy sync did."""
    values = _arguments(query, {name: parse for name, (_, parse) in _SYNC_ARGUMENTS.items()})
    config = {_SYNC_ARGUMENTS[name][0]: value for name, value in values.items()}
    other = "ods" if domain == "fgas" else "fgas"
    return Launch(
        SYNC_JOB,
        {
            "ops": {
                f"{domain}_undertakings": {"config": config},
                f"{other}_undertakings": {"config": {"sync": False}},
            }
        },
    )


def sync_fgases(query: Mapping[str, str]) -> Launch:
    return sync_undertakings("fgas", query)


def sync_ods(query: Mapping[str, str]) -> Launch:
    return sync_undertakings("ods", query)


def sync_licences(query: Mapping[str, str]) -> Launch:
    """``/sync/licences?year&page_size``: ``registry_licences_job`` (year defaults to the current one)."""
    values = _arguments(query, {"year": _whole, "page_size": _whole})
    return Launch(LICENCES_JOB, {"ops": {"ods_licences": {"config": values}}} if values else {})


def sync_old_companies(query: Mapping[str, str]) -> Launch:
    """``/sync/bdr``: ``registry_old_companies_job`` (the legacy route was wired to the wrong
    function and always failed)."""
    _arguments(query, {})
    return Launch(OLD_COMPANIES_JOB)


def sync_collection_titles(query: Mapping[str, str]) -> Launch:
    """``/sync/collections_title``: the ``bdr_collections`` step of ``registry_sync_job`` alone;
    besides renaming collections whose title differs it creates or binds any still due."""
    _arguments(query, {})
    return Launch(SYNC_JOB, asset_selection=[COLLECTIONS_ASSET])


def match_run(query: Mapping[str, str]) -> Launch:
    """``/match/run``: ``registry_match_job``."""
    _arguments(query, {})
    return Launch(MATCH_JOB)


def match_flush(query: Mapping[str, str]) -> Launch:
    """``/match/flush``: ``registry_flush_job`` (every proposed link deleted); ``user`` (optional,
    an addition) names who asked, for the run's log."""
    values = _arguments(query, {"user": str})
    user = (values.get("user") or "").strip() or FLUSH_USER
    return Launch(FLUSH_JOB, {"ops": {"flush_links": {"config": {"user": user}}}})


def _client_error(exc: Exception) -> str:
    """A short message for a GraphQL client failure: the Dagster error type and its details, or
    the transport's own error (the client's message around it repeats the whole query)."""
    args = [str(a) for a in exc.args if str(a)]
    first = args[0].splitlines()[0].strip() if args else type(exc).__name__
    if first.startswith("Exception occured during execution of query"):  # the client's spelling
        first = "the GraphQL request failed"
    text = f"{first}: {args[1]}" if len(args) > 1 else first
    cause = exc.__cause__
    if cause is not None:
        detail = str(cause).splitlines()[0] if str(cause) else ""
        text += f" ({type(cause).__name__}: {detail})"
    return text[:1000]


def start_run(dagster_url: str | None, launch: Launch) -> tuple[bool, str]:
    """Submit the run through Dagster's GraphQL API: (started, message)."""
    if not dagster_url:
        return False, f"DAGSTER_WEBSERVER_URL is not set: {launch.job} cannot be started."
    parts = urlsplit(dagster_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False, f"DAGSTER_WEBSERVER_URL is not an http(s) URL: {launch.job} cannot be started."
    # The one Dagster import of the application, here so that the application starts without it.
    from dagster_graphql import DagsterGraphQLClient

    try:
        client = DagsterGraphQLClient(
            parts.hostname,
            port_number=parts.port,
            use_https=parts.scheme == "https",
            path_prefix=parts.path.rstrip("/"),
            timeout=GRAPHQL_TIMEOUT_SECONDS,
        )
        run_id = client.submit_job_execution(
            launch.job,
            run_config=launch.run_config,
            tags=dict(SERVICE_TAGS),
            asset_selection=launch.asset_selection,
        )
    except Exception as exc:  # every client failure is answered the same way (503)
        message = _client_error(exc)
        log.warning("%s not started: %s", launch.job, message)
        return False, f"{launch.job} not started: {message}"
    return True, f"{launch.job} started: run {run_id}"


def _starts(build: Callable[[Mapping[str, str]], Launch]) -> Callable[[Request], Any]:
    def endpoint(request: Request) -> Response:
        try:
            launch = build(request.query_params)
        except BadArguments as exc:
            return json_response({"success": False, "message": str(exc)}, status=400)
        started, message = start_run(context_of(request).settings.dagster_url, launch)
        return json_response({"success": started, "message": message}, status=200 if started else 503)

    endpoint.__name__ = build.__name__
    return endpoint


# -- routes ----------------------------------------------------------------------------------------


def _paths(path: str) -> list[str]:
    """The legacy spelling and the other trailing-slash variant, both served (no redirect)."""
    other = path[:-1] if path.endswith("/") else path + "/"
    return [path, other]


def routes(context: ApiContext) -> list[BaseRoute]:
    settings = MatchingSettings.from_env()

    def candidate_list(request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        with context.engine.connect() as conn:
            return candidates(Sql(conn), domain)

    def candidate_verified(request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        with context.engine.connect() as conn:
            return undertaking_dicts(Sql(conn), domain, "u.oldcompany_verified", {})

    def verify(request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        external_id = _int_segment(request, "undertaking")
        old_id = _int_segment(request, "old_company")
        user = _user(request)
        return _operate(
            context,
            settings,
            lambda sql, bdr, mail_to: operator.verify(sql, bdr, external_id, old_id, user, domain, mail_to),
            lambda sql: _link_dict(sql, domain, external_id),
        )

    def verify_none(request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        external_id = _int_segment(request, "undertaking")
        user = _user(request)
        return _operate(
            context,
            settings,
            lambda sql, bdr, mail_to: operator.verify_none(sql, bdr, external_id, domain, user, mail_to),
            # The legacy added "verified": true to this one answer.
            lambda sql: {**_one_undertaking(sql, domain, external_id), "verified": True},
        )

    def manual(request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        external_id = _int_segment(request, "undertaking")
        account = request.path_params["account"]
        user = _user(request)
        return _operate(
            context,
            settings,
            lambda sql, bdr, mail_to: operator.manual(sql, bdr, external_id, domain, account, user, mail_to),
            lambda sql: _one_undertaking(sql, domain, external_id),
        )

    def unverify(request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        external_id = _int_segment(request, "undertaking")
        user = _user(request)

        def action(sql: Sql, bdr: BdrEndpointClient, mail_to: Sequence[Recipient]) -> Outcome:
            return operator.unverify(sql, external_id, domain, user)  # no BDR call, no mail (legacy)

        return _operate(context, settings, action, lambda sql: _one_undertaking(sql, domain, external_id))

    def verify_matching_ids(request: Request) -> Any:
        account = request.path_params["account"]
        try:
            external_id = int(request.path_params["undertaking"])
        except ValueError:
            return {"match": 0}  # no undertaking has such an id
        # The legacy guessed the domain from the account ("ods12345", "fgas30123"), case-sensitive,
        # and took the first undertaking with that id in any domain when it could not.
        domain = "ODS" if "ods" in account else "FGAS" if "fgas" in account else None
        with context.engine.connect() as conn:
            stored = Sql(conn).all(
                "SELECT oldcompany_account FROM registry.undertaking WHERE external_id = :e "
                "AND (CAST(:d AS text) IS NULL OR domain = :d) ORDER BY id LIMIT 1",
                {"e": external_id, "d": domain},
            )
        return {"match": 1 if stored and stored[0].oldcompany_account == account else 0}

    table: list[tuple[str, Callable[[Request], Any], str]] = [
        ("/candidate/verify-matching-ids/{undertaking}/{account}", verify_matching_ids, "GET"),
        ("/candidate/{domain}/list", candidate_list, "GET"),
        ("/candidate/{domain}/list/verified", candidate_verified, "GET"),
        ("/candidate/{domain}/verify/{undertaking}/{old_company}", verify, "POST"),
        ("/candidate/{domain}/verify-none/{undertaking}", verify_none, "POST"),
        ("/candidate/{domain}/unverify/{undertaking}/", unverify, "POST"),
        ("/candidate/{domain}/manual/{undertaking}/{account}", manual, "POST"),
        ("/sync/fgases", _starts(sync_fgases), "GET"),
        ("/sync/ods", _starts(sync_ods), "GET"),
        ("/sync/licences", _starts(sync_licences), "GET"),
        ("/sync/bdr", _starts(sync_old_companies), "GET"),
        ("/sync/collections_title", _starts(sync_collection_titles), "GET"),
        ("/match/run", _starts(match_run), "GET"),
        ("/match/flush", _starts(match_flush), "GET"),
    ]
    return [
        Route(path, protected(endpoint), methods=[method])
        for template, endpoint, method in table
        for path in _paths(template)
    ]
