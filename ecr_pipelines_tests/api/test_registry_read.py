"""The registry API's read side (part A) under a real uvicorn, on data the registry pipelines load.

The data: the registry stand-in's recordings (F-gas and ODS undertakings, BDR old companies, ODS
licences of 2025) fetched and stored by the stages' own functions (``sync_domain``,
``sync_all_old_companies``, ``run_matching``, ``sync_licences`` with a ``PATCH_LICENCES`` entry),
then verified through ``registry.operator`` as the helpdesk would. One migrated database of its
own for the module; the tests that write change rows the others do not read.
"""

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import requests
import sqlalchemy as sa

from ecr_pipelines.api.context import ApiSettings
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry import operator
from ecr_pipelines.registry.clients import BdrEndpointClient, BdrRegistryClient, RegistryClient
from ecr_pipelines.registry.links import run_matching
from ecr_pipelines.registry.store import (
    SyncRequest,
    UndertakingSync,
    fetch_licences,
    seed_reference_tables,
    sync_all_old_companies,
    sync_domain,
    sync_licences,
)
from ecr_pipelines_tests.api.conftest import ServeApi
from ecr_pipelines_tests.conftest import own_migrated_engine

RECORDINGS = (
    Path(__file__).resolve().parents[2] / "ecr_pipelines" / "dev" / "standins" / "recordings" / "registry"
)
TOKEN = "bdr-t0ken"
PATCH = {
    "company_id": 26101,
    "year": 2025,
    "substance": "Patched substance",
    "use_kind": "free circulation",
    "use_desc": "feedstock",
    "type": "import",
    "quantity": 7.9,
    "organization_country_name": "RO",
    "s_orig_country_name": "US",
}


def _with_representative(record: dict[str, Any], vat: str, country: str, name: str) -> dict[str, Any]:
    changed = json.loads(json.dumps(record))
    rep = changed["euLegalRepresentativeCompany"]
    rep["vatNumber"] = vat
    rep["name"] = name
    rep["address"]["country"] = {"code": country, "name": f"Country {country}", "type": "EU_TYPE"}
    return changed


@pytest.fixture(scope="module")
def database(pg_server_url: str) -> Iterator[str]:
    """A database filled by the registry stages from the stand-in recordings."""
    with own_migrated_engine(pg_server_url, "regapi") as engine, StandInServer() as standin:
        standin.load_routes(RECORDINGS, mount="/registry")
        base = standin.url("/registry")
        session = requests.Session()
        bdr = BdrEndpointClient(session, None, None, None)  # no BDR portal: its calls are skipped
        with engine.begin() as conn:
            sql = Sql(conn)
            seed_reference_tables(sql)
            for domain, path in (("FGAS", "/fgas"), ("ODS", "/ods")):
                client = RegistryClient(session, base + path, "user", "password", domain)
                sync_domain(sql, client, SyncRequest(), run_id=f"api-{domain}")
            sync_all_old_companies(
                sql, BdrRegistryClient(session, base + "/bdr-registry", ""), ["FGAS", "ODS"]
            )
        with engine.begin() as conn:
            # The representative of 10102 changes twice (new VAT numbers): BE, then NL again.
            first = json.loads((RECORDINGS / "fgas_undertakings_all.json").read_text(encoding="utf-8"))
            record = next(r for r in first if r["id"] == 10102)
            for vat, country, name in (
                ("BE0411905847", "BE", "Schelde Rep NV"),
                ("NL001122334B01", "NL", "Grachten Rep BV"),
            ):
                record = _with_representative(record, vat, country, name)
                UndertakingSync(Sql(conn), "FGAS").run([record])
        with engine.begin() as conn:
            sql = Sql(conn)
            run_matching(
                sql,
                bdr,
                manual_domains=["FGAS", "ODS"],
                auto_all_domains=[],
                auto_new_domains=[],
                fuzz_limit=75,
            )
            operator.verify(sql, bdr, 10101, 4101, "helpdesk", "FGAS")
            operator.verify(sql, bdr, 10102, 4103, "helpdesk", "FGAS")
            for external_id in (10107, 10108, 10111):
                operator.verify_none(sql, bdr, external_id, "FGAS", "helpdesk")
            operator.verify(sql, bdr, 26101, 5101, "helpdesk", "ODS")
            operator.verify(sql, bdr, 26102, 5102, "helpdesk", "ODS")
            operator.manual(sql, bdr, 26104, "ODS", "ods10456", "helpdesk")
            ods = RegistryClient(session, base + "/ods", "user", "password", "ODS")
            sync_licences(sql, fetch_licences(ods, 2025, None), 2025, patches=[PATCH])
        yield engine.url.render_as_string(hide_password=False)


@pytest.fixture
def api(serve_api: ServeApi, database: str) -> "Client":
    return Client(serve_api(ApiSettings(database_url=database, api_token=TOKEN)))


class Client:
    """``requests`` with the token and the base URL."""

    def __init__(self, base: str, token: str | None = TOKEN) -> None:
        self.base = base
        self.headers = {"Authorization": token} if token is not None else {}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base + path, headers=self.headers, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.base + path, headers=self.headers, timeout=10, **kwargs)


DATE = r"^\d{2}/\d{2}/\d{4}$"
LIST_KEYS = [
    "registration_id",
    "name",
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
    "oldcompany_verified",
    "oldcompany_account",
    "oldcompany_extid",
    "check_passed",
    "company_id",
    "address",
    "users",
    "types",
    "country_history",
    "representative",
    "represent_history",
    "businessprofile",
    "businessprofiles",
    "collection_id",
]
VERIFIED_FGAS = [10101, 10102, 10103, 10104, 10107, 10108, 10111]
# One path per route (both methods), for the auth checks.
EVERY_ROUTE = [
    ("GET", "/undertaking/FGAS/list"),
    ("GET", "/undertaking/FGAS/list-small"),
    ("GET", "/undertaking/FGAS/list/all"),
    ("GET", "/undertaking/FGAS/list_by_vat/DE287451036"),
    ("GET", "/undertaking/FGAS/filter?id=10101"),
    ("GET", "/undertaking/FGAS/10101/details"),
    ("GET", "/undertaking/FGAS/10101/details-short/"),
    ("POST", "/undertaking/FGAS/10101/statusupdate"),
    ("POST", "/undertaking/ODS/26101/licences/2025/aggregated"),
    ("POST", "/undertaking/ODS/26101/licences/aggregated"),
    ("GET", "/undertaking/ODS/26101/2025/licences"),
    ("GET", "/undertaking/ODS/26101/2025/substances"),
    ("GET", "/user/list"),
    ("GET", "/user/n00nk101/companies"),
    ("GET", "/user/companies?username=n00nk101"),
    ("GET", "/user/companies/v2/?username=n00nk101"),
    ("GET", "/oldcompanies/list/valid/"),
    ("GET", "/oldcompanies/list/invalid/"),
    ("POST", "/oldcompanies/4101/valid/"),
    ("POST", "/oldcompanies/4101/invalid/"),
    ("GET", "/mail/list"),
    ("POST", "/mail/add"),
    ("POST", "/mail/delete"),
    ("GET", "/log/sync/FGAS"),
    ("GET", "/log/matching/FGAS"),
    ("GET", "/log/check_sync/FGAS"),
    ("GET", "/export/undertaking/FGAS"),
    ("GET", "/export/user/list/FGAS"),
    ("GET", "/export/user/json/FGAS"),
]
UNAUTHORIZED = {
    "status": "Unauthorized",
    "message": "You need to be authenticated in order to access this resource.",
}


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["company_id"] for item in items]


def by_id(items: list[dict[str, Any]], company_id: int) -> dict[str, Any]:
    return next(item for item in items if item["company_id"] == company_id)


def call(base: str, method: str, path: str, headers: dict[str, str]) -> requests.Response:
    data = {"status": "DISABLED", "mail": "x@example.test", "first_name": "X", "last_name": "Y"}
    return requests.request(
        method, base + path, headers=headers, data=data if method == "POST" else None, timeout=10
    )


# --------------------------------------------------------------------------------------------------
# auth


def test_every_route_refuses_a_missing_or_wrong_token_with_the_legacy_body(
    api: Client, database: str
) -> None:
    for method, path in EVERY_ROUTE:
        for headers in (
            {},
            {"Authorization": "wrong"},
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": ""},
        ):
            answer = call(api.base, method, path, headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.json() == UNAUTHORIZED
    # Nothing was changed by the refused writes.
    assert api.get("/undertaking/FGAS/10101/details").json()["status"] == "VALID"
    assert api.get("/mail/list").json() == []
    # The token opens them, exports and logs included (the legacy left those open).
    for path in (
        "/export/undertaking/FGAS",
        "/export/user/json/FGAS",
        "/log/sync/FGAS",
        "/log/check_sync/FGAS",
    ):
        assert api.get(path).status_code == 200, path


def test_an_empty_api_token_refuses_every_request(serve_api: ServeApi, database: str) -> None:
    base = serve_api(ApiSettings(database_url=database, api_token=""))
    for method, path in EVERY_ROUTE:
        for headers in ({}, {"Authorization": ""}):
            answer = call(base, method, path, headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.json() == UNAUTHORIZED
    assert requests.get(f"{base}/healthcheck", timeout=5).json() == {"status": "OK"}


# --------------------------------------------------------------------------------------------------
# undertakings


def test_the_lists_show_verified_undertakings_with_the_legacy_fields(api: Client) -> None:
    listed = api.get("/undertaking/FGAS/list")
    assert listed.headers["content-type"] == "application/json"
    items = listed.json()
    assert ids(items) == VERIFIED_FGAS
    assert all(list(item) == LIST_KEYS for item in items)
    first = by_id(items, 10101)
    assert first["date_created"] == "14/03/2015" and first["date_updated"] == "12/01/2026"
    assert re.match(DATE, first["date_created_in_ecr"])
    assert (first["collection_id"], first["oldcompany_account"], first["oldcompany_extid"]) == (
        "fgas30101",
        "fgas30101",
        4101,
    )
    assert first["address"] == {
        "street": "Kühlhausstraße",
        "number": "14",
        "zipcode": "20457",
        "city": "Hamburg",
        "country": {"code": "DE", "name": "Germany", "type": "EU_TYPE"},
    }
    assert first["users"] == [
        {
            "ecas_id": "n00nk101",
            "username": "n00nk101",
            "first_name": "Jonas",
            "last_name": "Brenner",
            "email": "jonas.brenner@nordlicht-kaelte.example.test",
            "type": "ORGANISATION_USER",
        }
    ]
    assert first["types"] == "FGAS_PRODUCER_IMPORTER_HFCS,FGAS_IMPORTER_OF_EQUIPMENT_HFCS"
    assert first["businessprofile"].split(",") == [p["code"] for p in first["businessprofiles"]]
    polar = by_id(items, 10102)
    assert polar["representative"]["vatnumber"] == "NL001122334B01"
    assert polar["representative"]["address"]["country"]["code"] == "NL"
    # The list shows the whole history (the details answer filters it).
    assert [r["name"] for r in polar["represent_history"]] == [
        "Kanaalzicht Compliance B.V.",
        "Schelde Rep NV",
    ]
    assert (polar["country_code"], polar["country_code_orig"]) == ("NL", "CN")

    assert ids(api.get("/undertaking/FGAS/list/all").json()) == list(range(10101, 10113))
    assert ids(api.get("/undertaking/ODS/list").json()) == [26101, 26102, 26104]
    small = api.get("/undertaking/FGAS/list-small").json()
    assert ids(small) == VERIFIED_FGAS
    assert list(small[0]) == [
        "company_id",
        "registration_id",
        "name",
        "domain",
        "vat",
        "eori_number",
        "date_created",
        "address",
        "users",
    ]
    assert small[0]["users"] == first["users"] and small[0]["address"] == first["address"]


def test_list_by_vat_gives_the_trimmed_fields_of_verified_undertakings(api: Client) -> None:
    (found,) = api.get("/undertaking/FGAS/list_by_vat/DE287451036").json()
    assert found == {
        "registration_id": "FG-4N7K2",
        "name": "Nordlicht Kältetechnik GmbH",
        "date_created_in_ecr": found["date_created_in_ecr"],
        "date_updated_in_ecr": None,
        "country_code_orig": "DE",
        "eori_number": "DE4471236",
        "check_passed": True,
        "company_id": 10101,
    }
    assert list(found) == list(found.keys()) and list(found)[-1] == "company_id"
    assert api.get("/undertaking/FGAS/list_by_vat/EL094455123").json() == []  # 10109: not verified
    assert ids(api.get("/undertaking/ODS/list_by_vat/RO31874520").json()) == [26101]  # ODS: the EORI


def test_an_unknown_domain_or_company_is_a_404(api: Client) -> None:
    for path in (
        "/undertaking/XYZ/list",
        "/undertaking/fgas/list",
        "/undertaking/FGAS/99999/details",
        "/undertaking/ODS/10101/details",  # an F-gas id in the ODS domain
        "/undertaking/FGAS/99999/details-short/",
        "/log/sync/XYZ",
        "/export/undertaking/XYZ",
    ):
        assert api.get(path).status_code == 404, path


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("id=10101", 1),
        ("id=10109", 0),  # not verified
        ("id=abc", 0),
        ("vat=DE287451036", 1),
        ("countrycode=CN", 2),  # the address country: 10102 and 10103
        ("countrycode=CN&vat=CN-91330200-7Q2K", 1),
        ("name=nordlicht kaltetechnik gmbh", 1),  # fuzzy: 96 >= 75, case ignored
        ("name=NORDLICHT KÄLTETECHNIK", 1),  # 85
        ("name=Hellenic Refrigerants S.A.", 0),  # exact name, not verified
        ("name=Completely Different Trading", 0),
        ("name=Kryon GmbH&countrycode=PL", 0),
        ("OR_vat=NL001122334B01", 1),
        ("OR_vat=NL859201446B01", 0),  # the former representative's
        ("OR_name=Grachten Rep BV", 1),
        ("OR_name=grachten rep bv", 0),  # OR_name is not lower-cased: 73 < 75
        ("countrycode=DE&OR_vat=", 0),  # any OR_* keeps only companies with a representative
        ("name=Polar Cooling Ltd&OR_name=nobody", 1),  # name wins over OR_name
    ],
)
def test_filter_counts_verified_undertakings_by_the_legacy_rules(api: Client, query: str, count: int) -> None:
    assert api.get(f"/undertaking/FGAS/filter?{query}").json() == {"exists": count > 0, "count": count}


def test_filter_refuses_an_unknown_parameter(api: Client) -> None:
    answer = api.get("/undertaking/FGAS/filter?id=10101&colour=blue")
    assert answer.status_code == 400
    assert answer.json()["error"] == "Unknown filter parameter"


def test_details_add_candidates_and_filter_the_histories(api: Client) -> None:
    details = api.get("/undertaking/FGAS/10101/details").json()
    assert list(details)[:20] == [*LIST_KEYS[:18], "oldcompany_id", "check_passed"]
    assert [c["company_id"] for c in details["candidates"]] == [4101, 4102]
    assert details["candidates"][0] == {
        "name": "NORDLICHT KÄLTETECHNIK GMBH",
        "country_code": "de",
        "account": "fgas30101",
        "vat_number": "DE287451036",
        "eori": "",
        "active": True,
        "website": "",
        "date_registered": "16/03/2015 10:10",
        "valid": True,
        "obligation": "FGAS",
        "company_id": 4101,
        "country": "Germany",
    }
    assert details["auditors"] == [] and details["collection_id"] == "fgas30101"
    assert "id" not in details and "external_id" not in details
    # 10102: the NL representative of the past is in the current country (NL): left out.
    polar = api.get("/undertaking/FGAS/10102/details").json()
    assert [r["name"] for r in polar["represent_history"]] == ["Schelde Rep NV"]
    # An unverified undertaking has details too, with its proposed links.
    assert [c["company_id"] for c in api.get("/undertaking/FGAS/10109/details").json()["candidates"]] == [
        4108
    ]

    assert api.get("/undertaking/FGAS/10101/details-short/").json() == {
        "company_id": 10101,
        "company_name": "Nordlicht Kältetechnik GmbH",
        "address": "Kühlhausstraße, 14",
        "postal_code": "20457",
        "city": "Hamburg",
        "country": "Germany",
        "eori_code": "DE287451036",
        "contact_persons": [
            {
                "first_name": "Jonas",
                "last_name": "Brenner",
                "email": "jonas.brenner@nordlicht-kaelte.example.test",
            }
        ],
    }
    # Either trailing-slash form answers.
    assert api.get("/undertaking/FGAS/10101/details-short").status_code == 200
    assert api.get("/undertaking/FGAS/10101/details/").status_code == 200


def test_statusupdate_sets_the_status_and_lets_the_next_sync_rewrite_it(api: Client, database: str) -> None:
    answer = api.post("/undertaking/FGAS/10112/statusupdate", data={"status": "SUSPENDED"})
    assert (answer.status_code, answer.json()) == (200, True)
    assert by_id(api.get("/undertaking/FGAS/list/all").json(), 10112)["status"] == "SUSPENDED"
    engine = sa.create_engine(database)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT source_hash FROM registry.undertaking WHERE external_id = 10112")
        ).scalar()
    engine.dispose()
    assert stored is None
    assert api.post("/undertaking/FGAS/10112/statusupdate", data={"status": ""}).json() is False
    assert api.post("/undertaking/FGAS/99999/statusupdate", data={"status": "VALID"}).status_code == 404


# --------------------------------------------------------------------------------------------------
# users


def test_users_and_their_verified_companies(api: Client) -> None:
    users = api.get("/user/list").json()
    assert len(users) == 26
    assert all(list(u) == ["ecas_id", "username", "first_name", "last_name", "email", "type"] for u in users)
    assert api.get("/user/list?page=2&per-page=5").json() == users[5:10]
    assert api.get("/user/list?page=0&per-page=5").status_code == 400

    shared = api.get("/user/n00kz9q4/companies").json()
    assert shared == [
        {
            "company_id": 10108,
            "collection_id": None,
            "name": "Kryon GmbH",
            "domain": "FGAS",
            "country": "AT",
            "country_history": [],
            "representative_country": None,
            "represent_history": [],
        },
        {**shared[1], "company_id": 10111, "country": "PL"},
    ]
    (polar,) = api.get("/user/f.dijkstra@kanaalzicht.example.test/companies").json()
    assert polar["representative_country"] == "NL"
    assert [r["vatnumber"] for r in polar["represent_history"]] == ["NL859201446B01", "BE0411905847"]
    assert api.get("/user/n00hr109/companies").json() == []  # 10109 is not verified
    assert api.get("/user/nobody/companies").status_code == 404

    assert api.get("/user/companies?username=n00kz9q4").json() == shared
    assert ids(api.get("/user/companies?ecas_id=n00nk101").json()) == [10101]
    assert ids(api.get("/user/companies?username=unknown&ecas_id=n00nk101").json()) == [10101]
    assert api.get("/user/companies?username=unknown").status_code == 404
    assert api.get("/user/companies").status_code == 404
    assert api.get("/user/companies/v2/?username=n00kz9q4").json() == {"reporter": shared, "auditor": []}


# --------------------------------------------------------------------------------------------------
# old companies, mail list


def test_old_companies_are_listed_and_marked_valid_or_invalid(api: Client) -> None:
    valid = api.get("/oldcompanies/list/valid/").json()
    assert len(valid) == 22 and api.get("/oldcompanies/list/invalid/").json() == []
    assert "id" not in valid[0] and valid[0]["company_id"] == 4101
    assert api.post("/oldcompanies/4110/invalid/").json() is True
    assert [o["company_id"] for o in api.get("/oldcompanies/list/invalid/").json()] == [4110]
    assert api.post("/oldcompanies/4110/valid").json() is True  # either slash form
    assert api.get("/oldcompanies/list/invalid/").json() == []
    assert api.post("/oldcompanies/999999/invalid/").status_code == 404


def test_the_mail_list_adds_lists_and_deletes(api: Client) -> None:
    person = {"mail": "desk@example.test", "first_name": "Help", "last_name": "Desk"}
    assert api.post("/mail/add", data=person).json() == {"success": True}
    assert api.post("/mail/add", data=person).json() == {
        "success": False,
        "message": "This email address already exists",
    }
    (listed,) = api.get("/mail/list").json()
    assert list(listed) == ["mail", "timestamp", "first_name", "last_name"]
    assert re.match(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}$", listed["timestamp"])
    assert api.post("/mail/delete", data={"mail": "desk@example.test"}).json() == {"success": True}
    assert api.post("/mail/delete", data={"mail": "desk@example.test"}).json() == {
        "success": False,
        "message": "This email address does not exists",
    }
    assert api.post("/mail/add", data={"mail": "x@example.test"}).status_code == 400
    # A multipart form reads the same (the first value of a repeated field, as Flask gave it).
    multipart = [("mail", (None, "first@example.test")), ("mail", (None, "second@example.test"))]
    multipart += [("first_name", (None, "A")), ("last_name", (None, "B"))]
    assert api.post("/mail/add", files=multipart).json() == {"success": True}
    assert [m["mail"] for m in api.get("/mail/list").json()] == ["first@example.test"]
    assert api.post("/mail/delete", files={"mail": (None, "first@example.test")}).json() == {"success": True}
    assert api.get("/mail/list").json() == []


# --------------------------------------------------------------------------------------------------
# logs


def test_the_sync_and_matching_logs(api: Client) -> None:
    (run,) = api.get("/log/sync/FGAS").json()
    assert (run["domain"], run["organizations"], run["inserted"], run["run_id"]) == (
        "FGAS",
        12,
        12,
        "api-FGAS",
    )
    assert re.match(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}$", run["execution_time"])
    matching = api.get("/log/matching/FGAS").json()
    assert [(m["user"], m["company_id"]) for m in matching] == [
        ("helpdesk", 10111),
        ("helpdesk", 10108),
        ("helpdesk", 10107),
        ("helpdesk", 10102),
        ("helpdesk", 10101),
        ("SYSTEM", 10104),
        ("SYSTEM", 10103),
    ]
    assert {k: v for k, v in matching[4].items() if k != "timestamp"} == {
        "user": "helpdesk",
        "domain": "FGAS",
        "company_id": 10101,
        "oldcompany_id": 4101,
        "oldcompany_account": "fgas30101",
        "verified": True,
        "country_code": "DE",
    }
    assert [m["company_id"] for m in api.get("/log/matching/ODS").json()] == [26104, 26102, 26101]


def test_check_sync_counts_whole_days(api: Client, database: str) -> None:
    for domain in ("FGAS", "fgas", "fgases"):
        answer = api.get(f"/log/check_sync/{domain}")
        assert (answer.status_code, answer.text) == (200, "success")
    assert api.get("/log/check_sync/nowhere").status_code == 404
    # Two days old, same time of day: the legacy's timedelta.seconds saw a few seconds and passed.
    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE registry.organization_log SET execution_time = execution_time - interval '2 days' "
                "WHERE domain = 'ODS'"
            )
        )
    engine.dispose()
    answer = api.get("/log/check_sync/ods")
    assert (answer.status_code, answer.text) == (500, "failed")


# --------------------------------------------------------------------------------------------------
# licences


def test_aggregated_licences_per_year_with_the_patched_entries(api: Client) -> None:
    def aggregated(body: Any, path: str = "/undertaking/ODS/26101/licences/2025/aggregated") -> Any:
        return api.post(path, data=json.dumps(body)).json()["licences"]

    licences = aggregated({})
    assert licences == [
        {
            "year": 2025,
            "substance": "Halon 1211 (virgin)",
            "s_orig_country_name": "US",
            "quantity": 2,
            "organization_country_name": "RO",
            "company_id": 26101,
            "use_kind": "free circulation",
            "use_desc": "critical uses",
            "type": "import",
        },
        {
            "year": 2025,
            "substance": "Patched substance",
            "s_orig_country_name": "US",
            "quantity": 7,  # PATCH_LICENCES: int unless laboratory uses
            "organization_country_name": "RO",
            "company_id": 26101,
            "use_kind": "free circulation",
            "use_desc": "feedstock",
            "type": "import",
        },
    ]
    # The filters narrow the aggregates; the patched entries are appended whatever they say.
    assert aggregated({"substances": ["Halon 1211 (virgin)"]}) == licences
    assert aggregated({"substances": ["CTC (virgin)"]}) == licences[1:]
    assert aggregated({"actions": ["export"]}) == licences[1:]
    assert aggregated({"actions": ["import"], "substances": []}) == licences
    assert aggregated({}, "/undertaking/ODS/26101/licences/2024/aggregated") == []  # no delivery
    lab = aggregated({}, "/undertaking/ODS/26102/licences/aggregated")  # every year
    assert [(x["substance"], x["quantity"]) for x in lab] == [
        ("CTC (virgin)", 0.01625),
        ("TCA (virgin)", 0.0042),
    ]
    assert api.post("/undertaking/ODS/26101/licences/aggregated", data="").status_code == 200
    assert api.post("/undertaking/ODS/26101/licences/aggregated", data="{not json").status_code == 400
    assert api.post("/undertaking/ODS/99999/licences/2025/aggregated", data="{}").status_code == 404
    huge = b'{"substances": ["' + b"x" * (4 * 1024 * 1024) + b'"]}'
    assert api.post("/undertaking/ODS/26101/licences/2025/aggregated", data=huge).status_code == 413


def test_raw_licences_and_substances_of_a_year(api: Client) -> None:
    licences = api.get("/undertaking/ODS/26101/2025/licences").json()
    # 880105 is VALID: stored, but not part of an aggregate.
    assert [x["licence_id"] for x in licences] == [880101, 880102, 880103, 880104]
    assert list(licences[0]) == [
        "year",
        "licence_id",
        "chemical_name",
        "organization_country_name",
        "organization_country_name_orig",
        "custom_procedure_name",
        "international_party_country_name",
        "international_party_country_name_orig",
        "total_odp_mass",
        "net_mass",
        "licence_state",
        "long_licence_number",
        "template_detailed_use_code",
        "licence_type",
        "mixture_nature_type",
        "date_created",
        "date_updated",
        "updated_since",
        "substance_id",
    ]
    assert [x["net_mass"] for x in licences] == [0.1, 0.2, 0.4, 0.5]
    (substance,) = api.get("/undertaking/ODS/26101/2025/substances").json()
    assert {k: substance[k] for k in ("year", "substance", "lic_type", "quantity")} == {
        "year": 2025,
        "substance": "Halon 1211 (virgin)",
        "lic_type": "import",
        "quantity": 2.0,
    }
    assert re.match(DATE, substance["date_created"])
    for path in ("/undertaking/ODS/26101/2024/licences", "/undertaking/ODS/26101/2024/substances"):
        assert api.get(path).status_code == 404, path


# --------------------------------------------------------------------------------------------------
# exports


def sheet(answer: requests.Response) -> list[list[Any]]:
    assert (
        answer.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    workbook = openpyxl.load_workbook(io.BytesIO(answer.content))
    return [list(row) for row in workbook.active.iter_rows(values_only=True)]


def test_the_undertaking_export_has_the_legacy_columns(api: Client) -> None:
    answer = api.get("/export/undertaking/FGAS")
    assert answer.headers["content-disposition"] == "attachment; filename=companies_list.xlsx"
    header, *rows = sheet(answer)
    assert len(header) == 40 and header[:3] == ["company_id", "registration_id", "name"]
    assert header[18:20] == ["vat_number", "eori_number"] and header[-1] == "represent_history"
    assert [row[0] for row in rows] == VERIFIED_FGAS
    polar = dict(zip(header, rows[1], strict=True))
    assert (polar["users"], polar["representative_name"], polar["representative_address_country_code"]) == (
        "n00pc102, f.dijkstra@kanaalzicht.example.test",
        "Grachten Rep BV",
        "NL",
    )
    assert polar["represent_history"] == "Kanaalzicht Compliance B.V., Schelde Rep NV"
    assert polar["address_country_code"] == "CN" and polar["oldcompany_verified"] is True
    # ODS: the vat column (the EORI number) is headed eori_number, and there is no other; asking
    # twice changes nothing, nor does it change the F-gas sheet (the legacy's did both).
    for _ in range(2):
        ods_header, *ods_rows = sheet(api.get("/export/undertaking/ODS"))
        assert (
            len(ods_header) == 39 and ods_header[18] == "eori_number" and ods_header.count("eori_number") == 1
        )
        assert [row[18] for row in ods_rows] == ["RO31874520", "DE5521870", "ESA50987612"]
    assert sheet(api.get("/export/undertaking/FGAS"))[0] == header


def test_the_user_exports(api: Client) -> None:
    listed = api.get("/export/user/json/FGAS").json()
    assert listed[0] == {
        "username": "n00nk101",
        "companyname": "Nordlicht Kältetechnik GmbH",
        "country": "Germany",
        "ecas_id": "n00nk101",
        "contact_firstname": "Jonas",
        "contact_lastname": "Brenner",
        "contact_email": "jonas.brenner@nordlicht-kaelte.example.test",
    }
    # One row per (user, verified company): the consultant shared by 10108 and 10111 twice.
    assert [x["companyname"] for x in listed if x["username"] == "n00kz9q4"] == [
        "Kryon GmbH",
        "Vistula Chłodnictwo Sp. z o.o.",
    ]
    answer = api.get("/export/user/list/FGAS")
    assert answer.headers["content-disposition"] == "attachment; filename=users_list.xlsx"
    header, *rows = sheet(answer)
    assert header == [
        "username",
        "companyname",
        "country",
        "contact_firstname",
        "contact_lastname",
        "contact_email",
    ]
    assert rows == [
        [
            x["username"],
            x["companyname"],
            x["country"],
            x["contact_firstname"],
            x["contact_lastname"],
            x["contact_email"],
        ]
        for x in listed
    ]
    assert [x["companyname"] for x in api.get("/export/user/json/ODS").json()] == [
        "Carpathia Halon Services SRL",
        "Rhein-Labor Chemikalien GmbH",
        "Rhein-Labor Chemikalien GmbH",
        "Iberia Refrigerantes Reciclados S.A.",
    ]
