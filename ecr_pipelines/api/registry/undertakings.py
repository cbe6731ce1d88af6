"""The registry API's read side for BDR (part A): undertakings, users, old companies, the mail
list, the logs, licences and exports, with the legacy paths and JSON shapes.

Every answer is built from the tables the registry pipelines fill (``registry`` schema), with the
legacy's field names: the undertaking's ``external_id`` is ``company_id``, internal ``id`` columns
are left out, dates are ``DD/MM/YYYY`` and datetimes ``DD/MM/YYYY HH:MM``. The JSON key order
follows the legacy's serialisers (its model columns in table order, ``company_id`` after them,
the nested objects after that), so a diff of an old and a new answer shows only real changes.

What is reused rather than re-implemented: the name filter's fuzzy test is the matching's
(``registry.matching.score_passes`` on rapidfuzz's ratio, ``FUZZ_LIMIT`` as the pipelines read
it); licence quantities follow ``registry.licences`` (int unless "laboratory uses"), and the
operator's ``PATCH_LICENCES`` are the substance rows the licence stage stores marked ``patched``
(``registry.store.licences.store_patched_substances``), so the API never reads the patches file.

Each endpoint is a plain function run in Starlette's thread pool behind ``auth.protected``; SQL is
fixed text with bound parameters (the filter route picks whole clauses from a fixed table).
"""

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import xlsxwriter
from rapidfuzz import fuzz
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.api.registry.auth import (
    ApiError,
    domain_of,
    form,
    format_date,
    format_datetime,
    json_body,
    not_found,
    protected,
)
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.licences import LABORATORY_USES
from ecr_pipelines.registry.matching import DEFAULT_FUZZ_LIMIT, score_passes

log = logging.getLogger(__name__)

XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

# /log/check_sync took these spellings of the domain (the BDR monitoring uses the lower-case ones).
CHECK_SYNC_DOMAINS = {"ods": "ODS", "ODS": "ODS", "FGAS": "FGAS", "fgases": "FGAS", "fgas": "FGAS"}

# /undertaking/<d>/filter: the accepted parameters, and the clause each exact one adds.
FILTERS = ("id", "vat", "name", "countrycode", "OR_vat", "OR_name")
EXACT_FILTER_CLAUSES = {
    "id": "u.external_id = :id",
    "countrycode": "u.country_code_orig = :countrycode",
    "vat": "u.vat = :vat",
    "OR_vat": "r.vatnumber = :OR_vat",
}


def fuzz_limit() -> int:
    """``FUZZ_LIMIT`` as the pipelines read it (``registry.defs.resources``), default 75."""
    raw = env_str("FUZZ_LIMIT")
    return int(raw) if raw else DEFAULT_FUZZ_LIMIT


# --------------------------------------------------------------------------------------------------
# loading undertakings and what hangs off them

UNDERTAKING_COLUMNS = (
    "u.id, u.external_id, u.registration_id, u.name, u.address_id, u.website, u.phone, u.domain, "
    "u.date_created, u.date_updated, u.date_created_in_ecr, u.date_updated_in_ecr, u.status, "
    "u.country_code, u.country_code_orig, u.undertaking_type, u.vat, u.eori_number, u.represent_id, "
    "u.oldcompany_verified, u.oldcompany_account, u.oldcompany_extid, u.oldcompany_id, u.check_passed"
)
# The legacy model's columns in table order (its ``as_dict``), ``id`` and ``external_id`` aside.
UNDERTAKING_FIELDS = (
    "registration_id",
    "name",
    "address_id",
    "website",
    "phone",
    "domain",
    "date_created",
    "date_updated",
    "date_created_in_ecr",
    "date_updated_in_ecr",
    "status",
    "country_code",
    "country_code_orig",
    "undertaking_type",
    "vat",
    "eori_number",
    "represent_id",
    "oldcompany_verified",
    "oldcompany_account",
    "oldcompany_extid",
    "oldcompany_id",
    "check_passed",
)
DATE_FIELDS = frozenset({"date_created", "date_updated", "date_created_in_ecr", "date_updated_in_ecr"})
# The legacy's list_by_vat answer drops these from the model's columns.
BY_VAT_DROPPED = frozenset(
    {
        "address_id",
        "oldcompany_id",
        "represent_id",
        "phone",
        "country_code",
        "date_created",
        "oldcompany_account",
        "oldcompany_extid",
        "domain",
        "website",
        "status",
        "undertaking_type",
        "date_updated",
        "oldcompany_verified",
        "vat",
    }
)


def undertaking_columns(row: Any) -> dict[str, Any]:
    """The legacy ``as_dict`` of an undertaking: its columns, dates as text, ``company_id`` last."""
    values = row._mapping
    data = {f: format_date(values[f]) if f in DATE_FIELDS else values[f] for f in UNDERTAKING_FIELDS}
    data["company_id"] = values["external_id"]
    return data


def load_undertakings(sql: Sql, where: str, params: Mapping[str, Any]) -> list[Any]:
    """Undertaking rows matching ``where`` (a fixed clause of this module, never request text)."""
    return sql.all(
        f"SELECT {UNDERTAKING_COLUMNS} FROM registry.undertaking u WHERE {where} ORDER BY u.id", params
    )


def _grouped(rows: Iterable[Any]) -> dict[int, list[Any]]:
    groups: dict[int, list[Any]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    return groups


class Relations:
    """Addresses, users, types, business profiles, representatives and histories of a set of
    undertakings, each read in one statement (not one per undertaking)."""

    def __init__(self, sql: Sql, undertakings: Sequence[Any]) -> None:
        ids = [u.id for u in undertakings]
        self.users: dict[int, list[Any]] = {}
        self.types: dict[int, list[Any]] = {}
        self.profiles: dict[int, list[Any]] = {}
        self.country_history: dict[int, list[Any]] = {}
        self.represent_history: dict[int, list[Any]] = {}
        self.represents: dict[int, Any] = {}
        self.addresses: dict[int, Any] = {}
        if not ids:
            return
        params = {"ids": ids}
        self.users = _grouped(
            sql.all(
                "SELECT uu.undertaking_id, us.ecas_id, us.username, us.first_name, us.last_name, us.email, us.type "
                'FROM registry.undertaking_users uu JOIN registry."user" us ON us.id = uu.user_id '
                "WHERE uu.undertaking_id = ANY(:ids) ORDER BY uu.undertaking_id, us.id",
                params,
            )
        )
        self.types = _grouped(
            sql.all(
                "SELECT ut.undertaking_id, t.type FROM registry.undertaking_types ut "
                "JOIN registry.type t ON t.id = ut.type_id WHERE ut.undertaking_id = ANY(:ids) "
                "ORDER BY ut.undertaking_id, t.id",
                params,
            )
        )
        self.profiles = _grouped(
            sql.all(
                "SELECT ub.undertaking_id, b.highleveluses, b.code, b.short_code "
                "FROM registry.undertaking_businessprofile ub "
                "JOIN registry.businessprofile b ON b.id = ub.businessprofile_id "
                "WHERE ub.undertaking_id = ANY(:ids) ORDER BY ub.undertaking_id, b.id",
                params,
            )
        )
        self.country_history = _grouped(
            sql.all(
                "SELECT h.undertaking_id, c.code FROM registry.undertaking_country_history h "
                "JOIN registry.country c ON c.id = h.country_id WHERE h.undertaking_id = ANY(:ids) "
                "ORDER BY h.undertaking_id, c.id",
                params,
            )
        )
        # Representatives get a new row when their VAT number changes: id order is history order.
        self.represent_history = _grouped(
            sql.all(
                "SELECT undertaking_id, represent_id FROM registry.undertaking_represent_history "
                "WHERE undertaking_id = ANY(:ids) ORDER BY undertaking_id, represent_id",
                params,
            )
        )
        represent_ids = {u.represent_id for u in undertakings if u.represent_id is not None}
        represent_ids |= {r.represent_id for rows in self.represent_history.values() for r in rows}
        if represent_ids:
            self.represents = {
                r.id: r
                for r in sql.all(
                    "SELECT id, name, address_id, vatnumber, contact_first_name, contact_last_name, contact_email "
                    "FROM registry.represent WHERE id = ANY(:ids)",
                    {"ids": sorted(represent_ids)},
                )
            }
        address_ids = {u.address_id for u in undertakings if u.address_id is not None}
        address_ids |= {r.address_id for r in self.represents.values() if r.address_id is not None}
        if address_ids:
            self.addresses = {
                a.id: a
                for a in sql.all(
                    "SELECT a.id, a.street, a.number, a.zipcode, a.city, a.country_id, "
                    "c.code, c.name AS country_name, c.type AS country_type "
                    "FROM registry.address a LEFT JOIN registry.country c ON c.id = a.country_id "
                    "WHERE a.id = ANY(:ids)",
                    {"ids": sorted(address_ids)},
                )
            }

    # -- the legacy's nested objects

    def address(self, address_id: int | None) -> dict[str, Any] | None:
        row = self.addresses.get(address_id) if address_id is not None else None
        if row is None:
            return None
        country = (
            None
            if row.country_id is None
            else {"code": row.code, "name": row.country_name, "type": row.country_type}
        )
        return {
            "street": row.street,
            "number": row.number,
            "zipcode": row.zipcode,
            "city": row.city,
            "country": country,
        }

    def country_code_of(self, address_id: int | None) -> str | None:
        row = self.addresses.get(address_id) if address_id is not None else None
        return None if row is None else row.code

    def representative(self, represent_id: int | None) -> dict[str, Any] | None:
        row = self.represents.get(represent_id) if represent_id is not None else None
        if row is None:
            return None
        return {
            "name": row.name,
            "vatnumber": row.vatnumber,
            "contact_first_name": row.contact_first_name,
            "contact_last_name": row.contact_last_name,
            "contact_email": row.contact_email,
            "address": self.address(row.address_id),
        }

    def representative_country(self, represent_id: int | None) -> str | None:
        row = self.represents.get(represent_id) if represent_id is not None else None
        return None if row is None else self.country_code_of(row.address_id)

    def users_of(self, undertaking_id: int) -> list[dict[str, Any]]:
        return [
            {
                "ecas_id": u.ecas_id,
                "username": u.username,
                "first_name": u.first_name,
                "last_name": u.last_name,
                "email": u.email,
                "type": u.type,
            }
            for u in self.users.get(undertaking_id, [])
        ]

    def types_of(self, undertaking_id: int) -> str:
        return ",".join(t.type for t in self.types.get(undertaking_id, []))

    def businessprofile_of(self, undertaking_id: int) -> str:
        return ",".join(p.highleveluses for p in self.profiles.get(undertaking_id, []))

    def businessprofiles_of(self, undertaking_id: int) -> list[dict[str, Any]]:
        return [{"code": p.code, "short_code": p.short_code} for p in self.profiles.get(undertaking_id, [])]

    def country_history_of(self, undertaking_id: int) -> list[str]:
        return [c.code for c in self.country_history.get(undertaking_id, [])]

    def represent_history_ids(self, undertaking_id: int) -> list[int]:
        return [r.represent_id for r in self.represent_history.get(undertaking_id, [])]

    def represent_history_of(self, undertaking_id: int) -> list[dict[str, Any]]:
        return [
            rep
            for rep in (self.representative(i) for i in self.represent_history_ids(undertaking_id))
            if rep is not None
        ]

    def filtered_represent_history(self, undertaking: Any) -> list[dict[str, Any]]:
        """The details answer's history: representatives in the undertaking's current country,
        in a country already listed, or in its country history are left out (legacy rule)."""
        history_codes = set(self.country_history_of(undertaking.id))
        kept: list[dict[str, Any]] = []
        kept_codes: list[str | None] = []
        for represent_id in self.represent_history_ids(undertaking.id):
            rep = self.representative(represent_id)
            if rep is None:
                continue
            code = self.representative_country(represent_id)
            if code == undertaking.country_code or code in kept_codes or code in history_codes:
                continue
            kept.append(rep)
            kept_codes.append(code)
        return kept


def list_item(u: Any, rel: Relations) -> dict[str, Any]:
    """One undertaking as ``/undertaking/<d>/list`` (and the xlsx export) shows it."""
    data = undertaking_columns(u)
    for dropped in ("address_id", "represent_id", "oldcompany_id"):
        data.pop(dropped)
    data.update(
        {
            "address": rel.address(u.address_id),
            "users": rel.users_of(u.id),
            "types": rel.types_of(u.id),
            "country_history": rel.country_history_of(u.id),
            "representative": rel.representative(u.represent_id),
            "represent_history": rel.represent_history_of(u.id),
            "businessprofile": rel.businessprofile_of(u.id),
            "businessprofiles": rel.businessprofiles_of(u.id),
        }
    )
    data["collection_id"] = u.oldcompany_account
    return data


def small_item(u: Any, rel: Relations) -> dict[str, Any]:
    return {
        "company_id": u.external_id,
        "registration_id": u.registration_id,
        "name": u.name,
        "domain": u.domain,
        "vat": u.vat,
        "eori_number": u.eori_number,
        "date_created": format_date(u.date_created),
        "address": rel.address(u.address_id),
        "users": rel.users_of(u.id),
    }


def by_vat_item(u: Any) -> dict[str, Any]:
    return {k: v for k, v in undertaking_columns(u).items() if k not in BY_VAT_DROPPED}


def old_company_item(row: Any) -> dict[str, Any]:
    """The legacy ``as_dict`` of an old company (``company_id`` = the BDR registry's pk)."""
    return {
        "name": row.name,
        "country_code": row.country_code,
        "account": row.account,
        "vat_number": row.vat_number,
        "eori": row.eori,
        "active": row.active,
        "website": row.website,
        "date_registered": format_datetime(row.date_registered),
        "valid": row.valid,
        "obligation": row.obligation,
        "company_id": row.external_id,
    }


OLD_COMPANY_COLUMNS = (
    "o.id, o.external_id, o.name, o.country_code, o.account, o.vat_number, o.eori, o.active, o.website, "
    "o.date_registered, o.valid, o.obligation"
)


def detail_item(sql: Sql, u: Any, rel: Relations) -> dict[str, Any]:
    """``/undertaking/<d>/<pk>/details``: the list item's fields plus the matching candidates
    (every proposed link, with the old company's country name), the filtered histories and
    ``auditors`` (empty: auditors are not synced)."""
    candidates = sql.all(
        f"SELECT {OLD_COMPANY_COLUMNS}, "
        "(SELECT c.name FROM registry.country c WHERE c.code = upper(o.country_code)) AS country_name "
        "FROM registry.old_company_link l JOIN registry.old_company o ON o.id = l.oldcompany_id "
        "WHERE l.undertaking_id = :u ORDER BY o.id",
        {"u": u.id},
    )
    data = undertaking_columns(u)
    for dropped in ("address_id", "represent_id"):
        data.pop(dropped)
    data.update(
        {
            "address": rel.address(u.address_id),
            "businessprofile": rel.businessprofile_of(u.id),
            "businessprofiles": rel.businessprofiles_of(u.id),
            "country_history": rel.country_history_of(u.id),
            "representative": rel.representative(u.represent_id),
            "represent_history": rel.filtered_represent_history(u),
            "users": rel.users_of(u.id),
            "candidates": [{**old_company_item(c), "country": c.country_name} for c in candidates],
            "types": rel.types_of(u.id),
            "auditors": [],
        }
    )
    data["collection_id"] = u.oldcompany_account
    return data


def user_company_item(u: Any, rel: Relations) -> dict[str, Any]:
    """A verified undertaking of a user, as ``/user/<username>/companies`` lists it."""
    return {
        "company_id": u.external_id,
        "collection_id": u.oldcompany_account,
        "name": u.name,
        "domain": u.domain,
        "country": u.country_code,
        "country_history": rel.country_history_of(u.id),
        "representative_country": rel.representative_country(u.represent_id),
        "represent_history": rel.represent_history_of(u.id),
    }


# --------------------------------------------------------------------------------------------------
# request helpers


def _sql_read(context: ApiContext) -> Connection:
    return context.engine.connect()


def _one_undertaking(sql: Sql, domain: str, pk: int) -> Any:
    rows = load_undertakings(sql, "u.domain = :d AND u.external_id = :e", {"d": domain, "e": pk})
    if not rows:
        raise not_found()
    return rows[0]


def _first_values(request: Request) -> list[tuple[str, str]]:
    """Query parameters, the first value of each (what the legacy's Flask ``args.items()`` gave)."""
    seen: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        seen.setdefault(key, value)
    return list(seen.items())


def _page(request: Request) -> tuple[int, int] | None:
    """``(limit, offset)`` from the legacy list views' ``page`` and ``per-page`` (1-based pages),
    or None when either is missing."""
    page, per_page = request.query_params.get("page"), request.query_params.get("per-page")
    if not page or not per_page:
        return None
    try:
        number, size = int(page), int(per_page)
    except ValueError:
        raise ApiError(400, {"error": "page and per-page are whole numbers"}) from None
    if number < 1 or size < 1:
        raise ApiError(400, {"error": "page and per-page start at 1"})
    return size, (number - 1) * size


def _paged(sql_text: str, request: Request) -> tuple[str, dict[str, Any]]:
    page = _page(request)
    if page is None:
        return sql_text, {}
    return f"{sql_text} LIMIT :limit OFFSET :offset", {"limit": page[0], "offset": page[1]}


def _xlsx(sheet: str, header: Sequence[str], rows: Iterable[Sequence[Any]], filename: str) -> Response:
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"in_memory": True})
    worksheet = workbook.add_worksheet(sheet)
    worksheet.write_row(0, 0, list(header))
    for number, row in enumerate(rows, start=1):
        worksheet.write_row(number, 0, list(row))
    workbook.close()
    return Response(
        buffer.getvalue(),
        media_type=XLSX_MIME,
        headers={"Content-Disposition": f"attachment; filename={filename}"},
    )


# --------------------------------------------------------------------------------------------------
# the routes


def routes(context: ApiContext) -> list[BaseRoute]:
    """Part A of the registry API (see the module docstring)."""
    limit = fuzz_limit()

    def read(function: Any) -> Any:
        """Run ``function(sql, request)`` on a read connection."""

        def endpoint(request: Request) -> Any:
            with _sql_read(context) as conn:
                return function(Sql(conn), request)

        endpoint.__name__ = function.__name__
        return protected(endpoint)

    def write(function: Any) -> Any:
        """Run ``function(sql, request)`` in one transaction (committed when it returns)."""

        def endpoint(request: Request) -> Any:
            with context.engine.begin() as conn:
                return function(Sql(conn), request)

        endpoint.__name__ = function.__name__
        return protected(endpoint)

    # -- undertakings

    def verified_list(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        rows = load_undertakings(sql, "u.domain = :d AND u.oldcompany_verified", {"d": domain})
        rel = Relations(sql, rows)
        return [list_item(u, rel) for u in rows]

    def small_list(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        rows = load_undertakings(sql, "u.domain = :d AND u.oldcompany_verified", {"d": domain})
        rel = Relations(sql, rows)
        return [small_item(u, rel) for u in rows]

    def all_list(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        rows = load_undertakings(sql, "u.domain = :d", {"d": domain})
        rel = Relations(sql, rows)
        return [list_item(u, rel) for u in rows]

    def list_by_vat(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        rows = load_undertakings(
            sql,
            "u.domain = :d AND u.oldcompany_verified AND u.vat = :vat",
            {"d": domain, "vat": request.path_params["vat"]},
        )
        return [by_vat_item(u) for u in rows]

    def filter_count(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        args = _first_values(request)
        unknown = sorted({k for k, _ in args if k not in FILTERS})
        if unknown:
            raise ApiError(400, {"error": "Unknown filter parameter", "allowed": list(FILTERS)})
        values = dict(args)
        clauses = ["u.domain = :domain", "u.oldcompany_verified"]
        params: dict[str, Any] = {"domain": domain}
        for key, value in args:
            if key in EXACT_FILTER_CLAUSES:
                if key == "id":
                    try:
                        params[key] = int(value)
                    except ValueError:  # no external id is text: nothing can match
                        return {"exists": False, "count": 0}
                else:
                    params[key] = value
                clauses.append(EXACT_FILTER_CLAUSES[key])
        # Any OR_* parameter restricts the count to undertakings with a representative (legacy).
        join = (
            " JOIN registry.represent r ON r.id = u.represent_id"
            if any(k.startswith("OR_") for k, _ in args)
            else ""
        )
        where = " AND ".join(clauses)
        if "name" in values:
            # Both names lower-cased; OR_name is then not applied (legacy precedence).
            wanted = values["name"].lower()
            names = [
                r[0].lower()
                for r in sql.all(f"SELECT u.name FROM registry.undertaking u{join} WHERE {where}", params)
                if r[0]
            ]
        elif "OR_name" in values:
            # The representative's name as stored, not lower-cased (legacy).
            wanted = values["OR_name"]
            names = [
                r[0]
                for r in sql.all(f"SELECT r.name FROM registry.undertaking u{join} WHERE {where}", params)
                if r[0]
            ]
        else:
            count = int(
                sql.scalar(f"SELECT count(*) FROM registry.undertaking u{join} WHERE {where}", params)
            )
            return {"exists": count > 0, "count": count}
        count = (
            sum(1 for name in names if score_passes(fuzz.ratio(name, wanted, processor=None), limit))
            if wanted
            else 0
        )
        return {"exists": count > 0, "count": count}

    def details(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        u = _one_undertaking(sql, domain, request.path_params["pk"])
        return detail_item(sql, u, Relations(sql, [u]))

    def details_short(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        u = _one_undertaking(sql, domain, request.path_params["pk"])
        rel = Relations(sql, [u])
        address = rel.addresses.get(u.address_id) if u.address_id is not None else None
        return {
            "company_id": u.external_id,
            "company_name": u.name,
            "address": None if address is None else f"{address.street or ''}, {address.number or ''}",
            "postal_code": None if address is None else address.zipcode,
            "city": None if address is None else address.city,
            "country": None if address is None else address.country_name,
            "eori_code": u.vat,
            "contact_persons": [
                {"first_name": p["first_name"], "last_name": p["last_name"], "email": p["email"]}
                for p in rel.users_of(u.id)
            ],
        }

    def status_update(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        status = form(request).get("status", "")
        if not status:
            return False
        changed = sql.exec(
            # source_hash is cleared so that the next sync that fetches the company writes the
            # registry's status again, as the legacy's next sync did (it had no unchanged-skip).
            "UPDATE registry.undertaking SET status = :s, date_updated_in_ecr = current_date, source_hash = NULL "
            "WHERE domain = :d AND external_id = :e",
            {"s": status, "d": domain, "e": request.path_params["pk"]},
        )
        if not changed:
            raise not_found()
        return True

    # -- users

    def user_list(sql: Sql, request: Request) -> Any:
        text, params = _paged(
            'SELECT ecas_id, username, first_name, last_name, email, type FROM registry."user" ORDER BY id',
            request,
        )
        return [dict(r._mapping) for r in sql.all(text, params)]

    def companies_of(sql: Sql, user_id: int) -> list[dict[str, Any]]:
        rows = load_undertakings(
            sql,
            "u.oldcompany_verified AND u.id IN "
            "(SELECT undertaking_id FROM registry.undertaking_users WHERE user_id = :user)",
            {"user": user_id},
        )
        rel = Relations(sql, rows)
        return [user_company_item(u, rel) for u in rows]

    def user_companies(sql: Sql, request: Request) -> Any:
        user_id = sql.scalar(
            'SELECT id FROM registry."user" WHERE username = :u', {"u": request.path_params["username"]}
        )
        if user_id is None:
            log.warning("Unknown user: %s", request.path_params["username"])
            raise not_found()
        return companies_of(sql, user_id)

    def user_by_query(sql: Sql, request: Request) -> int:
        """The user named by ``username`` or ``ecas_id``: each value is tried as a username and
        as an ECAS id (BDR logins send either), ``username`` first."""
        tried = [request.query_params.get(key) for key in ("username", "ecas_id")]
        for value in tried:
            if not value:
                continue
            user_id = sql.scalar(
                'SELECT id FROM registry."user" WHERE username = :v OR ecas_id = :v '
                "ORDER BY (username = :v) DESC, id LIMIT 1",
                {"v": value},
            )
            if user_id is not None:
                return int(user_id)
        log.warning("Unknown user: %s", " / ".join(v for v in tried if v))
        raise not_found()

    def user_companies_query(sql: Sql, request: Request) -> Any:
        return companies_of(sql, user_by_query(sql, request))

    def user_companies_v2(sql: Sql, request: Request) -> Any:
        # Auditors are not synced: the auditor part stays empty until they are.
        return {"reporter": companies_of(sql, user_by_query(sql, request)), "auditor": []}

    # -- old companies

    def old_companies(valid: bool) -> Any:
        def listing(sql: Sql, request: Request) -> Any:
            rows = sql.all(
                f"SELECT {OLD_COMPANY_COLUMNS} FROM registry.old_company o WHERE o.valid = :v ORDER BY o.id",
                {"v": valid},
            )
            return [old_company_item(r) for r in rows]

        listing.__name__ = f"old_companies_{'valid' if valid else 'invalid'}"
        return listing

    def set_old_company(valid: bool) -> Any:
        def setter(sql: Sql, request: Request) -> Any:
            # One BDR company listed under both obligations is two rows: both are the company.
            changed = sql.exec(
                "UPDATE registry.old_company SET valid = :v WHERE external_id = :e",
                {"v": valid, "e": request.path_params["pk"]},
            )
            if not changed:
                raise not_found()
            return True

        setter.__name__ = f"set_old_company_{'valid' if valid else 'invalid'}"
        return setter

    # -- mail list

    def mail_list(sql: Sql, request: Request) -> Any:
        text, params = _paged(
            "SELECT mail, timestamp, first_name, last_name FROM registry.mail_address ORDER BY id", request
        )
        return [
            {
                "mail": r.mail,
                "timestamp": format_datetime(r.timestamp),
                "first_name": r.first_name,
                "last_name": r.last_name,
            }
            for r in sql.all(text, params)
        ]

    def required(request: Request, *names: str) -> list[str]:
        values = form(request)
        missing = [n for n in names if n not in values]
        if missing:
            raise ApiError(400, {"error": f"missing form field(s): {', '.join(missing)}"})
        return [values[n] for n in names]

    def mail_add(sql: Sql, request: Request) -> Any:
        mail, first_name, last_name = required(request, "mail", "first_name", "last_name")
        added = sql.exec(
            "INSERT INTO registry.mail_address (mail, first_name, last_name) VALUES (:m, :f, :l) "
            "ON CONFLICT (mail) DO NOTHING",
            {"m": mail, "f": first_name, "l": last_name},
        )
        if not added:
            return {"success": False, "message": "This email address already exists"}
        return {"success": True}

    def mail_delete(sql: Sql, request: Request) -> Any:
        (mail,) = required(request, "mail")
        if not sql.exec("DELETE FROM registry.mail_address WHERE mail = :m", {"m": mail}):
            return {"success": False, "message": "This email address does not exists"}
        return {"success": True}

    # -- logs

    def sync_log(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        rows = sql.all(
            "SELECT domain, execution_time, using_last_update, organizations, fetched, inserted, updated, "
            "rejected, failed_checks, run_id FROM registry.organization_log WHERE domain = :d "
            "ORDER BY execution_time DESC, id DESC LIMIT 100",
            {"d": domain},
        )
        return [
            {
                "domain": r.domain,
                "execution_time": format_datetime(r.execution_time),
                "using_last_update": format_date(r.using_last_update),
                "organizations": r.organizations,
                # Additions: what the run did (the legacy logged the count only).
                "fetched": r.fetched,
                "inserted": r.inserted,
                "updated": r.updated,
                "rejected": r.rejected,
                "failed_checks": r.failed_checks,
                "run_id": r.run_id,
            }
            for r in rows
        ]

    def matching_log(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        # The undertaking is looked up in the log row's own domain (the legacy took the first
        # undertaking with that external id in any domain).
        rows = sql.all(
            'SELECT m.timestamp, m."user", m.domain, m.company_id, m.oldcompany_id, m.oldcompany_account, '
            "m.verified, u.id AS undertaking_id, u.domain AS undertaking_domain, u.country_code "
            "FROM registry.matching_log m LEFT JOIN registry.undertaking u "
            "ON u.external_id = m.company_id AND u.domain = m.domain "
            "WHERE m.domain = :d ORDER BY m.timestamp DESC, m.id DESC",
            {"d": domain},
        )
        answer = []
        for r in rows:
            item = {
                "timestamp": format_datetime(r.timestamp),
                "user": r.user,
                "domain": r.domain,
                "company_id": r.company_id,
                "oldcompany_id": r.oldcompany_id,
                "oldcompany_account": r.oldcompany_account,
                "verified": r.verified,
            }
            if r.undertaking_id is not None:
                item["domain"] = r.undertaking_domain
                item["country_code"] = r.country_code
            answer.append(item)
        return answer

    def check_sync(sql: Sql, request: Request) -> Any:
        domain = CHECK_SYNC_DOMAINS.get(request.path_params["domain"])
        if domain is None:
            raise not_found({"error": "Invalid domain"})
        # The age is compared in full (the legacy compared timedelta.seconds, so a sync days old
        # passed when its time of day was within the hour); no sync at all is a failure too.
        fresh = sql.scalar(
            "SELECT now() - execution_time < interval '1 hour' FROM registry.organization_log "
            "WHERE domain = :d ORDER BY execution_time DESC, id DESC LIMIT 1",
            {"d": domain},
        )
        if fresh:
            return PlainTextResponse("success", status_code=200)
        return PlainTextResponse("failed", status_code=500)

    # -- licences (ODS)

    def substance_item(row: Any, company_id: int) -> dict[str, Any]:
        quantity = row.quantity
        if row.lic_use_desc != LABORATORY_USES and quantity is not None:
            quantity = int(quantity)
        return {
            "year": row.year,
            "substance": row.substance,
            "s_orig_country_name": row.s_orig_country_name,
            "quantity": quantity,
            "organization_country_name": row.organization_country_name,
            "company_id": company_id,
            "use_kind": row.lic_use_kind,
            "use_desc": row.lic_use_desc,
            "type": row.lic_type,
        }

    substance_columns = (
        "s.id, s.year, s.substance, s.lic_use_kind, s.lic_use_desc, s.lic_type, s.s_orig_country_name, "
        "s.quantity, s.organization_country_name, s.date_created, s.date_updated, s.delivery_id, s.patched"
    )

    def filter_lists(request: Request) -> tuple[list[Any] | None, list[Any] | None]:
        body = json_body(request)
        if body is None:
            return None, None
        if not isinstance(body, dict):
            raise ApiError(400, {"error": "The body is a JSON object."})
        substances, actions = body.get("substances"), body.get("actions")
        for value in (substances, actions):
            if value and not isinstance(value, list):
                raise ApiError(400, {"error": "substances and actions are lists."})
        return substances or None, actions or None

    def aggregated_year(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        u = _one_undertaking(sql, domain, request.path_params["pk"])
        substances, actions = filter_lists(request)
        rows = sql.all(
            f"SELECT {substance_columns} FROM registry.substance s "
            "JOIN registry.delivery_licence d ON d.id = s.delivery_id "
            "WHERE d.undertaking_id = :u AND d.year = :y ORDER BY s.patched, s.id",
            {"u": u.id, "y": request.path_params["year"]},
        )
        # The body's filters apply to the aggregates; PATCH_LICENCES entries are appended
        # after them unfiltered, as the legacy appended its patch list.
        kept = [
            r
            for r in rows
            if r.patched
            or (
                (substances is None or r.substance in substances)
                and (actions is None or r.lic_type in actions)
            )
        ]
        return {"licences": [substance_item(r, u.external_id) for r in kept]}

    def aggregated_all(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        u = _one_undertaking(sql, domain, request.path_params["pk"])
        filter_lists(request)  # a body that is not JSON is refused here too; it filters nothing
        rows = sql.all(
            f"SELECT {substance_columns} FROM registry.substance s "
            "JOIN registry.delivery_licence d ON d.id = s.delivery_id "
            "WHERE d.undertaking_id = :u ORDER BY s.patched, d.year, s.id",
            {"u": u.id},
        )
        return {"licences": [substance_item(r, u.external_id) for r in rows]}

    def delivery_of(sql: Sql, request: Request) -> int:
        domain = domain_of(request.path_params["domain"])
        u = _one_undertaking(sql, domain, request.path_params["pk"])
        delivery = sql.scalar(
            "SELECT id FROM registry.delivery_licence WHERE undertaking_id = :u AND year = :y",
            {"u": u.id, "y": request.path_params["year"]},
        )
        if delivery is None:
            raise not_found()
        return int(delivery)

    def year_licences(sql: Sql, request: Request) -> Any:
        delivery = delivery_of(sql, request)
        rows = sql.all(
            "SELECT l.year, l.licence_id, l.chemical_name, l.organization_country_name, "
            "l.organization_country_name_orig, l.custom_procedure_name, l.international_party_country_name, "
            "l.international_party_country_name_orig, l.total_odp_mass, l.net_mass, l.licence_state, "
            "l.long_licence_number, l.template_detailed_use_code, l.licence_type, l.mixture_nature_type, "
            "l.date_created, l.date_updated, l.updated_since, l.substance_id "
            "FROM registry.licence l JOIN registry.substance s ON s.id = l.substance_id "
            "WHERE s.delivery_id = :d ORDER BY s.id, l.id",
            {"d": delivery},
        )
        return [
            {k: format_date(v) if k in ("date_created", "date_updated") else v for k, v in r._mapping.items()}
            for r in rows
        ]

    def year_substances(sql: Sql, request: Request) -> Any:
        delivery = delivery_of(sql, request)
        # The aggregates only: the legacy's substances never held the PATCH_LICENCES entries.
        rows = sql.all(
            f"SELECT {substance_columns} FROM registry.substance s WHERE s.delivery_id = :d AND NOT s.patched "
            "ORDER BY s.id",
            {"d": delivery},
        )
        return [
            {
                "year": r.year,
                "substance": r.substance,
                "lic_use_kind": r.lic_use_kind,
                "lic_use_desc": r.lic_use_desc,
                "lic_type": r.lic_type,
                "s_orig_country_name": r.s_orig_country_name,
                "quantity": r.quantity,
                "organization_country_name": r.organization_country_name,
                "date_created": format_date(r.date_created),
                "date_updated": format_date(r.date_updated),
                "delivery_id": r.delivery_id,
            }
            for r in rows
        ]

    # -- exports

    def export_undertakings(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        rows = load_undertakings(sql, "u.domain = :d AND u.oldcompany_verified", {"d": domain})
        rel = Relations(sql, rows)
        columns = export_columns(domain)
        return _xlsx(
            "Companies List",
            [header for _, header in columns],
            (export_row(list_item(u, rel), [key for key, _ in columns]) for u in rows),
            "companies_list.xlsx",
        )

    def user_rows(sql: Sql, domain: str) -> list[Any]:
        return sql.all(
            "SELECT us.username, u.name AS companyname, c.name AS country, us.ecas_id, us.first_name, "
            'us.last_name, us.email FROM registry."user" us '
            "JOIN registry.undertaking_users uu ON uu.user_id = us.id "
            "JOIN registry.undertaking u ON u.id = uu.undertaking_id "
            "LEFT JOIN registry.address a ON a.id = u.address_id "
            "LEFT JOIN registry.country c ON c.id = a.country_id "
            "WHERE u.domain = :d AND u.oldcompany_verified ORDER BY us.id, u.id",
            {"d": domain},
        )

    def export_users(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        return _xlsx(
            "Users List",
            USER_EXPORT_COLUMNS,
            (
                (r.username, r.companyname, r.country, r.first_name, r.last_name, r.email)
                for r in user_rows(sql, domain)
            ),
            "users_list.xlsx",
        )

    def export_users_json(sql: Sql, request: Request) -> Any:
        domain = domain_of(request.path_params["domain"])
        return [
            {
                "username": r.username,
                "companyname": r.companyname,
                "country": r.country,
                "ecas_id": r.ecas_id,
                "contact_firstname": r.first_name,
                "contact_lastname": r.last_name,
                "contact_email": r.email,
            }
            for r in user_rows(sql, domain)
        ]

    u = "/undertaking/{domain}"
    d = "/undertaking/{domain}/{pk:int}"
    table = [
        (f"{u}/list", read(verified_list), "GET"),
        (f"{u}/list-small", read(small_list), "GET"),
        (f"{u}/list/all", read(all_list), "GET"),
        (f"{u}/list_by_vat/{{vat}}", read(list_by_vat), "GET"),
        (f"{u}/filter", read(filter_count), "GET"),
        (f"{d}/details", read(details), "GET"),
        (f"{d}/details-short/", read(details_short), "GET"),
        (f"{d}/statusupdate", write(status_update), "POST"),
        (f"{d}/licences/{{year:int}}/aggregated", read(aggregated_year), "POST"),
        (f"{d}/licences/aggregated", read(aggregated_all), "POST"),
        (f"{d}/{{year:int}}/licences", read(year_licences), "GET"),
        (f"{d}/{{year:int}}/substances", read(year_substances), "GET"),
        ("/user/list", read(user_list), "GET"),
        ("/user/companies", read(user_companies_query), "GET"),
        ("/user/companies/v2/", read(user_companies_v2), "GET"),
        ("/user/{username}/companies", read(user_companies), "GET"),
        ("/oldcompanies/list/valid/", read(old_companies(True)), "GET"),
        ("/oldcompanies/list/invalid/", read(old_companies(False)), "GET"),
        ("/oldcompanies/{pk:int}/valid/", write(set_old_company(True)), "POST"),
        ("/oldcompanies/{pk:int}/invalid/", write(set_old_company(False)), "POST"),
        ("/mail/list", read(mail_list), "GET"),
        ("/mail/add", write(mail_add), "POST"),
        ("/mail/delete", write(mail_delete), "POST"),
        ("/log/sync/{domain}", read(sync_log), "GET"),
        ("/log/matching/{domain}", read(matching_log), "GET"),
        ("/log/check_sync/{domain}", read(check_sync), "GET"),
        ("/export/undertaking/{domain}", read(export_undertakings), "GET"),
        ("/export/user/list/{domain}", read(export_users), "GET"),
        ("/export/user/json/{domain}", read(export_users_json), "GET"),
    ]
    # Each path also answers with the other trailing-slash form: BDR's clients are not consistent
    # about it, and a redirect would send them to the application's own host, not the proxy's.
    return [
        Route(variant, endpoint, methods=[method])
        for path, endpoint, method in table
        for variant in (path, path[:-1] if path.endswith("/") else f"{path}/")
    ]


# --------------------------------------------------------------------------------------------------
# the exports' fixed columns

# (key in the list item, header): the legacy's 40 columns. ``address_*`` and ``representative_*``
# keys walk into the nested objects.
UNDERTAKING_EXPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("company_id", "company_id"),
    ("registration_id", "registration_id"),
    ("name", "name"),
    ("domain", "domain"),
    ("status", "status"),
    ("undertaking_type", "undertaking_type"),
    ("website", "website"),
    ("date_updated", "date_updated"),
    ("phone", "phone"),
    ("oldcompany_extid", "oldcompany_extid"),
    ("address_city", "address_city"),
    ("address_country_code", "address_country_code"),
    ("address_country_name", "address_country_name"),
    ("address_country_type", "address_country_type"),
    ("address_zipcode", "address_zipcode"),
    ("address_number", "address_number"),
    ("address_street", "address_street"),
    ("country_code", "country_code"),
    ("vat", "vat_number"),
    ("eori_number", "eori_number"),
    ("users", "users"),
    ("types", "types"),
    ("collection_id", "collection_id"),
    ("date_created", "date_created"),
    ("oldcompany_account", "oldcompany_account"),
    ("oldcompany_verified", "oldcompany_verified"),
    ("representative_name", "representative_name"),
    ("representative_contact_first_name", "representative_contact_first_name"),
    ("representative_contact_last_name", "representative_contact_last_name"),
    ("check_passed", "check_passed"),
    ("representative_vatnumber", "representative_vatnumber"),
    ("representative_contact_email", "representative_contact_email"),
    ("representative_address_zipcode", "representative_address_zipcode"),
    ("representative_address_number", "representative_address_number"),
    ("representative_address_street", "representative_address_street"),
    ("representative_address_city", "representative_address_city"),
    ("representative_address_country_code", "representative_address_country_code"),
    ("representative_address_country_type", "representative_address_country_type"),
    ("representative_address_country_name", "representative_address_country_name"),
    ("represent_history", "represent_history"),
)
USER_EXPORT_COLUMNS = (
    "username",
    "companyname",
    "country",
    "contact_firstname",
    "contact_lastname",
    "contact_email",
)


def export_columns(domain: str) -> list[tuple[str, str]]:
    """The export's columns for a domain. An ODS company's ``vat`` holds its EORI number, so the
    ODS sheet heads that column ``eori_number`` and has no separate one (legacy). The legacy made
    the switch by editing its shared column table, which broke every export after the first ODS
    one; here each call gets its own list."""
    if domain != "ODS":
        return list(UNDERTAKING_EXPORT_COLUMNS)
    return [
        (key, "eori_number" if key == "vat" else header)
        for key, header in UNDERTAKING_EXPORT_COLUMNS
        if key != "eori_number"
    ]


def _walk(item: Mapping[str, Any] | None, path: str) -> Any:
    """``address_country_code`` → ``item["address"]["country"]["code"]``; None when a level is
    missing (the legacy crashed on a company without address)."""
    value: Any = item
    for part in path.split("_"):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def export_cell(item: Mapping[str, Any], key: str) -> Any:
    if key.startswith("address_"):
        return _walk(item, key)
    if key.startswith("representative_"):
        rest = key.split("_", 1)[1]
        rep = item.get("representative")
        if not rep:
            return None
        return _walk(rep, rest) if rest.startswith("address_") else rep.get(rest)
    if key == "users":
        return ", ".join(user["username"] for user in item["users"])
    if key == "represent_history":
        return ", ".join(rep["name"] or "" for rep in item["represent_history"])
    return item.get(key)


def export_row(item: Mapping[str, Any], keys: Sequence[str]) -> list[Any]:
    return [export_cell(item, key) for key in keys]
