"""The data store's HAWK-signed JSON API: the legacy data-store-service's routes (B7), served
from the tables the data store's loads fill (``ecr_pipelines.datastore``).

Routes: the generic ``/api/v1/table-structure/<schema>/<table>`` and
``/api/v1/table-data/<schema>/<table>``, and the legacy's per-source lists (ONS postcodes, DIT
reference postcodes and the single postcode lookup, BACI, World Bank tariffs, raw tariffs, raw
bound rates), their columns taken from the sources' specs (``datastore.sources``), so that the
API serves what the loader writes. Lists page by key (``WHERE id >= :next ORDER BY id LIMIT
n + 1`` on the tables' primary key): a page costs the same at row 10 million as at row 1.

Authentication, as the legacy's (``mohawk``, sha256): the request's body and content type are
hashed, the timestamp may be 60 s off, and every answer to an authenticated request carries a
``Server-Authorization`` header signing its body. Clients are rows of ``datastore.hawk_users``
(``add_hawk_user``; ``python -m ecr_pipelines api add-hawk-user``), with the route names they
may call (the legacy's view names) or ``*``. Nonces are kept in ``datastore.hawk_nonce`` instead
of Redis: the first use of a (client, nonce, timestamp) inserts it, a second one is an INSERT
conflict and answers 401; rows older than the 300 s replay window are deleted by the API
itself, a bounded batch every ``NONCE_SWEEP_EVERY`` requests of a process. The insert commits
without waiting for the disk (``synchronous_commit off``): a database crash may forget the last
fraction of a second of nonces, which only reopens a replay within the 60 s skew; a request
costs one disk flush less.

Errors keep the legacy's shapes: 401 with an empty body (no header, bad MAC, unknown client,
replay, expired timestamp, route outside the client's scope), 404 ``{}``, 400 and 422
``{"error": message}``, 500 empty.

Pages are written as JSON by Postgres, row by row (see the SQL section): Python joins the rows'
texts into the answer instead of reading and writing every value, which halved a request's CPU.

Names in the URL are never written into SQL: a schema and table are looked up in the catalogue
(bound parameters) and only the names the catalogue gives back are quoted into the statement.
The service schemas (``registry``, ``datastore``, ... and the system ones) answer 404 whatever
they hold.

HAWK signs the URL the client used, so the URL is rebuilt from the request as it arrived: the
scheme (uvicorn's ``proxy_headers`` sets it from ``X-Forwarded-Proto`` when the proxy's address
is in ``FORWARDED_ALLOW_IPS``), the ``Host`` header as sent (its port, or the scheme's default),
the raw path and the query string as sent. Behind a proxy, the proxy must pass ``Host`` on
unchanged.

The endpoints are async only to read the body (HAWK hashes it); the database work runs in
Starlette's thread pool like every other contract's, on one pooled connection per request.
"""

import io
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import mohawk
import mohawk.exc
import mohawk.util
import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.datastore.sources import SOURCES

log = logging.getLogger(__name__)

ALGORITHM = "sha256"
TIMESTAMP_SKEW_SECONDS = 60
# How long a nonce is remembered (the legacy's Redis expiry); well over twice the skew, so a
# request is refused as a replay for as long as its timestamp would be accepted.
NONCE_WINDOW_SECONDS = 300
# Every this many nonces a process records, it deletes up to NONCE_SWEEP_BATCH expired ones:
# more than it added meanwhile, so the table stays about one window of requests large.
NONCE_SWEEP_EVERY = 200
NONCE_SWEEP_BATCH = 5000
# HAWK hashes the body, so it is read whole; these are GET routes, a big body is not a request.
MAX_BODY_BYTES = 1 << 20
JSON = "application/json"

# Helper columns of the loader that the generic routes leave out (as the legacy did).
HIDDEN_COLUMNS = frozenset({"data_hash", "datafile_created", "datafile_updated"})
# Schemas whose tables are not the data store's: the system's, the legacy's internal ones, and
# this project's service schemas. Every schema starting with pg_ is the system's as well.
INTERNAL_SCHEMAS = frozenset(
    {
        "pg_toast",
        "pg_catalog",
        "public",
        "information_schema",
        "operations",
        "admin",
        "registry",
        "iati",
        "ckan",
        "energy",
        "datastore",
        "pipeline",
    }
)
# Tables, partitioned tables, views, materialised views, foreign tables: what can be read.
READABLE_KINDS = ("r", "p", "v", "m", "f")
ORIENTATIONS = ("tabular", "records")

# The legacy's view names, which are the scopes a client may be given (besides "*").
SCOPE_ONS_POSTCODES = "list_ons_postcodes"
SCOPE_REFERENCE_POSTCODES = "list_dit_reference_postcodes"
SCOPE_POSTCODE_1 = "dit_reference_postcode1"
SCOPE_POSTCODE_2 = "dit_reference_postcode2"
SCOPE_TARIFFS = "list_world_bank_tariff"
SCOPE_TARIFFS_RAW = "list_world_bank_tariff_raw"
SCOPE_BOUND_RATES_RAW = "list_world_bank_bound_rates_raw"
SCOPE_BACI = "list_dit_baci"
SCOPE_TABLE_STRUCTURE = "get_table_structure"
SCOPE_TABLE_DATA = "get_table_data"
SCOPES: tuple[str, ...] = (
    SCOPE_ONS_POSTCODES,
    SCOPE_REFERENCE_POSTCODES,
    SCOPE_POSTCODE_1,
    SCOPE_POSTCODE_2,
    SCOPE_TARIFFS,
    SCOPE_TARIFFS_RAW,
    SCOPE_BOUND_RATES_RAW,
    SCOPE_BACI,
    SCOPE_TABLE_STRUCTURE,
    SCOPE_TABLE_DATA,
)
ALL_SCOPES = "*"

# --- clients -----------------------------------------------------------------------------------


def add_hawk_user(
    engine: Engine, client_id: str, client_key: str, scopes: list[str], description: str = ""
) -> None:
    """Store a client of the API, or replace the one with this id (key, scopes, description).
    ``scopes``: route names (``SCOPES``) or ``*``; an unknown name is refused, as a typo would
    otherwise only show as 401 answers."""
    if not client_id:
        raise ValueError("the client id must not be empty")
    try:
        # The id travels in the Authorization header: it must be a valid HAWK attribute.
        mohawk.util.validate_header_attr(client_id, name="id")
    except mohawk.exc.BadHeaderValue as error:
        raise ValueError(f"the client id cannot be sent in a HAWK header: {error}") from None
    if not client_key or not client_key.isascii():
        # mohawk feeds the key to HMAC as bytes of the header's character set.
        raise ValueError("the client key must be non-empty ASCII")
    unknown = [scope for scope in scopes if scope != ALL_SCOPES and scope not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; the routes' scopes are {', '.join(SCOPES)} (or *)")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO datastore.hawk_users (id, key, scope, description) "
                "VALUES (:id, :key, CAST(:scope AS text[]), :description) "
                "ON CONFLICT (id) DO UPDATE SET key = EXCLUDED.key, scope = EXCLUDED.scope, "
                "description = EXCLUDED.description"
            ),
            {"id": client_id, "key": client_key, "scope": list(scopes), "description": description or None},
        )


# --- answers -----------------------------------------------------------------------------------


class Answer(Exception):
    """An answer other than 200, raised from anywhere in a request: ``payload`` None is an empty
    body (401, 500), otherwise JSON."""

    def __init__(
        self, status: int, payload: dict[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})


def unauthorized(headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(401, None, headers)


def not_found() -> Answer:
    return Answer(404, {})


def bad_request(message: str) -> Answer:
    return Answer(400, {"error": message})


def unprocessable(message: str) -> Answer:
    return Answer(422, {"error": message})


def render(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _plain(status: int, payload: dict[str, Any] | None, headers: Mapping[str, str] | None = None) -> Response:
    if payload is None:
        return Response(status_code=status, headers=dict(headers or {}))
    return Response(render(payload), status_code=status, media_type=JSON, headers=dict(headers or {}))


def camel_case(name: str) -> str:
    """The legacy's header names: ``local_authority_district_code`` ->
    ``localAuthorityDistrictCode`` (outer underscores dropped, runs of them count as one)."""
    parts = [part for part in name.strip("_").split("_") if part]
    if not parts:
        return name
    return parts[0] + "".join(part.capitalize() for part in parts[1:])


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """What a request's database work needs, read on the event loop: ``url`` is the URL as the
    client signed it, ``origin`` its ``scheme://host[:port]`` and ``path`` its raw path."""

    method: str
    url: str
    origin: str
    path: str
    query: QueryParams
    params: Mapping[str, str]
    authorization: str
    content_type: str
    body: bytes


def request_url(request: Request) -> tuple[str, str, str]:
    """(origin, raw path, full URL) of the request as the client addressed it."""
    scope = request.scope
    host = request.headers.get("host")
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    origin = f"{scope.get('scheme', 'http')}://{host}"
    # The raw path: HAWK signed it percent-encoded, Starlette's path is decoded.
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    path = raw_path.decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    return origin, path, f"{origin}{path}" + (f"?{query}" if query else "")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise bad_request("request body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise bad_request("request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


class NonceStore:
    """``mohawk``'s ``seen_nonce``, in Postgres: True when this (client, nonce, timestamp) was
    recorded within the window. One per application process (it counts requests for the sweep)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def _sweep_due(self) -> bool:
        with self._lock:
            self._count += 1
            return self._count % NONCE_SWEEP_EVERY == 0

    def seen(self, raw: Any, client_id: str, nonce: str, timestamp: str) -> bool:
        try:
            stamp = int(timestamp)
        except ValueError:
            raise mohawk.exc.BadHeaderValue(f"ts {timestamp!r} is not a whole number") from None
        with raw.cursor() as cursor:
            if self._sweep_due():
                # The oldest first, a batch at most: never a long delete in a request.
                cursor.execute(
                    "DELETE FROM datastore.hawk_nonce WHERE ctid = ANY(ARRAY("
                    "SELECT ctid FROM datastore.hawk_nonce "
                    "WHERE seen_at < now() - make_interval(secs => %(window)s) LIMIT %(batch)s))",
                    {"window": NONCE_WINDOW_SECONDS, "batch": NONCE_SWEEP_BATCH},
                )
            # One round trip: psycopg2 gives the last statement's rows.
            cursor.execute(
                "SET LOCAL synchronous_commit TO off; "
                "INSERT INTO datastore.hawk_nonce (client_id, nonce, ts) VALUES (%(id)s, %(nonce)s, %(ts)s) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                {"id": client_id, "nonce": nonce, "ts": stamp},
            )
            first = cursor.fetchone() is not None
        raw.commit()
        return not first


def _hashable(content: bytes) -> Any:
    """``content`` as mohawk should hash it. Given bytes, mohawk formats them whole with
    ``pprint`` for a debug line it then drops (it was two thirds of the time of a request for a
    1,000-row page); given a
    file object, it reads it in blocks and formats only the object's name. An empty body stays
    bytes: mohawk accepts a request without a payload hash only when its content is falsy."""
    return io.BytesIO(content) if content else content


# mohawk's refusals that are the legacy's 401 (Unauthorized); any other HawkFail is its 400.
_REFUSED = (
    mohawk.exc.MissingAuthorization,
    mohawk.exc.MacMismatch,
    mohawk.exc.CredentialsLookupError,
    mohawk.exc.AlreadyProcessed,
    mohawk.exc.MisComputedContentHash,
)


def authenticate(raw: Any, call: Call, nonces: NonceStore) -> tuple[mohawk.Receiver, list[str]]:
    """The checked receiver (to sign the answer with) and the client's scopes; ``Answer`` 401 or
    400 when the request is not signed as it must be."""
    scopes: list[str] = []

    def credentials(client_id: str) -> dict[str, str]:
        with raw.cursor() as cursor:
            cursor.execute("SELECT key, scope FROM datastore.hawk_users WHERE id = %(id)s", {"id": client_id})
            row = cursor.fetchone()
        if row is None:
            raise LookupError(client_id)
        scopes.extend(row[1] or [])
        return {"id": client_id, "key": row[0], "algorithm": ALGORITHM}

    try:
        receiver = mohawk.Receiver(
            credentials,
            request_header=call.authorization,
            url=call.url,
            method=call.method,
            content=_hashable(call.body),
            content_type=call.content_type,
            seen_nonce=lambda client_id, nonce, ts: nonces.seen(raw, client_id, nonce, ts),
            timestamp_skew_in_seconds=TIMESTAMP_SKEW_SECONDS,
            localtime_offset_in_seconds=0,
            accept_untrusted_content=False,
        )
    except mohawk.exc.TokenExpired as error:
        # The class only: mohawk's messages carry MACs and timestamps.
        log.info("HAWK request refused: TokenExpired")
        # HAWK's answer to a clock off by more than the skew: the server's time, signed, so that
        # a client can correct its clock (the body stays empty, as the legacy's).
        raise unauthorized({"WWW-Authenticate": error.www_authenticate}) from None
    except _REFUSED as error:
        log.info("HAWK request refused: %s", type(error).__name__)
        raise unauthorized() from None
    except mohawk.exc.HawkFail as error:
        raise bad_request(str(error)) from None
    except KeyError as error:
        raise bad_request(f"the Hawk header has no {error.args[0]} attribute") from None
    return receiver, scopes


# A route's work on the request's connection: the JSON body of its 200 answer.
Handler = Callable[[Any, Call], bytes]


def _serve(
    context: ApiContext, nonces: NonceStore, scope_name: str, handler: Handler, call: Call
) -> Response:
    """One request's database work, in a worker thread: authenticate, authorise, answer, sign."""
    try:
        with context.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            receiver, scopes = authenticate(raw, call, nonces)
            if ALL_SCOPES not in scopes and scope_name not in scopes:
                log.info("HAWK request refused: %s is outside the client's scope", scope_name)
                raise unauthorized()
            status = 200
            try:
                body = handler(raw, call)
            except Answer as answer:
                status, body = answer.status, render(answer.payload or {})
            finally:
                raw.rollback()  # reads only; the nonce is committed already
            signature = receiver.respond(content=_hashable(body), content_type=JSON)
            return Response(
                body, status_code=status, media_type=JSON, headers={"Server-Authorization": signature}
            )
    except Answer as answer:
        return _plain(answer.status, answer.payload, answer.headers)
    except Exception:
        log.exception("data store API: %s %s failed", call.method, call.path)
        return Response(status_code=500)


def _endpoint(
    context: ApiContext, nonces: NonceStore, scope_name: str, handler: Handler
) -> Callable[..., Any]:
    async def endpoint(request: Request) -> Response:
        authorization = request.headers.get("authorization")
        if not authorization:
            return Response(status_code=401)
        try:
            body = await _read_body(request)
        except Answer as answer:
            return _plain(answer.status, answer.payload)
        origin, path, url = request_url(request)
        call = Call(
            method=request.method,
            url=url,
            origin=origin,
            path=path,
            query=request.query_params,
            params=dict(request.path_params),
            authorization=authorization,
            content_type=request.headers.get("content-type", ""),
            body=body,
        )
        response: Response = await run_in_threadpool(_serve, context, nonces, scope_name, handler, call)
        return response

    endpoint.__name__ = scope_name
    return endpoint


# --- SQL -----------------------------------------------------------------------------------------
# Pages are written as JSON by Postgres, a row at a time (``json_build_array`` / ``row_to_json``):
# a 1,000-row page costs the server the same as sending the rows, and Python only joins the rows'
# texts instead of reading every value into an object and writing it out again (which took
# twice the CPU of everything else in a request). Postgres's JSON is the legacy's: numbers as
# numbers (numeric exactly), dates and timestamps in ISO 8601, NULL as null; NaN and the
# infinities, which JSON cannot carry, are made null here, as the legacy's pandas made NaN.

_FLOATS = frozenset({700, 701})  # real, double precision
_NUMERIC = 1700
# Postgres functions take at most 100 arguments (json_build_array's columns).
MAX_FUNCTION_ARGS = 100
_NOT_A_NUMBER = "('NaN', 'Infinity', '-Infinity')"
# numeric has infinities from Postgres 14 on; before, 'Infinity' is not a numeric literal.
NUMERIC_INFINITY_VERSION = 140000


@dataclass(frozen=True)
class Column:
    """A column as the catalogue has it: ``type`` as ``format_type`` prints it, ``base`` its type
    (a domain's base type), ``element`` an array's element type (else 0)."""

    name: str
    type: str
    base: int
    element: int


@dataclass(frozen=True)
class Relation:
    schema: str
    table: str
    columns: tuple[Column, ...]

    @property
    def sql(self) -> str:
        return f"{_ident(self.schema)}.{_ident(self.table)}"

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise LookupError(f"{self.schema}.{self.table} has no column {name!r}")


def _ident(name: str) -> str:
    # Doubled quotes for SQL, doubled percent signs for psycopg2's parameter syntax: the names
    # are the catalogue's or the specs', never the request's.
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


def _orientation(call: Call) -> str:
    orientation = call.query.get("orientation", "tabular")
    if orientation not in ORIENTATIONS:
        raise bad_request("orientation must be tabular or records")
    return orientation


def _json_value(column: Column, server_version: int) -> str:
    """The column's value as JSON should get it."""
    name = _ident(column.name)
    numeric_guard = _NOT_A_NUMBER if server_version >= NUMERIC_INFINITY_VERSION else "('NaN')"
    if column.base in _FLOATS:
        return f"CASE WHEN {name} IN {_NOT_A_NUMBER} THEN NULL ELSE {name} END"
    if column.base == _NUMERIC:
        return f"CASE WHEN {name} IN {numeric_guard} THEN NULL ELSE {name} END"
    if column.element in _FLOATS or column.element == _NUMERIC:
        # An array of numbers, element by element (a multidimensional one comes out flat).
        return (
            f"CASE WHEN cardinality({name}) = 0 THEN '[]'::json ELSE (SELECT json_agg(CASE WHEN "
            f"api_item.value::text IN {_NOT_A_NUMBER} THEN NULL ELSE api_item.value END ORDER BY api_item.position) "
            f"FROM unnest({name}) WITH ORDINALITY AS api_item(value, position)) END"
        )
    return name


def _json_row(
    columns: Sequence[Column], headers: Sequence[str], orientation: str, server_version: int
) -> str:
    """SQL of one row's JSON text: an object of ``headers`` (records), an array, or the value
    itself for a single column (the legacy's flat list)."""
    values = [_json_value(column, server_version) for column in columns]
    if orientation == "records":
        # A subquery without FROM: its names are the outer row's columns. ``api_row.*`` is the
        # whole row whatever the headers are called.
        aliased = ", ".join(
            f"{value} AS {_ident(header)}" for value, header in zip(values, headers, strict=True)
        )
        return f"(SELECT row_to_json(api_row.*) FROM (SELECT {aliased}) AS api_row)::text"
    if len(values) == 1:
        return f"to_json({values[0]})::text"
    if len(values) <= MAX_FUNCTION_ARGS:
        return f"json_build_array({', '.join(values)})::text"
    return f"array_to_json(ARRAY[{', '.join(f'to_json({value})' for value in values)}])::text"


def _json_rows(
    raw: Any,
    relation: Relation,
    columns: Sequence[Column],
    headers: Sequence[str],
    orientation: str,
    where: str,
    params: dict[str, Any],
    order: str,
    limit: int,
) -> list[tuple[Any, str]]:
    """(id, JSON text) of the rows; ``where``, ``order`` are SQL of this module, values in ``params``."""
    sql = (
        f'SELECT "id", {_json_row(columns, headers, orientation, raw.server_version)} FROM {relation.sql} '
        f"WHERE {where} ORDER BY {order} LIMIT %(limit)s"
    )
    with raw.cursor() as cursor:
        cursor.execute(sql, {**params, "limit": limit})
        return [(row[0], row[1] if row[1] is not None else "null") for row in cursor.fetchall()]


def _body(headers: Sequence[str], rows: Sequence[tuple[Any, str]], orientation: str, **more: Any) -> bytes:
    """The legacy's shapes, ``{"headers", "values"}`` or ``{"results"}`` (plus ``more``), around
    the rows' JSON texts."""
    items = "[" + ",".join(text for _, text in rows) + "]"
    if orientation == "records":
        parts = [f'"results":{items}']
    else:
        parts = ['"headers":' + json.dumps(list(headers), ensure_ascii=False), f'"values":{items}']
    parts += [f"{json.dumps(key)}:{json.dumps(value, ensure_ascii=False)}" for key, value in more.items()]
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def _page(
    raw: Any, call: Call, relation: Relation, names: Sequence[str], headers: Sequence[str], page_size: int
) -> bytes:
    """One page of ``relation`` by ``id``: ``next-id`` (inclusive) to ``page_size`` rows on, and
    the link to the next page when there is one (the legacy's, with the path as it was sent)."""
    orientation = _orientation(call)
    next_id = call.query.get("next-id")
    # A row without an id has no place in the order a client pages through.
    where = '"id" IS NOT NULL'
    params: dict[str, Any] = {}
    if next_id is not None:
        # Bound as text: Postgres reads it as the id column's type, and the index serves it.
        where += ' AND "id" >= %(next_id)s'
        params["next_id"] = next_id
    columns = [relation.column(name) for name in names]
    try:
        rows = _json_rows(raw, relation, columns, headers, orientation, where, params, '"id"', page_size + 1)
    except (psycopg2.DataError, ValueError):  # not a value of the id's type; a NUL character
        raise bad_request("next-id is not an id of this table") from None
    link = None
    if len(rows) > page_size:
        following = quote(str(rows[page_size][0]), safe="")
        link = f"{call.origin}{call.path}?orientation={orientation}&next-id={following}"
        rows = rows[:page_size]
    return _body(headers, rows, orientation, next=link)


def _catalogue(raw: Any, schema: str, table: str) -> Relation | None:
    """The relation as the catalogue has it (names, columns in order, types), None when there
    is no readable relation of that name."""
    with raw.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
            "CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, "
            "CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END "
            "FROM pg_catalog.pg_class AS c "
            "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_catalog.pg_attribute AS a "
            "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "LEFT JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid "
            "WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind = ANY(%(kinds)s) "
            "ORDER BY a.attnum",
            {"schema": schema, "table": table, "kinds": list(READABLE_KINDS)},
        )
        rows = cursor.fetchall()
    if not rows:
        return None
    columns = tuple(
        Column(name, kind, base, element) for _, _, name, kind, base, element in rows if name is not None
    )
    return Relation(rows[0][0], rows[0][1], columns)


def _requested(raw: Any, call: Call) -> Relation:
    """The relation the URL names; ``Answer`` 404 for an internal schema or no such relation."""
    schema, table = call.params["schema"], call.params["table"]
    if schema in INTERNAL_SCHEMAS or schema.startswith("pg_") or "\x00" in schema + table:
        raise not_found()
    relation = _catalogue(raw, schema, table)
    if relation is None:
        raise not_found()
    return relation


def type_name(formatted: str) -> str:
    """Postgres's type name as the legacy's reflection printed it: ``INTEGER``, ``TEXT``,
    ``TIMESTAMP WITHOUT TIME ZONE``, ``VARCHAR(20)``, ``NUMERIC(10, 2)``."""
    name = formatted.upper()
    if name.startswith("CHARACTER VARYING"):
        name = "VARCHAR" + name[len("CHARACTER VARYING") :]
    elif name.startswith("CHARACTER"):
        name = "CHAR" + name[len("CHARACTER") :]
    return name.replace(",", ", ")


def table_structure(raw: Any, call: Call) -> bytes:
    relation = _requested(raw, call)
    columns = [
        {"name": column.name, "type": type_name(column.type)}
        for column in relation.columns
        if column.name not in HIDDEN_COLUMNS
    ]
    return render({"columns": columns})


def _table_data(page_size: int) -> Handler:
    def handler(raw: Any, call: Call) -> bytes:
        relation = _requested(raw, call)
        names = [column.name for column in relation.columns if column.name not in HIDDEN_COLUMNS]
        if "id" not in names:
            raise unprocessable("The table must have an id column")
        names.remove("id")
        return _page(raw, call, relation, ["id", *names], ["id", *names], page_size)

    return handler


# --- the legacy's per-source routes ---------------------------------------------------------------


@dataclass(frozen=True)
class SourceList:
    """A per-source list of the legacy: a table of a source and the columns it served."""

    path: str
    scope: str
    schema: str
    table: str
    columns: tuple[str, ...]
    include_id: bool = False
    camel_case: bool = True

    @property
    def headers(self) -> list[str]:
        names = ["id", *self.columns] if self.include_id else list(self.columns)
        return [camel_case(name) for name in names] if self.camel_case else names


def _l1_columns(source_id: str) -> tuple[str, ...]:
    transform = SOURCES[source_id].l1
    assert transform is not None, source_id
    return transform.column_names


ONS = SOURCES["ons.postcode_directory"]
REFERENCE_POSTCODES = SOURCES["dit.reference_postcodes"]
BACI = SOURCES["dit.baci"]
TARIFF = SOURCES["world_bank.tariff"]
TARIFF_TRANSFORMED = SOURCES["world_bank.tariff.transformed"]
BOUND_RATES = SOURCES["world_bank.bound_rates"]

SOURCE_LISTS: tuple[SourceList, ...] = (
    # The ONS list kept its column names and its ids (B7).
    SourceList(
        "/api/v1/get-ons-postcodes/",
        SCOPE_ONS_POSTCODES,
        ONS.schema,
        "L1",
        _l1_columns(ONS.id),
        include_id=True,
        camel_case=False,
    ),
    SourceList(
        "/api/v1/get-dit-reference-postcodes/",
        SCOPE_REFERENCE_POSTCODES,
        REFERENCE_POSTCODES.schema,
        "L1",
        _l1_columns(REFERENCE_POSTCODES.id),
    ),
    SourceList("/api/v1/get-dit-baci-data/", SCOPE_BACI, BACI.schema, "L1", _l1_columns(BACI.id)),
    # The transform's table (L1 of world_bank.tariff).
    SourceList(
        "/api/v1/get-world-bank-tariffs/",
        SCOPE_TARIFFS,
        TARIFF.schema,
        "L1",
        _l1_columns(TARIFF_TRANSFORMED.id),
    ),
    SourceList(
        "/api/v1/get-world-bank-tariffs/raw/", SCOPE_TARIFFS_RAW, TARIFF.schema, "L0", TARIFF.column_names
    ),
    SourceList(
        "/api/v1/get-world-bank-bound-rates/raw/",
        SCOPE_BOUND_RATES_RAW,
        BOUND_RATES.schema,
        "L0",
        BOUND_RATES.column_names,
    ),
)
POSTCODE_PATHS = (
    ("/api/v1/get-postcode-data/", SCOPE_POSTCODE_1),
    ("/api/v1/get-dit-reference-postcode/", SCOPE_POSTCODE_2),
)


def _source_list(source: SourceList, page_size: int) -> Handler:
    names = ["id", *source.columns] if source.include_id else list(source.columns)

    def handler(raw: Any, call: Call) -> bytes:
        relation = _catalogue(raw, source.schema, source.table)
        if relation is None:
            # A source not loaded yet lists nothing, as the legacy's empty tables did.
            return _body(source.headers, [], _orientation(call), next=None)
        return _page(raw, call, relation, names, source.headers, page_size)

    return handler


def postcode(raw: Any, call: Call) -> bytes:
    """One reference postcode, spaces and case ignored. A postcode whose data changed has a row
    per version in the snapshot's L1; the newest (highest id) is given, where the legacy's
    ``LIMIT 1`` gave any."""
    orientation = _orientation(call)
    wanted = call.query.get("postcode")
    if not wanted:
        raise bad_request("No postcode specified")
    names = _l1_columns(REFERENCE_POSTCODES.id)
    headers = [camel_case(name) for name in names]
    relation = _catalogue(raw, REFERENCE_POSTCODES.schema, "L1")
    rows: list[tuple[Any, str]] = []
    if relation is not None and "\x00" not in wanted:  # no postcode has a NUL character
        rows = _json_rows(
            raw,
            relation,
            [relation.column(name) for name in names],
            headers,
            orientation,
            "lower(replace(\"postcode\", ' ', '')) = %(postcode)s",
            {"postcode": wanted.replace(" ", "").lower()},
            '"id" DESC',
            1,
        )
    return _body(headers, rows, orientation)


def routes(context: ApiContext) -> list[BaseRoute]:
    nonces = NonceStore()
    page_size = context.settings.pagination_size
    found: list[BaseRoute] = [
        Route(
            source.path,
            _endpoint(context, nonces, source.scope, _source_list(source, page_size)),
            methods=["GET"],
        )
        for source in SOURCE_LISTS
    ]
    found += [
        Route(path, _endpoint(context, nonces, scope, postcode), methods=["GET"])
        for path, scope in POSTCODE_PATHS
    ]
    found += [
        Route(
            "/api/v1/table-structure/{schema}/{table}",
            _endpoint(context, nonces, SCOPE_TABLE_STRUCTURE, table_structure),
            methods=["GET"],
        ),
        Route(
            "/api/v1/table-data/{schema}/{table}",
            _endpoint(context, nonces, SCOPE_TABLE_DATA, _table_data(page_size)),
            methods=["GET"],
        ),
    ]
    return found
