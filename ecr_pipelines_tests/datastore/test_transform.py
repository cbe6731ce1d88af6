"""The World Bank tariff transform on small hand-made inputs: the four input tables are created
in an empty database with the specs' layout, filled with a handful of rows, and the L1 compared
row by row with what the legacy's rules give (forward fill, EU rates, world average, the
precedence of the assumed tariff, the product filter)."""

from collections.abc import Iterable, Sequence
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.datastore.transform import TransformError, run_transform, transform_tariffs
from ecr_pipelines.lib.database import engine_for

TARIFF = SOURCES["world_bank.tariff"]
BOUND_RATES = SOURCES["world_bank.bound_rates"]
EU_MEMBERSHIP = SOURCES["dit.eu_country_membership"]
COMTRADE = SOURCES["comtrade.country_code_and_iso"]
L1 = '"world_bank.tariff"."L1"'

# Comtrade knows these codes (0 world, 918 EU and the countries of the cases).
COMTRADE_CODES = (0, 12, 24, 36, 76, 380, 705, 710, 724, 918)
# Members of the EU from the year given.
EU_MEMBERS = {"ESP": 1986, "SVN": 2004, "ITA": 1958}

# (reporter, year, product, partner, duty type, simple average)
Tariff = tuple[int, int, int, int, str, float]
# product, reporter, partner, year, assumed_tariff, app_rate, mfn_rate, bnd_rate, eu_rep_rate,
# eu_part_rate, eu_eu_rate, world_average
Expected = tuple[
    int,
    int,
    int,
    int,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
]
_ = None


def _create(
    conn: Connection, schema: str, table: str, helpers: str, columns: Iterable[tuple[str, str]]
) -> None:
    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    definitions = ", ".join([helpers, *(f'"{name}" {sql_type}' for name, sql_type in columns)])
    conn.execute(sa.text(f'CREATE TABLE "{schema}"."{table}" ({definitions})'))


def l1_columns(spec_id: str) -> list[tuple[str, str]]:
    l1 = SOURCES[spec_id].l1
    assert l1 is not None
    return [(column.name, column.type) for column in l1.columns]


@pytest.fixture
def engine(fresh_database: str) -> Engine:
    """A database with the transform's four inputs, empty but for Comtrade and EU membership."""
    engine = engine_for(fresh_database)
    with engine.begin() as conn:
        l0_helpers = "id serial PRIMARY KEY, datafile_created text"
        l1_helpers = "id serial PRIMARY KEY, data_source_row_id integer"
        _create(conn, TARIFF.schema, "L0", l0_helpers, ((c.name, c.type) for c in TARIFF.columns))
        _create(conn, BOUND_RATES.schema, "L1", l1_helpers, l1_columns(BOUND_RATES.id))
        _create(conn, EU_MEMBERSHIP.schema, "L1", l1_helpers, l1_columns(EU_MEMBERSHIP.id))
        _create(conn, COMTRADE.schema, "L1", l1_helpers, l1_columns(COMTRADE.id))
        conn.execute(
            sa.text(
                f'INSERT INTO "{COMTRADE.schema}"."L1" (cty_code, iso3_digit_alpha) VALUES (:code, :iso3)'
            ),
            [{"code": code, "iso3": f"C{code}"} for code in COMTRADE_CODES],
        )
        # One row per country and year, as the unpivot of the membership file gives.
        conn.execute(
            sa.text(
                f'INSERT INTO "{EU_MEMBERSHIP.schema}"."L1" (country, iso3, year, tariff_code)'
                " VALUES (:iso3, :iso3, :year, :code)"
            ),
            [
                {"iso3": iso3, "year": year, "code": "EUN" if year >= since else None}
                for iso3, since in EU_MEMBERS.items()
                for year in range(1995, 2021)
            ],
        )
    return engine


def add_tariffs(engine: Engine, tariffs: Sequence[Tariff]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{TARIFF.schema}"."L0" (datafile_created, reporter, year, product, partner,'
                " duty_type, simple_average, number_of_total_lines)"
                " VALUES ('test.csv', :reporter, :year, :product, :partner, :duty, :rate, 1)"
            ),
            [
                {"reporter": r, "year": y, "product": p, "partner": q, "duty": d, "rate": v}
                for r, y, p, q, d, v in tariffs
            ],
        )


def add_bound_rates(engine: Engine, rates: Sequence[tuple[int, int, float]]) -> None:
    if not rates:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{BOUND_RATES.schema}"."L1" (reporter, product, bound_rate) VALUES (:r, :p, :b)'
            ),
            [{"r": r, "p": p, "b": b} for r, p, b in rates],
        )


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    return value


def l1_rows(conn: Connection) -> list[tuple[object, ...]]:
    """The L1 without its helper columns, in id order; codes as integers whatever the column type."""
    rows = conn.execute(
        sa.text(
            "SELECT product, reporter, partner, year, assumed_tariff, app_rate, mfn_rate, bnd_rate,"
            f" eu_rep_rate, eu_part_rate, eu_eu_rate, world_average FROM {L1} ORDER BY id"
        )
    ).all()
    return [(row[0], int(row[1]), int(row[2]), row[3], *(_plain(v) for v in row[4:])) for row in rows]


def run(engine: Engine, **options: object) -> list[tuple[object, ...]]:
    with engine.begin() as conn:
        transform_tariffs(conn, **options)  # type: ignore[arg-type]
    with engine.connect() as conn:
        return l1_rows(conn)


# --- the legacy's cases ---------------------------------------------------------------------------

FORWARD_FILL: list[Tariff] = [
    (918, 2015, 201, 724, "AHS", 5),  # the EU's rate towards Spain: Slovenia's too
    (12, 2016, 201, 710, "AHS", 10),  # South Africa is not a country of this run
    (12, 2016, 201, 705, "AHS", 15),
    (12, 2015, 201, 0, "MFN", 20),
    (12, 2016, 201, 0, "MFN", 30),
    (705, 2016, 201, 0, "MFN", 40),
    (705, 2016, 201, 724, "AHS", 60),
]
FORWARD_FILL_L1: list[Expected] = [
    (201, 12, 705, 2015, 20, _, 20, _, _, _, _, 20),  # the MFN towards the world
    (201, 12, 705, 2016, 15, 15, 30, _, _, 15, _, 35),  # the applied rate
    (201, 12, 705, 2017, 15, _, _, _, _, _, _, _),  # carried forward from 2016
    (201, 12, 724, 2015, 20, _, 20, _, _, _, _, 20),
    (201, 12, 724, 2016, 15, _, 30, _, _, 15, _, 35),  # Algeria's average rate to EU members
    (201, 12, 724, 2017, 15, _, _, _, _, _, _, _),
    (201, 705, 12, 2015, 20, _, _, _, _, _, _, 20),  # only the world average
    (201, 705, 12, 2016, 40, _, 40, _, _, _, _, 35),
    (201, 705, 12, 2017, 40, _, _, _, _, _, _, _),  # the MFN carried forward
    (201, 705, 724, 2015, 0, _, _, _, 5, _, 0, 20),  # within the EU: 0 before anything
    (201, 705, 724, 2016, 0, 60, 40, _, _, 60, 0, 35),
    (201, 705, 724, 2017, 0, _, _, _, _, _, 0, _),
    (201, 724, 12, 2015, 20, _, _, _, _, _, _, 20),
    (201, 724, 12, 2016, 35, _, _, _, _, _, _, 35),
    (201, 724, 12, 2017, _, _, _, _, _, _, _, _),  # the world average is not carried forward
    (201, 724, 705, 2015, 0, _, _, _, _, _, 0, 20),
    (201, 724, 705, 2016, 0, _, _, _, _, _, 0, 35),
    (201, 724, 705, 2017, 0, _, _, _, _, _, 0, _),
]

EU_TO_COUNTRY: list[Tariff] = [
    (918, 2017, 201, 36, "AHS", 10),
    (705, 2017, 201, 36, "AHS", 20),
    (36, 2017, 201, 705, "AHS", 30),
]
EU_TO_COUNTRY_L1: list[Expected] = [
    (201, 36, 705, 2017, 30, 30, _, _, _, 30, _, _),
    (201, 36, 724, 2017, 30, _, _, _, _, 30, _, _),  # Australia's average towards the EU
    (201, 705, 36, 2017, 20, 20, _, 80, 10, _, _, _),  # the applied rate before the EU's
    (201, 705, 724, 2017, 0, _, _, 80, _, _, 0, _),
    (201, 724, 36, 2017, 10, _, _, _, 10, _, _, _),  # the EU's rate, for Spain
    (201, 724, 705, 2017, 0, _, _, _, _, _, 0, _),
]

COUNTRY_TO_WORLD: list[Tariff] = [
    (12, 2017, 201, 0, "MFN", 30),
    (12, 2017, 201, 76, "AHS", 21),
    (24, 2017, 201, 0, "MFN", 5),
    (24, 2017, 201, 710, "AHS", 10),
]
COUNTRY_TO_WORLD_L1: list[Expected] = [
    (201, 12, 24, 2017, 30, _, 30, _, _, _, _, 17.5),
    (201, 12, 76, 2017, 21, 21, 30, _, _, _, _, 17.5),  # applied before MFN
    (201, 12, 710, 2017, 30, _, 30, _, _, _, _, 17.5),
    (201, 24, 12, 2017, 5, _, 5, _, _, _, _, 17.5),
    (201, 24, 76, 2017, 5, _, 5, _, _, _, _, 17.5),
    (201, 24, 710, 2017, 10, 10, 5, _, _, _, _, 17.5),
    (201, 76, 12, 2017, 17.5, _, _, _, _, _, _, 17.5),  # nothing but the world average
    (201, 76, 24, 2017, 17.5, _, _, _, _, _, _, 17.5),
    (201, 76, 710, 2017, 17.5, _, _, _, _, _, _, 17.5),
    (201, 710, 12, 2017, 17.5, _, _, _, _, _, _, 17.5),
    (201, 710, 24, 2017, 17.5, _, _, _, _, _, _, 17.5),
    (201, 710, 76, 2017, 17.5, _, _, _, _, _, _, 17.5),
]


@pytest.mark.parametrize(
    ("tariffs", "bound_rates", "years", "countries", "expected"),
    [
        pytest.param(
            FORWARD_FILL,
            [],
            (2015, 2017),
            [("ESP", 724), ("DZA", 12), ("SVN", 705)],
            FORWARD_FILL_L1,
            id="forward-fill",
        ),
        pytest.param(
            EU_TO_COUNTRY,
            [(705, 201, 80)],
            (2017, 2017),
            [("SVN", 705), ("AUS", 36), ("ESP", 724)],
            EU_TO_COUNTRY_L1,
            id="eu-to-country",
        ),
        pytest.param(
            COUNTRY_TO_WORLD,
            [],
            (2017, 2017),
            [("BRA", 76), ("ZAF", 710), ("DZA", 12), ("AGO", 24)],
            COUNTRY_TO_WORLD_L1,
            id="country-to-world",
        ),
    ],
)
def test_legacy_cases(
    engine: Engine,
    tariffs: list[Tariff],
    bound_rates: list[tuple[int, int, float]],
    years: tuple[int, int],
    countries: list[tuple[str, int]],
    expected: list[Expected],
) -> None:
    add_tariffs(engine, tariffs)
    add_bound_rates(engine, bound_rates)
    assert run(engine, years=years, countries=countries) == expected


# --- rules in detail --------------------------------------------------------------------------------


def test_forward_fill_spans_missing_years_but_starts_in_the_range(engine: Engine) -> None:
    add_tariffs(
        engine,
        [
            (12, 1999, 201, 76, "AHS", 99),  # before the range: does not seed 2000
            (12, 2001, 201, 76, "AHS", 4.25),
            (12, 2001, 201, 76, "AHS", 4.75),  # the same file loaded twice: averaged
            (12, 2004, 201, 76, "AHS", 7.12345),
            (76, 2000, 201, 0, "MFN", 8),
            (76, 2002, 201, 76, "AHS", 1),  # a country towards itself: not a pair
        ],
    )
    rows = run(engine, years=(2000, 2005), countries=[("DZA", 12), ("BRA", 76)])
    by_pair = {(r[1], r[2], r[3]): (r[4], r[5]) for r in rows}
    assert [by_pair[(12, 76, year)] for year in range(2000, 2006)] == [
        (8, None),  # nothing of Algeria's yet: the world average of Brazil's MFN
        (4.5, 4.5),
        (4.5, None),
        (4.5, None),
        (7.123, 7.123),  # rounded to 3 decimals
        (7.123, None),
    ]
    assert [by_pair[(76, 12, year)][0] for year in range(2000, 2006)] == [8] * 6
    assert len(rows) == 2 * 6


def test_eu_rates_follow_membership_by_year(engine: Engine) -> None:
    # Slovenia joins in 2004: the EU's rate reaches it from then on, and the EU-EU zero too.
    add_tariffs(
        engine, [(918, year, 301, 36, "AHS", 3) for year in (2003, 2004)] + [(36, 2003, 301, 724, "AHS", 6)]
    )
    rows = run(engine, years=(2003, 2004), countries=[("SVN", 705), ("ESP", 724), ("AUS", 36)])
    got = {(r[1], r[2], r[3]): r for r in rows}
    assert got[(705, 36, 2003)][8] is None and got[(705, 36, 2004)][8] == 3
    assert got[(724, 36, 2003)][8] == 3
    assert got[(705, 724, 2003)][10] is None and got[(705, 724, 2004)][10] == 0
    # Australia's rate to Spain (a member) is its EU partner rate; Slovenia is not yet a member.
    assert got[(36, 724, 2003)][9] == 6 and got[(36, 705, 2003)][9] is None
    assert got[(36, 705, 2004)][4] is None  # nothing for 2004, the 2003 rates were not Slovenia's


def test_assumed_tariff_precedence(engine: Engine) -> None:
    add_tariffs(
        engine,
        [
            (705, 2010, 401, 724, "AHS", 9),  # within the EU: 0 wins over the applied rate
            (705, 2010, 401, 0, "MFN", 12),
            (36, 2010, 401, 0, "MFN", 2),
            (36, 2010, 401, 705, "AHS", 3),  # applied wins over MFN
            (918, 2010, 401, 36, "AHS", 5),  # EU reporter rate for Spain and Slovenia
        ],
    )
    add_bound_rates(engine, [(36, 401, 50), (36, 402, 60)])
    rows = run(engine, years=(2010, 2010), countries=[("SVN", 705), ("ESP", 724), ("AUS", 36)])
    assumed = {(r[1], r[2]): r[4] for r in rows}
    assert assumed == {
        (705, 724): 0,
        (724, 705): 0,
        (36, 705): 3,  # applied
        (36, 724): 3,  # Australia's average towards EU members
        (705, 36): 5,  # the EU's rate before Slovenia's MFN
        (724, 36): 5,
    }
    bound = {(r[1], r[2]): r[7] for r in rows}
    assert bound[(36, 705)] == 50 and bound[(705, 36)] is None
    assert {r[11] for r in rows} == {7}  # the average of the two MFNs


def test_product_filter_and_countries_unknown_to_comtrade(engine: Engine) -> None:
    add_tariffs(engine, [(12, 2018, product, 76, "AHS", product / 100) for product in (201, 301, 401)])
    # 4 (Afghanistan) is not in the Comtrade list: it is not a country of the spine.
    countries = [("DZA", 12), ("BRA", 76), ("AFG", 4)]
    rows = run(engine, years=(2018, 2018), countries=countries, products=["0201", "401"])
    assert {(r[0], r[1], r[2]) for r in rows} == {
        (p, a, b) for p in (201, 401) for a, b in ((12, 76), (76, 12))
    }
    assert [r[4] for r in rows if r[1] == 12] == [2.01, 4.01]

    # A run without the filter replaces that L1 with every product.
    rows = run(engine, years=(2018, 2018), countries=countries)
    assert sorted({r[0] for r in rows}) == [201, 301, 401]

    with engine.begin() as conn, pytest.raises(TransformError, match="not a product code"):
        transform_tariffs(conn, products=["201", "hello"])
    with engine.begin() as conn, pytest.raises(TransformError, match="empty product list"):
        transform_tariffs(conn, products=[])


def test_batches_give_the_same_rows_and_ordered_ids(engine: Engine) -> None:
    add_tariffs(engine, [(12, 2018, product, 0, "MFN", product % 7) for product in range(100, 108)])
    countries = [("DZA", 12), ("BRA", 76), ("AGO", 24)]
    done: list[tuple[int, int]] = []
    with engine.begin() as conn:
        report = transform_tariffs(
            conn,
            years=(2017, 2018),
            countries=countries,
            products_per_batch=3,
            progress=lambda d, t: done.append((d, t)),
        )
    assert (report.rows, report.products, report.countries, report.batches) == (8 * 2 * 6, 8, 3, 3)
    assert done == [(1, 3), (2, 3), (3, 3)]
    with engine.connect() as conn:
        batched = l1_rows(conn)
        ids = (
            conn.execute(sa.text(f"SELECT id FROM {L1} ORDER BY product, reporter, partner, year"))
            .scalars()
            .all()
        )
    assert ids == list(range(1, len(batched) + 1))
    assert run(engine, years=(2017, 2018), countries=countries, products_per_batch=100) == batched


def test_swap_replaces_l1_and_failure_keeps_it(engine: Engine) -> None:
    add_tariffs(engine, [(12, 2018, 201, 76, "AHS", 1)])
    countries = [("DZA", 12), ("BRA", 76)]
    first = run(engine, years=(2018, 2018), countries=countries)
    assert len(first) == 2
    # A second run swaps again (names of the key and index are free once the old L1 is gone).
    add_tariffs(engine, [(12, 2018, 202, 76, "AHS", 2)])
    assert len(run(engine, years=(2018, 2018), countries=countries)) == 4

    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE "{COMTRADE.schema}"."L1"'))
    with engine.begin() as conn:
        with pytest.raises(TransformError, match="comtrade.country_code_and_iso L1"):
            transform_tariffs(conn, years=(2018, 2018), countries=countries)
        # The savepoint is gone; the caller's transaction goes on, with the previous L1.
        assert len(l1_rows(conn)) == 4
    with engine.connect() as conn:
        assert conn.execute(sa.text('SELECT to_regclass(\'"world_bank.tariff"."L1.temp"\')')).scalar() is None
        layout = conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'world_bank.tariff' AND table_name = 'L1' ORDER BY ordinal_position"
            )
        ).scalars()
        l1 = SOURCES["world_bank.tariff.transformed"].l1
        assert l1 is not None
        assert list(layout) == ["id", "data_source_row_id", *l1.column_names]


def test_default_years_and_countries(engine: Engine) -> None:
    # The legacy's list, cut down to the countries Comtrade knows here: DZA, AGO, AUS, BRA, ITA
    # (380), SVN, ZAF, ESP; the ISO3 is the list's, not Comtrade's (C380 here).
    add_tariffs(engine, [(12, 2000, 201, 24, "AHS", 10), (705, 2010, 201, 380, "AHS", 4)])
    with engine.begin() as conn:
        report = transform_tariffs(conn)
    assert (report.years, report.countries, report.products) == ((2000, 2018), 8, 1)
    assert report.rows == 19 * 8 * 7
    with engine.connect() as conn:
        rows = l1_rows(conn)
    assert rows[:2] == [
        (201, 12, 24, 2000, 10, 10, _, _, _, _, _, _),
        (201, 12, 24, 2001, 10, _, _, _, _, _, _, _),
    ]
    italy = {(r[1], r[2], r[3]): r for r in rows if 380 in (r[1], r[2])}
    # Slovenia and Italy are both members from 2004: the applied rate of 2010 yields to 0.
    assert italy[(705, 380, 2003)][10] is None and italy[(705, 380, 2004)][10] == 0
    assert italy[(705, 380, 2010)][4:7] == (0, 4, None)


def test_runner_for_the_loader(engine: Engine) -> None:
    add_tariffs(engine, [(12, 2018, 201, 76, "AHS", 1), (12, 2018, 301, 76, "AHS", 2)])
    counts = run_transform(engine, SOURCES["world_bank.tariff.transformed"], products=["301"])
    # The default list cut down to Comtrade's codes here: 8 countries, 56 pairs, 19 years.
    assert counts == {"rows": 56 * 19, "products": 1, "countries": 8, "batches": 1}
    with pytest.raises(TransformError):
        run_transform(engine, SOURCES["world_bank.tariff"])
