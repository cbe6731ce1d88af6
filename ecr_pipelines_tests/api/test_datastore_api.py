"""The data store's HAWK-signed API under a real uvicorn, called with ``requests`` and
``mohawk.Sender``, on tables the data store's own loads filled from the demo's bundled files
(``load_source`` / ``load_spire`` over a local blob store), in a database of this module's own.

Every answer to an authenticated request is checked with ``sender.accept_response``."""

import time
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import mohawk
import mohawk.exc
import pytest
import requests
from sqlalchemy.engine import Engine

from ecr_pipelines.api import datastore as api
from ecr_pipelines.api.context import ApiSettings
from ecr_pipelines.datastore import load
from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.dev.datastore_demo import FILES, PLACED
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines_tests.api.conftest import ServeApi
from ecr_pipelines_tests.conftest import own_migrated_engine

KEY = "a-shared-secret-of-the-full-client"
ONS_KEY = "the-ons-only-client-key"
FULL = ("full-client", KEY)
ONS_ONLY = ("ons-client", ONS_KEY)
# A table the tests make themselves, with names that would break SQL pasted together.
ODD_SCHEMA = 'odd "schema".x%s:y'
ODD_TABLE = "t'a\"b%le"


def _quoted(name: str) -> str:
    # exec_driver_sql hands psycopg2 a (empty) parameter dict, so a percent sign is doubled.
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def engine(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The demo's files loaded by the data store's own load functions, and two API clients."""
    with own_migrated_engine(pg_server_url, "t_api_ds") as engine:
        store = LocalBlobStore(tmp_path_factory.mktemp("blobs"))
        ons = SOURCES["ons.postcode_directory"]
        store.put_file(
            f"{ons.blob_prefix}ONSPD_MAY_2019_UK.zip", FILES / "ons_postcode_directory_ONSPD_MAY_2019_UK.zip"
        )
        for source_id, name in PLACED.items():
            store.put_file(f"{SOURCES[source_id].blob_prefix}{name}", FILES / "placed" / name)
        for table in (FILES / "placed" / "spire").glob("*.csv"):
            store.put_file(f"{SOURCES['dit.spire.' + table.stem].blob_prefix}{table.name}", table)
        for source_id in (ons.id, *PLACED, "world_bank.tariff.transformed"):
            report = load.load_source(engine, store, SOURCES[source_id])
            assert not report.failed, report.as_dict()
        assert not load.load_spire(engine, store).failed
        api.add_hawk_user(engine, *FULL, ["*"], "everything")
        api.add_hawk_user(engine, *ONS_ONLY, [api.SCOPE_ONS_POSTCODES])
        with engine.begin() as conn:
            conn.exec_driver_sql('CREATE SCHEMA "test.values"')
            conn.exec_driver_sql(
                'CREATE TABLE "test.values"."L0" (id bigint PRIMARY KEY, amount numeric, ratio double precision, '
                "day date, moment timestamp, stamp timestamptz, rates numeric[], note text, "
                "datafile_created text, data_hash text)"
            )
            conn.exec_driver_sql(
                """INSERT INTO "test.values"."L0" VALUES
                (1, 1.25, 0.5, '2019-05-01', '2019-05-01 12:30:00', '2019-05-01 12:30:00+00',
                 '{1.5,NaN}', 'plain', 'f.csv', 'h1'),
                (2, 'NaN', 'NaN', NULL, NULL, NULL, NULL, NULL, 'f.csv', 'h2'),
                (3, 'Infinity', '-Infinity', NULL, NULL, NULL, '{}', NULL, 'f.csv', 'h3')"""
            )
            # Wider than a Postgres function takes arguments, with names that could be taken for
            # the API's own aliases.
            wide = ", ".join(["id integer PRIMARY KEY", "v text", "api_row text", "api_item text"])
            wide += "".join(f", c{n} integer" for n in range(120))
            conn.exec_driver_sql(f'CREATE TABLE "test.values".wide ({wide})')
            conn.exec_driver_sql(
                "INSERT INTO \"test.values\".wide (id, v, api_row, api_item, c0, c119) VALUES (1, 'x', 'y', 'z', 0, 119)"
            )
            conn.exec_driver_sql('CREATE TABLE "test.values".only_ids (id integer PRIMARY KEY)')
            conn.exec_driver_sql('INSERT INTO "test.values".only_ids VALUES (10), (20), (30)')
            odd = f"{_quoted(ODD_SCHEMA)}.{_quoted(ODD_TABLE)}"
            conn.exec_driver_sql(f"CREATE SCHEMA {_quoted(ODD_SCHEMA)}")
            conn.exec_driver_sql(f'CREATE TABLE {odd} (id integer PRIMARY KEY, "we%%ird:col" text)')
            conn.exec_driver_sql(f"INSERT INTO {odd} VALUES (1, 'one'), (2, 'two'), (3, 'three')")
        yield engine


def _serve(serve_api: ServeApi, engine: Engine, page_size: int = 2) -> str:
    return serve_api(ApiSettings(database_url=_url(engine), pagination_size=page_size))


def _sender(url: str, client: tuple[str, str] = FULL, **options: Any) -> mohawk.Sender:
    credentials = {"id": client[0], "key": client[1], "algorithm": "sha256"}
    return mohawk.Sender(credentials, url, "GET", content="", content_type="", **options)


def hawk_get(
    url: str, client: tuple[str, str] = FULL, *, signed_url: str | None = None, **options: Any
) -> requests.Response:
    """GET ``url`` signed for ``signed_url`` (default the same); a 2xx-4xx answer with a body must
    carry a valid ``Server-Authorization``."""
    sender = _sender(signed_url or url, client, **options)
    response = requests.get(url, headers={"Authorization": sender.request_header}, timeout=10)
    if response.status_code in (200, 400, 404, 422) and "Server-Authorization" in response.headers:
        sender.accept_response(
            response.headers["Server-Authorization"],
            content=response.content,
            content_type=response.headers["Content-Type"],
        )
    return response


def _signed_ok(url: str, client: tuple[str, str] = FULL) -> dict[str, Any]:
    response = hawk_get(url, client)
    assert response.status_code == 200, (response.status_code, response.text)
    assert "Server-Authorization" in response.headers
    return response.json()


def _legacy_value(value: Any) -> Any:
    """A value as the legacy's JSON gave it: decimals as floats, NaN as null, dates in ISO 8601."""
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _rows(engine: Engine, schema: str, table: str, columns: list[str]) -> list[list[Any]]:
    """The table's rows (id first) read with SQLAlchemy, as the API should write them."""
    selected = ", ".join(f'"{name}"' for name in ["id", *columns])
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f'SELECT {selected} FROM "{schema}"."{table}" ORDER BY id').all()
    return [[_legacy_value(value) for value in row] for row in rows]


def _walk(base: str, path: str, orientation: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """Every page of a list, following ``next`` to the end: (pages' headers or None, rows)."""
    url: str | None = f"{base}{path}" + ("?orientation=records" if orientation == "records" else "")
    pages: list[dict[str, Any]] = []
    while url is not None:
        page = _signed_ok(url)
        pages.append(page)
        link = page["next"]
        if link is not None:
            assert link.startswith(f"{base}{path}?orientation={orientation}&next-id=")
        url = link
        assert len(pages) < 500
    return [page.get("headers") for page in pages], pages


# --- the per-source lists -------------------------------------------------------------------------


@pytest.mark.parametrize("source", api.SOURCE_LISTS, ids=lambda source: source.scope)
def test_every_source_list_pages_to_the_end_in_both_orientations(
    serve_api: ServeApi, engine: Engine, source: api.SourceList
) -> None:
    base = _serve(serve_api, engine, page_size=1)
    expected = _rows(engine, source.schema, source.table, list(source.columns))
    assert len(expected) >= 2, "every list has more rows than a page"
    headers = source.headers
    expected = [row if source.include_id else row[1:] for row in expected]

    _, tabular = _walk(base, source.path, "tabular")
    assert len(tabular) == len(expected)
    assert all(page["headers"] == headers for page in tabular)
    assert [row for page in tabular for row in page["values"]] == expected
    assert tabular[-1]["next"] is None

    _, records = _walk(base, source.path, "records")
    assert [row for page in records for row in page["results"]] == [
        dict(zip(headers, row, strict=True)) for row in expected
    ]
    assert records[-1]["next"] is None


def test_the_legacys_header_names() -> None:
    by_scope = {source.scope: source for source in api.SOURCE_LISTS}
    assert by_scope["list_dit_reference_postcodes"].headers[:4] == [
        "postcode",
        "localAuthorityDistrictCode",
        "localAuthorityDistrictName",
        "localEnterprisePartnershipLep1Code",
    ]
    assert by_scope["list_dit_baci"].headers == [
        "year",
        "productCategory",
        "exporter",
        "importer",
        "tradeFlowValue",
        "quantity",
    ]
    assert by_scope["list_world_bank_tariff_raw"].headers == [
        "reporter",
        "year",
        "product",
        "partner",
        "dutyType",
        "simpleAverage",
        "numberOfTotalLines",
    ]
    assert by_scope["list_world_bank_bound_rates_raw"].headers[:2] == ["nomenCode", "reporter"]
    assert by_scope["list_world_bank_tariff"].headers[4:6] == ["assumedTariff", "appRate"]
    ons = by_scope["list_ons_postcodes"]
    assert ons.headers[:4] == ["id", "pcd", "pcd2", "pcds"] and ons.headers[-1] == "publication_date"
    assert api.camel_case("__a__b_c_") == "aBC" and api.camel_case("lep1") == "lep1"


def test_a_list_page_and_its_next_link(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine, page_size=1)
    first = _signed_ok(f"{base}/api/v1/get-dit-reference-postcodes/")
    with engine.connect() as conn:
        ids = (
            conn.exec_driver_sql('SELECT id FROM "dit.reference_postcodes"."L1" ORDER BY id').scalars().all()
        )
    assert first["headers"][0] == "postcode" and first["values"][0][:2] == ["AB10 1AA", "S12000033"]
    assert first["next"] == f"{base}/api/v1/get-dit-reference-postcodes/?orientation=tabular&next-id={ids[1]}"
    second = _signed_ok(first["next"])
    assert second["values"][0][0] == "HU4 7SW" and second["next"] is None
    assert second["values"][0][-2:] == ["1980-01-01", None]  # dates in ISO, an empty one null


@pytest.mark.parametrize("path", ["/api/v1/get-postcode-data/", "/api/v1/get-dit-reference-postcode/"])
def test_single_postcode_lookup(serve_api: ServeApi, engine: Engine, path: str) -> None:
    base = _serve(serve_api, engine)
    found = _signed_ok(f"{base}{path}?postcode=hu47sw")
    assert set(found) == {"headers", "values"}
    assert found["headers"][:2] == ["postcode", "localAuthorityDistrictCode"]
    assert [row[0] for row in found["values"]] == ["HU4 7SW"]
    spaced = _signed_ok(f"{base}{path}?postcode={quote(' Hu4  7sW ')}&orientation=records")
    assert spaced["results"][0]["postcode"] == "HU4 7SW"
    assert spaced["results"][0]["regionName"] == "Yorkshire and The Humber"
    assert _signed_ok(f"{base}{path}?postcode=ZZ99ZZ") == {"headers": found["headers"], "values": []}
    for query in ("", "?postcode="):
        missing = hawk_get(f"{base}{path}{query}")
        assert (missing.status_code, missing.json()) == (400, {"error": "No postcode specified"})


# --- the generic routes ---------------------------------------------------------------------------


def test_table_structure(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    assert _signed_ok(f"{base}/api/v1/table-structure/spire/batches") == {
        "columns": [
            {"name": "id", "type": "INTEGER"},
            {"name": "batch_ref", "type": "TEXT"},
            {"name": "status", "type": "TEXT"},
            {"name": "start_date", "type": "TIMESTAMP WITHOUT TIME ZONE"},
            {"name": "end_date", "type": "TIMESTAMP WITHOUT TIME ZONE"},
            {"name": "approve_date", "type": "TIMESTAMP WITHOUT TIME ZONE"},
            {"name": "release_date", "type": "TIMESTAMP WITHOUT TIME ZONE"},
            {"name": "staging_date", "type": "TIMESTAMP WITHOUT TIME ZONE"},
        ]
    }
    # The loader's helper columns are left out, the source's kept.
    structure = _signed_ok(f"{base}/api/v1/table-structure/dit.reference_postcodes/L0")
    names = [column["name"] for column in structure["columns"]]
    assert names[:2] == ["id", "postcode"] and not {
        "data_hash",
        "datafile_created",
        "datafile_updated",
    } & set(names)
    assert {"name": "date_of_introduction", "type": "DATE"} in structure["columns"]
    assert api.type_name("character varying(20)") == "VARCHAR(20)"
    assert api.type_name("numeric(10,2)") == "NUMERIC(10, 2)"


@pytest.mark.parametrize("orientation", ["tabular", "records"])
def test_table_data_pages_through_a_loaded_table(
    serve_api: ServeApi, engine: Engine, orientation: str
) -> None:
    base = _serve(serve_api, engine, page_size=7)
    columns = [
        "batch_ref",
        "status",
        "start_date",
        "end_date",
        "approve_date",
        "release_date",
        "staging_date",
    ]
    expected = _rows(engine, "spire", "batches", columns)
    assert len(expected) > 7 and len(expected) % 7 != 0
    _, pages = _walk(base, "/api/v1/table-data/spire/batches", orientation)
    assert len(pages) == -(-len(expected) // 7)
    headers = ["id", *columns]
    if orientation == "tabular":
        assert all(page["headers"] == headers for page in pages)
        assert [row for page in pages for row in page["values"]] == expected
    else:
        assert [row for page in pages for row in page["results"]] == [
            dict(zip(headers, row, strict=True)) for row in expected
        ]
    # An id in the middle of a page starts the page there (next-id is inclusive).
    middle = expected[3][0]
    page = _signed_ok(f"{base}/api/v1/table-data/spire/batches?next-id={middle}")
    assert [row[0] for row in page["values"]] == [row[0] for row in expected[3:10]]


def test_table_data_values_as_json(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine, page_size=10)
    page = _signed_ok(f"{base}/api/v1/table-data/test.values/L0?orientation=records")
    assert page == {
        "results": [
            {
                "id": 1,
                "amount": 1.25,
                "ratio": 0.5,
                "day": "2019-05-01",
                "moment": "2019-05-01T12:30:00",
                "stamp": page["results"][0]["stamp"],
                "rates": [1.5, None],
                "note": "plain",
            },
            {
                "id": 2,
                "amount": None,
                "ratio": None,
                "day": None,
                "moment": None,
                "stamp": None,
                "rates": None,
                "note": None,
            },
            {
                "id": 3,
                "amount": None,
                "ratio": None,
                "day": None,
                "moment": None,
                "stamp": None,
                "rates": [],
                "note": None,
            },
        ],
        "next": None,
    }
    assert page["results"][0]["stamp"].startswith("2019-05-01T") and page["results"][0]["stamp"][19] in "+-"
    # A single column: the values are a flat list, as the legacy's.
    only = _signed_ok(f"{base}/api/v1/table-data/test.values/only_ids")
    assert only == {"headers": ["id"], "values": [10, 20, 30], "next": None}
    # 124 columns, in both shapes.
    wide = _signed_ok(f"{base}/api/v1/table-data/test.values/wide")
    assert len(wide["headers"]) == 124 and wide["values"][0][:5] == [1, "x", "y", "z", 0]
    assert wide["values"][0][-1] == 119
    record = _signed_ok(f"{base}/api/v1/table-data/test.values/wide?orientation=records")["results"][0]
    assert (record["v"], record["api_row"], record["api_item"], record["c119"], record["c1"]) == (
        "x",
        "y",
        "z",
        119,
        None,
    )


def test_names_are_looked_up_and_quoted_never_pasted(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine, page_size=2)
    path = f"/api/v1/table-data/{quote(ODD_SCHEMA, safe='')}/{quote(ODD_TABLE, safe='')}"
    first = _signed_ok(f"{base}{path}")
    assert first["headers"] == ["id", "we%ird:col"] and first["values"] == [[1, "one"], [2, "two"]]
    # The link keeps the path as sent (percent-encoded), and HAWK signs it that way.
    assert first["next"] == f"{base}{path}?orientation=tabular&next-id=3"
    assert _signed_ok(first["next"])["values"] == [[3, "three"]]
    structure = _signed_ok(
        f"{base}/api/v1/table-structure/{quote(ODD_SCHEMA, safe='')}/{quote(ODD_TABLE, safe='')}"
    )
    assert structure["columns"][1] == {"name": "we%ird:col", "type": "TEXT"}


HOSTILE = [
    ('"; DROP TABLE datastore.hawk_users; --', "x"),
    ("spire", 'batches"; DROP TABLE spire.batches; --'),
    ("spire", "batches' OR '1'='1"),
    ("pg_catalog", "pg_class"),
    ("pg_toast", "pg_toast_2619"),
    ("information_schema", "tables"),
    ("public", "ecr_schema_migrations"),
    ("registry", "undertaking"),
    ("datastore", "hawk_users"),
    ("operations", "datafile_registry"),
    ("iati", "document"),
    ("ckan", "x"),
    ("energy", "x"),
    ("pipeline", "x"),
    ("admin", "x"),
    ('spire"', "batches"),
    ("spire.batches", "id"),
    ("spire", "batches.id"),
    ("...", ".x."),  # (pure dot segments never reach the route: clients resolve them)
    ("spire", "batches\x00"),
    ("spire", "no_such_table"),
    ("spire", "batches_pkey"),  # an index, not a table
    ("dit.reference_postcodes", "L0_SEQUENCE"),
]


@pytest.mark.parametrize("route", ["table-data", "table-structure"])
def test_hostile_and_internal_names_answer_404(serve_api: ServeApi, engine: Engine, route: str) -> None:
    base = _serve(serve_api, engine)
    for schema, table in HOSTILE:
        url = f"{base}/api/v1/{route}/{quote(schema, safe='')}/{quote(table, safe='')}"
        response = hawk_get(url)
        assert (response.status_code, response.content) == (404, b"{}"), (schema, table)
        assert "Server-Authorization" in response.headers
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM datastore.hawk_users").scalar_one() >= 2
        assert conn.exec_driver_sql("SELECT count(*) FROM spire.batches").scalar_one() > 0


def test_a_table_without_an_id_column_is_422(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    response = hawk_get(f"{base}/api/v1/table-data/spire/ref_country_mappings")
    assert (response.status_code, response.json()) == (422, {"error": "The table must have an id column"})
    # Its structure is still there to read.
    assert (
        _signed_ok(f"{base}/api/v1/table-structure/spire/ref_country_mappings")["columns"][0]["name"]
        == "country_id"
    )


def test_bad_paging_parameters_are_400(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    for query in ("next-id=abc", "next-id=", "next-id=1.5", "next-id=99999999999999999999", "next-id=%00"):
        response = hawk_get(f"{base}/api/v1/table-data/spire/batches?{query}")
        assert (response.status_code, response.json()) == (
            400,
            {"error": "next-id is not an id of this table"},
        )
    response = hawk_get(f"{base}/api/v1/get-dit-baci-data/?orientation=columns")
    assert (response.status_code, response.json()) == (
        400,
        {"error": "orientation must be tabular or records"},
    )


# --- authentication --------------------------------------------------------------------------------


def _refused(response: requests.Response) -> None:
    assert response.status_code == 401
    assert response.content == b""
    assert "Server-Authorization" not in response.headers


def test_auth_failures_are_401_with_an_empty_body(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    url = f"{base}/api/v1/table-data/spire/batches"
    _refused(requests.get(url, timeout=5))  # no header
    _refused(requests.get(url, headers={"Authorization": ""}, timeout=5))
    _refused(hawk_get(url, ("full-client", "not-the-key")))  # bad MAC
    _refused(hawk_get(url, ("nobody", KEY)))  # unknown client
    _refused(hawk_get(url, ONS_ONLY))  # outside its scope
    _refused(hawk_get(f"{base}/api/v1/table-structure/spire/batches", ONS_ONLY))
    assert _signed_ok(f"{base}/api/v1/get-ons-postcodes/", ONS_ONLY)["headers"][:2] == ["id", "pcd"]
    # Signed for another URL: another query, another port, another path.
    _refused(hawk_get(url, signed_url=f"{url}?next-id=5"))
    _refused(hawk_get(url, signed_url=url.replace(base.rsplit(":", 1)[1], "1")))
    _refused(hawk_get(url, signed_url=f"{base}/api/v1/table-data/spire/footnotes"))
    # A body that is not the one signed.
    sender = _sender(url)
    _refused(requests.get(url, headers={"Authorization": sender.request_header}, data=b"changed", timeout=5))
    # An auth failure wins over a missing table: nothing is said about what exists.
    _refused(hawk_get(f"{base}/api/v1/table-data/spire/no_such_table", ("nobody", KEY)))


def test_an_expired_timestamp_is_401_with_the_servers_time(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    url = f"{base}/api/v1/get-dit-baci-data/"
    for skew in (-api.TIMESTAMP_SKEW_SECONDS - 30, api.TIMESTAMP_SKEW_SECONDS + 30):
        response = hawk_get(url, _timestamp=str(int(time.time()) + skew))
        _refused(response)
        assert response.headers["WWW-Authenticate"].startswith('Hawk ts="')
    # Within the skew is fine.
    assert hawk_get(url, _timestamp=str(int(time.time()) - 20)).status_code == 200


def test_a_replayed_request_is_401(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    url = f"{base}/api/v1/get-dit-baci-data/"
    header = _sender(url).request_header
    first = requests.get(url, headers={"Authorization": header}, timeout=5)
    assert first.status_code == 200
    _refused(requests.get(url, headers={"Authorization": header}, timeout=5))
    # The same nonce with another timestamp is another request (the legacy's key: id, nonce, ts).
    now = int(time.time())
    assert hawk_get(url, nonce="fixed1", _timestamp=str(now)).status_code == 200
    assert hawk_get(url, nonce="fixed1", _timestamp=str(now - 1)).status_code == 200
    _refused(hawk_get(url, nonce="fixed1", _timestamp=str(now)))


def test_malformed_headers_are_400(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine)
    url = f"{base}/api/v1/get-dit-baci-data/"
    no_ts = requests.get(
        url, headers={"Authorization": 'Hawk id="full-client", nonce="abc", mac="x"'}, timeout=5
    )
    assert no_ts.status_code == 400 and set(no_ts.json()) == {"error"}
    garbage = requests.get(url, headers={"Authorization": "Hawk this is not a header"}, timeout=5)
    assert garbage.status_code == 400 and set(garbage.json()) == {"error"}


def test_behind_a_proxy_the_url_the_client_signed_is_checked(serve_api: ServeApi, engine: Engine) -> None:
    base = _serve(serve_api, engine, page_size=1)
    public = "https://data.example.test"
    path = "/api/v1/get-dit-baci-data/"
    sender = _sender(f"{public}{path}")
    # A TLS proxy on this host (trusted by uvicorn's FORWARDED_ALLOW_IPS default) passing Host on.
    headers = {
        "Authorization": sender.request_header,
        "Host": "data.example.test",
        "X-Forwarded-Proto": "https",
    }
    response = requests.get(f"{base}{path}", headers=headers, timeout=5)
    assert response.status_code == 200
    sender.accept_response(
        response.headers["Server-Authorization"],
        content=response.content,
        content_type=response.headers["Content-Type"],
    )
    assert response.json()["next"].startswith(f"{public}{path}?orientation=tabular&next-id=")
    # Without the proxy's scheme the URL is another one.
    sender = _sender(f"{public}{path}")
    headers = {"Authorization": sender.request_header, "Host": "data.example.test"}
    _refused(requests.get(f"{base}{path}", headers=headers, timeout=5))


def test_expired_nonces_are_swept(
    serve_api: ServeApi, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "NONCE_SWEEP_EVERY", 1)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO datastore.hawk_nonce (client_id, nonce, ts, seen_at) VALUES "
            "('old', 'n1', 1, now() - interval '10 minutes'), ('recent', 'n2', 2, now() - interval '1 minute')"
        )
    base = _serve(serve_api, engine)
    assert hawk_get(f"{base}/api/v1/get-dit-baci-data/").status_code == 200
    with engine.connect() as conn:
        left = set(conn.exec_driver_sql("SELECT client_id FROM datastore.hawk_nonce").scalars())
    assert "old" not in left and {"recent", "full-client"} <= left


# --- clients ----------------------------------------------------------------------------------------


def test_add_hawk_user_from_the_command_line_replaces_and_checks(
    pg_server_url: str, serve_api: ServeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecr_pipelines.__main__ import main

    with own_migrated_engine(pg_server_url, "t_api_hawk") as engine:
        monkeypatch.setenv("DATABASE_URL", _url(engine))
        argv = [
            "api",
            "add-hawk-user",
            "--client-id",
            "flow",
            "--client-key",
            "k1",
            "--scope",
            "list_dit_baci",
        ]
        assert main(argv) == 0
        assert main([*argv[:-1], "list_dit_baci,get_table_data", "--description", "data-flow"]) == 0
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, key, scope, description FROM datastore.hawk_users").all()
        assert [tuple(row) for row in rows] == [
            ("flow", "k1", ["list_dit_baci", "get_table_data"], "data-flow")
        ]
        for bad in (
            {"client_id": "", "client_key": "k"},
            {"client_id": 'a"b', "client_key": "k"},
            {"client_id": "x", "client_key": ""},
            {"client_id": "x", "client_key": "clé"},
        ):
            with pytest.raises(ValueError):
                api.add_hawk_user(engine, bad["client_id"], bad["client_key"], ["*"])
        with pytest.raises(ValueError, match="unknown scopes"):
            api.add_hawk_user(engine, "x", "k", ["list_everything"])

        # A source not loaded yet lists nothing, as the legacy's empty tables did.
        base = serve_api(ApiSettings(database_url=_url(engine)))
        flow = ("flow", "k1")
        assert _signed_ok(f"{base}/api/v1/get-dit-baci-data/?orientation=records", flow) == {
            "results": [],
            "next": None,
        }
        assert _signed_ok(f"{base}/api/v1/get-dit-baci-data/", flow)["values"] == []


def test_loaded_tables_page_on_an_indexed_id(engine: Engine) -> None:
    """Every table the loads made that the lists or table-data page through has an index led by
    ``id``, so a page is an index range scan wherever it starts."""
    with engine.connect() as conn:
        unindexed = (
            conn.exec_driver_sql(
                """SELECT n.nspname || '.' || c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'id'
            WHERE c.relkind = 'r' AND (n.nspname LIKE '%%.%%' OR n.nspname = 'spire')
            AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum)"""
            )
            .scalars()
            .all()
        )
    assert unindexed == []
