"""The World Bank tariff transform (``world_bank.tariff.transformed``), Dagster-free: the
assumed tariff of every product, reporter, partner and year, computed in SQL from the L0/L1
tables of the other sources of its group and swapped in as ``"world_bank.tariff"."L1"``.

What it computes: the legacy's rules. Its final transform code (with ``eu_eu_rate`` and numeric
codes) is not in the code index, only the version before it and the final version's tests; the
rules below are that code's, changed where the final tests say so (those tests pass here, as
``test_transform``'s "legacy cases").

* countries: ``required_countries`` is the legacy's fixed list of (ISO3, numeric code) pairs;
  ``country_dictionary`` keeps those whose numeric code the Comtrade list knows (its ISO3 stays
  the list's: the EU membership table is keyed by ISO3). That Comtrade filter is inferred from
  the final tests (a country missing from their Comtrade rows is missing from the L1).
  Reporters and partners are numeric codes, as in the tariff files and in the legacy's final L1.
* ``spine``: every product found in the tariff L0 (or the ones asked for) × every year from
  2000 to 2018 × every ordered pair of dictionary countries of different ISO3. Every spine row
  is an output row, with or without data.
* ``all_tariffs``: the tariff L0 of those years averaged per (product, year, reporter, partner)
  into ``app_rate`` (duty type AHS) and ``mfn_rate`` (MFN). An MFN is reported against the world
  (partner 0) and holds for every partner: ``tariffs_with_world_partner_rates``.
* ``eu_countries``: the dictionary countries the EU membership table marks ``EUN`` in a year.
  ``eu_reporter_rates``: a rate the EU (reporter 918) applies to a partner holds for every member
  of that year (``eu_rep_rate``, the partner itself excepted). ``eu_partner_rates``: a reporter's
  average AHS towards EU members holds towards every member (``eu_part_rate``).
  ``eu_eu_rate`` is 0 when reporter and partner are both members that year.
* ``bnd_rate``: the bound rate of the reporter and product (every partner and year).
* ``world_average``: the average MFN of the product in the year, over the reporters that have
  one (NULL in a year without any).
* ``ahs = coalesce(app_rate, eu_rep_rate, eu_part_rate)``; ``ahs`` and ``mfn_rate`` are carried
  forward over the years of each (product, reporter, partner), across any number of missing
  years, but only from years of the range (2000 on); ``assumed_tariff = coalesce(eu_eu_rate,
  ahs filled, mfn filled, world_average)``. The world average is not carried forward. Every rate
  is rounded to 3 decimals.

How, and where it differs from the legacy:

* Set-based: the legacy's materialised views are temporary tables here (dropped at commit, so
  no stale view outlives a run), and the rows are computed by one ``INSERT .. SELECT`` per batch
  of products, with window functions for the forward fill, instead of a 10-thread pool running
  one statement per product on connections of their own. Batches bound the size of each
  statement's sorts; they are not a unit of commit.
* One transaction: the caller's (inside a savepoint). The new rows go to
  ``"world_bank.tariff"."L1.temp"``, which then replaces ``"L1"`` (drop, rename); a failure
  leaves the previous L1 as it was. The legacy's ``--continue`` resumed a run that had died
  half-way, keeping the products already in ``L1.temp`` (each product was committed on its own
  connection, and a full run took hours). Here nothing of a failed run survives, so there is
  nothing to resume: ``--continue`` is not needed and not kept. ``products`` is kept: as in the
  legacy, L1 then holds only those products (a way to try the transform on a few products).
  An invalid product code is an error (the legacy ignored the whole option).
* ``world_average`` is averaged over reporters rather than over spine rows; the two agree
  except when a country appears under two codes (the legacy's list has France and Italy twice).
* Duplicate tariff rows (a file loaded twice) are averaged; so are bound rates of several
  snapshots for the same reporter and product, as the legacy's final ``avg`` did.
* The L1 ``id`` follows (product, reporter, partner, year) and has no sequence (nothing inserts
  into this table but the transform); ``data_source_row_id`` stays NULL (no source row).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.datastore.sources import SOURCES, SourceSpec

SOURCE_ID = "world_bank.tariff.transformed"
L1_TABLE = "L1"
L1_TEMP_TABLE = "L1.temp"
# The legacy's year range, both ends included.
YEARS = (2000, 2018)
# WITS codes for the European Union as a reporter and for the world as a partner.
EU_REPORTER = 918
WORLD_PARTNER = 0
# Products per INSERT: with the full country list a product is 19 years × 184 × 183 pairs, about
# 640 000 rows.
PRODUCTS_PER_BATCH = 20

# The legacy's required countries: ISO3 and the numeric code the tariff files use. France and
# Italy appear under two codes each, as in the legacy's list.
REQUIRED_COUNTRIES: tuple[tuple[str, int], ...] = (
    ("ABW", 533), ("AFG", 4), ("AGO", 24), ("ALB", 8), ("ARE", 784), ("ARG", 32), ("ARM", 51),
    ("ATG", 28), ("AUS", 36), ("AUT", 40), ("AZE", 31), ("BDI", 108), ("BEL", 56), ("BEN", 204),
    ("BFA", 854), ("BGD", 50), ("BGR", 100), ("BHR", 48), ("BHS", 44), ("BIH", 70), ("BLR", 112),
    ("BLZ", 84), ("BOL", 68), ("BRA", 76), ("BRB", 52), ("BRN", 96), ("BTN", 64), ("CAF", 140),
    ("CAN", 124), ("CHE", 756), ("CHL", 152), ("CHN", 156), ("CIV", 384), ("CMR", 120),
    ("COD", 180), ("COG", 178), ("COL", 170), ("COM", 174), ("CPV", 132), ("CRI", 188),
    ("CYP", 196), ("CZE", 203), ("DEU", 276), ("DJI", 262), ("DMA", 212), ("DNK", 208),
    ("DOM", 214), ("DZA", 12), ("ECU", 218), ("EGY", 818), ("ERI", 232), ("ESP", 724),
    ("EST", 233), ("ETH", 231), ("FIN", 246), ("FJI", 242), ("FRA", 250), ("FRA", 251),
    ("FSM", 583), ("GAB", 266), ("GBR", 826), ("GEO", 268), ("GHA", 288), ("GIN", 324),
    ("GMB", 270), ("GNB", 624), ("GNQ", 226), ("GRC", 300), ("GRD", 308), ("GTM", 320),
    ("GUY", 328), ("HKG", 344), ("HND", 340), ("HRV", 191), ("HTI", 332), ("HUN", 348),
    ("IDN", 360), ("IND", 699), ("IRL", 372), ("IRN", 364), ("IRQ", 368), ("ISL", 352),
    ("ISR", 376), ("ITA", 381), ("ITA", 380), ("JAM", 388), ("JOR", 400), ("JPN", 392),
    ("KAZ", 398), ("KEN", 404), ("KGZ", 417), ("KHM", 116), ("KIR", 296), ("KNA", 659),
    ("KOR", 410), ("KWT", 414), ("LAO", 418), ("LBN", 422), ("LBR", 430), ("LBY", 434),
    ("LCA", 662), ("LKA", 144), ("LTU", 440), ("LVA", 428), ("MAC", 446), ("MAR", 504),
    ("MDA", 498), ("MDG", 450), ("MDV", 462), ("MEX", 484), ("MHL", 584), ("MKD", 807),
    ("MLI", 466), ("MLT", 470), ("MMR", 104), ("MNG", 496), ("MOZ", 508), ("MRT", 478),
    ("MUS", 480), ("MWI", 454), ("MYS", 458), ("NER", 562), ("NGA", 566), ("NIC", 558),
    ("NLD", 528), ("NOR", 579), ("NPL", 524), ("NRU", 520), ("NZL", 554), ("OMN", 512),
    ("PAK", 586), ("PAN", 591), ("PER", 604), ("PHL", 608), ("PLW", 585), ("PNG", 598),
    ("POL", 616), ("PRT", 620), ("PRY", 600), ("QAT", 634), ("ROU", 642), ("RUS", 643),
    ("RWA", 646), ("SAU", 682), ("SDN", 729), ("SEN", 686), ("SGP", 702), ("SLB", 90),
    ("SLE", 694), ("SLV", 222), ("SMR", 674), ("SOM", 706), ("STP", 678), ("SUR", 740),
    ("SVK", 703), ("SVN", 705), ("SWE", 752), ("SYC", 690), ("TCD", 148), ("TGO", 768),
    ("THA", 764), ("TJK", 762), ("TKM", 795), ("TON", 776), ("TTO", 780), ("TUN", 788),
    ("TUR", 792), ("TUV", 798), ("TWN", 490), ("TZA", 834), ("UGA", 800), ("UKR", 804),
    ("URY", 858), ("USA", 842), ("UZB", 860), ("VCT", 670), ("VEN", 862), ("VNM", 704),
    ("VUT", 548), ("WSM", 882), ("YEM", 887), ("ZAF", 710), ("ZMB", 894), ("ZWE", 716),
)  # fmt: skip

# The legacy's view names, here temporary tables of the transaction.
WORK_TABLES = (
    "required_countries",
    "country_dictionary",
    "years",
    "products",
    "pairs",
    "all_tariffs",
    "eu_countries",
    "eu_reporter_rates",
    "eu_partner_rates",
    "tariffs_with_world_partner_rates",
    "world_averages",
    "bound_rates",
)


class TransformError(Exception):
    """The transform cannot run (an input table is missing, a bad option); nothing changed."""


@dataclass(frozen=True)
class TransformReport:
    """``target`` the L1 replaced, ``rows`` written, ``products`` and ``countries`` (codes) of
    the spine, the ``years`` range, the INSERTs run (``batches``) and the product filter."""

    target: str
    rows: int
    products: int
    countries: int
    years: tuple[int, int]
    batches: int
    product_filter: tuple[int, ...] | None


@dataclass(frozen=True)
class _Inputs:
    tariff: str
    bound_rates: str
    eu_membership: str
    comtrade: str


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str, table: str) -> str:
    return f"{_quote(schema)}.{_quote(table)}"


def _inputs() -> _Inputs:
    def table(source_id: str, name: str) -> str:
        return _qualified(SOURCES[source_id].schema, name)

    return _Inputs(
        tariff=table("world_bank.tariff", "L0"),
        bound_rates=table("world_bank.bound_rates", "L1"),
        eu_membership=table("dit.eu_country_membership", "L1"),
        comtrade=table("comtrade.country_code_and_iso", "L1"),
    )


def _product_codes(products: Sequence[str] | None) -> tuple[int, ...] | None:
    if products is None:
        return None
    codes = []
    for product in products:
        text = str(product).strip()
        if not text.isdigit():
            raise TransformError(f"product {product!r} is not a product code (digits only)")
        codes.append(int(text))
    if not codes:
        raise TransformError("an empty product list selects nothing; give None for every product")
    return tuple(sorted(set(codes)))


def _exec(conn: Connection, sql: str, **params: object) -> int:
    return conn.execute(sa.text(sql), params).rowcount


def _check_inputs(conn: Connection, inputs: _Inputs) -> None:
    names = {
        "world_bank.tariff L0": inputs.tariff,
        "world_bank.bound_rates L1": inputs.bound_rates,
        "dit.eu_country_membership L1": inputs.eu_membership,
        "comtrade.country_code_and_iso L1": inputs.comtrade,
    }
    missing = [
        label
        for label, table in names.items()
        if conn.execute(sa.text("SELECT to_regclass(:name)"), {"name": table}).scalar() is None
    ]
    if missing:
        raise TransformError(f"load these sources before the transform: {', '.join(missing)} (table missing)")


def _build_work_tables(
    conn: Connection,
    inputs: _Inputs,
    *,
    countries: Sequence[tuple[str, int]],
    years: tuple[int, int],
    products: tuple[int, ...] | None,
    products_per_batch: int,
) -> None:
    for name in WORK_TABLES:
        _exec(conn, f'DROP TABLE IF EXISTS pg_temp."{name}"')

    _exec(
        conn,
        "CREATE TEMP TABLE required_countries (iso3 text NOT NULL, iso_num integer NOT NULL) ON COMMIT DROP",
    )
    _exec(
        conn,
        "INSERT INTO required_countries SELECT * FROM unnest(CAST(:iso3 AS text[]), CAST(:codes AS integer[]))",
        iso3=[iso3 for iso3, _ in countries],
        codes=[code for _, code in countries],
    )
    # The codes Comtrade does not know are left out: they are not countries of the tariff data.
    _exec(
        conn,
        f"""
        CREATE TEMP TABLE country_dictionary ON COMMIT DROP AS
        SELECT DISTINCT ON (r.iso_num) r.iso_num, r.iso3
        FROM required_countries r
        WHERE EXISTS (SELECT 1 FROM {inputs.comtrade} c WHERE c.cty_code = r.iso_num)
        ORDER BY r.iso_num, r.iso3
        """,
    )
    _exec(
        conn,
        "CREATE TEMP TABLE years ON COMMIT DROP AS SELECT generate_series(:first, :last) AS year",
        first=years[0],
        last=years[1],
    )
    # Products and country pairs are numbered in code order: with the year they give each L1
    # row its id, so that ids follow (product, reporter, partner, year) without a sort.
    _exec(
        conn,
        f"""
        CREATE TEMP TABLE products ON COMMIT DROP AS
        SELECT product, position, position / :per_batch AS batch
        FROM (SELECT product, row_number() OVER (ORDER BY product) - 1 AS position FROM (
            SELECT DISTINCT product FROM {inputs.tariff}
            WHERE product IS NOT NULL AND (CAST(:codes AS integer[]) IS NULL OR product = ANY(:codes))
        ) found) numbered
        """,
        per_batch=products_per_batch,
        codes=list(products) if products is not None else None,
    )
    _exec(
        conn,
        """
        CREATE TEMP TABLE pairs ON COMMIT DROP AS
        SELECT r.iso_num AS reporter, q.iso_num AS partner,
            row_number() OVER (ORDER BY r.iso_num, q.iso_num) - 1 AS position
        FROM country_dictionary r
        CROSS JOIN country_dictionary q
        WHERE r.iso3 <> q.iso3
        """,
    )
    _exec(
        conn,
        f"""
        CREATE TEMP TABLE all_tariffs ON COMMIT DROP AS
        SELECT t.product, t.year, t.reporter, t.partner,
            avg(t.simple_average) FILTER (WHERE t.duty_type = 'AHS') AS app_rate,
            avg(t.simple_average) FILTER (WHERE t.duty_type = 'MFN') AS mfn_rate
        FROM {inputs.tariff} t
        JOIN products p ON p.product = t.product
        WHERE t.year BETWEEN :first AND :last AND t.duty_type IN ('AHS', 'MFN')
        GROUP BY t.product, t.year, t.reporter, t.partner
        """,
        first=years[0],
        last=years[1],
    )
    _exec(
        conn,
        f"""
        CREATE TEMP TABLE eu_countries ON COMMIT DROP AS
        SELECT DISTINCT d.iso_num, e.year
        FROM {inputs.eu_membership} e
        JOIN country_dictionary d ON d.iso3 = e.iso3
        WHERE e.tariff_code = 'EUN' AND e.year BETWEEN :first AND :last
        """,
        first=years[0],
        last=years[1],
    )
    _exec(
        conn,
        """
        CREATE TEMP TABLE eu_reporter_rates ON COMMIT DROP AS
        SELECT t.product, t.year, m.iso_num AS reporter, t.partner, t.app_rate AS eu_rep_rate
        FROM all_tariffs t
        JOIN country_dictionary p ON p.iso_num = t.partner
        JOIN eu_countries m ON m.year = t.year
        JOIN country_dictionary r ON r.iso_num = m.iso_num
        WHERE t.reporter = :eu AND t.app_rate IS NOT NULL AND r.iso3 <> p.iso3
        """,
        eu=EU_REPORTER,
    )
    _exec(
        conn,
        """
        CREATE TEMP TABLE eu_partner_rates ON COMMIT DROP AS
        SELECT t.product, t.year, t.reporter, avg(t.app_rate) AS eu_part_rate
        FROM all_tariffs t
        JOIN country_dictionary r ON r.iso_num = t.reporter
        JOIN country_dictionary p ON p.iso_num = t.partner
        JOIN eu_countries m ON m.iso_num = t.partner AND m.year = t.year
        WHERE t.app_rate IS NOT NULL AND r.iso3 <> p.iso3
        GROUP BY t.product, t.year, t.reporter
        """,
    )
    _exec(
        conn,
        """
        CREATE TEMP TABLE tariffs_with_world_partner_rates ON COMMIT DROP AS
        SELECT t.product, t.year, t.reporter, t.mfn_rate
        FROM all_tariffs t
        JOIN country_dictionary r ON r.iso_num = t.reporter
        WHERE t.partner = :world AND t.mfn_rate IS NOT NULL
        """,
        world=WORLD_PARTNER,
    )
    _exec(
        conn,
        """
        CREATE TEMP TABLE world_averages ON COMMIT DROP AS
        SELECT product, year, avg(mfn_rate) AS world_average
        FROM tariffs_with_world_partner_rates
        GROUP BY product, year
        """,
    )
    _exec(
        conn,
        f"""
        CREATE TEMP TABLE bound_rates ON COMMIT DROP AS
        SELECT b.reporter, b.product, avg(b.bound_rate) AS bnd_rate
        FROM {inputs.bound_rates} b
        JOIN country_dictionary r ON r.iso_num = b.reporter
        JOIN products p ON p.product = b.product
        GROUP BY b.reporter, b.product
        """,
    )
    # Every batch reads these by product; temporary tables get no statistics unless asked.
    per_product = (
        "all_tariffs",
        "eu_reporter_rates",
        "eu_partner_rates",
        "tariffs_with_world_partner_rates",
        "world_averages",
        "bound_rates",
    )
    _exec(conn, "CREATE INDEX ON products (batch)")
    for name in per_product:
        _exec(conn, f"CREATE INDEX ON {name} (product)")
    for name in WORK_TABLES:
        _exec(conn, f"ANALYZE {name}")


def _target_columns(spec: SourceSpec) -> list[tuple[str, str]]:
    if spec.l1 is None or not spec.l1.computed:
        raise TransformError(f"{spec.id} is not a computed source")
    return [(column.name, column.type) for column in spec.l1.columns]


# The rates of one batch's spine rows (each work table read for the batch's products only),
# then the forward fill: over the years so far, the values seen are collected and the last one
# taken (``count`` of them is its position). A pair has at most 19 years, so the arrays stay
# small, and every window shares one sort.
_BATCH_INSERT = """
INSERT INTO {target} (id, {columns})
WITH batch AS (
    SELECT product, position FROM products WHERE batch = :batch
), spine AS (
    SELECT b.product, y.year, pr.reporter, pr.partner,
        ((b.position * :pair_count + pr.position) * :year_count + y.year - :first_year) + 1 AS id
    FROM batch b
    CROSS JOIN years y
    CROSS JOIN pairs pr
), tariffs_with_eu_reporter_rates AS (
    SELECT s.id, s.product, s.year, s.reporter, s.partner, a.app_rate, e.eu_rep_rate,
        mr.iso_num IS NOT NULL AS eu_rep, mp.iso_num IS NOT NULL AS eu_part
    FROM spine s
    LEFT JOIN (SELECT * FROM all_tariffs WHERE product IN (SELECT product FROM batch)) a
        ON a.product = s.product AND a.year = s.year AND a.reporter = s.reporter AND a.partner = s.partner
    LEFT JOIN (SELECT * FROM eu_reporter_rates WHERE product IN (SELECT product FROM batch)) e
        ON e.product = s.product AND e.year = s.year AND e.reporter = s.reporter AND e.partner = s.partner
    LEFT JOIN eu_countries mr ON mr.iso_num = s.reporter AND mr.year = s.year
    LEFT JOIN eu_countries mp ON mp.iso_num = s.partner AND mp.year = s.year
), rates AS (
    SELECT t.id, t.product, t.year, t.reporter, t.partner, t.app_rate, w.mfn_rate, b.bnd_rate,
        t.eu_rep_rate,
        CASE WHEN t.eu_part THEN ep.eu_part_rate END AS eu_part_rate,
        CASE WHEN t.eu_rep AND t.eu_part THEN 0 END AS eu_eu_rate,
        wa.world_average
    FROM tariffs_with_eu_reporter_rates t
    LEFT JOIN (SELECT * FROM tariffs_with_world_partner_rates WHERE product IN (SELECT product FROM batch)) w
        ON w.product = t.product AND w.year = t.year AND w.reporter = t.reporter
    LEFT JOIN (SELECT * FROM bound_rates WHERE product IN (SELECT product FROM batch)) b
        ON b.product = t.product AND b.reporter = t.reporter
    LEFT JOIN (SELECT * FROM eu_partner_rates WHERE product IN (SELECT product FROM batch)) ep
        ON ep.product = t.product AND ep.year = t.year AND ep.reporter = t.reporter
    LEFT JOIN (SELECT * FROM world_averages WHERE product IN (SELECT product FROM batch)) wa
        ON wa.product = t.product AND wa.year = t.year
), with_ahs AS (
    SELECT r.*, coalesce(r.app_rate, r.eu_rep_rate, r.eu_part_rate) AS ahs FROM rates r
), filled AS (
    SELECT a.*,
        (array_agg(a.ahs) FILTER (WHERE a.ahs IS NOT NULL) OVER years_so_far)[count(a.ahs) OVER years_so_far]
            AS ahs_filled,
        (array_agg(a.mfn_rate) FILTER (WHERE a.mfn_rate IS NOT NULL) OVER years_so_far)[
            count(a.mfn_rate) OVER years_so_far
        ] AS mfn_filled
    FROM with_ahs a
    WINDOW years_so_far AS (PARTITION BY a.product, a.reporter, a.partner ORDER BY a.year)
)
SELECT id, {values}
FROM filled
"""

# How each output column is computed from ``filled``.
_OUTPUT = {
    "product": "product",
    "reporter": "reporter",
    "partner": "partner",
    "year": "year",
    "assumed_tariff": "round(coalesce(eu_eu_rate, ahs_filled, mfn_filled, world_average), 3)",
    "app_rate": "round(app_rate, 3)",
    "mfn_rate": "round(mfn_rate, 3)",
    "bnd_rate": "round(bnd_rate, 3)",
    "eu_rep_rate": "round(eu_rep_rate, 3)",
    "eu_part_rate": "round(eu_part_rate, 3)",
    "eu_eu_rate": "round(eu_eu_rate, 3)",
    "world_average": "round(world_average, 3)",
}


def _fill_target(
    conn: Connection,
    target: str,
    columns: list[tuple[str, str]],
    years: tuple[int, int],
    batches: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    unknown = [name for name, _ in columns if name not in _OUTPUT]
    if unknown:
        raise TransformError(f"no rule computes the L1 columns {unknown}")
    names = ", ".join(f'"{name}"' for name, _ in columns)
    values = ", ".join(f"CAST({_OUTPUT[name]} AS {sql_type})" for name, sql_type in columns)
    statement = _BATCH_INSERT.format(target=target, columns=names, values=values)
    numbering = {
        "pair_count": conn.execute(sa.text("SELECT count(*) FROM pairs")).scalar_one(),
        "year_count": years[1] - years[0] + 1,
        "first_year": years[0],
    }
    rows = 0
    for batch in range(batches):
        rows += _exec(conn, statement, batch=batch, **numbering)
        if progress is not None:
            progress(batch + 1, batches)
    return rows


def transform_tariffs(
    conn: Connection,
    *,
    products: Sequence[str] | None = None,
    years: tuple[int, int] = YEARS,
    countries: Sequence[tuple[str, int]] = REQUIRED_COUNTRIES,
    products_per_batch: int = PRODUCTS_PER_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> TransformReport:
    """Compute the transformed tariffs and make them ``"world_bank.tariff"."L1"``, in the
    caller's transaction (inside a savepoint: on failure the previous L1 stays).

    ``products`` (codes such as ``"201"`` or ``"0201"``) limits the run to those products, and
    L1 then holds only them; ``years`` and ``countries`` replace the legacy's fixed range and
    country list (tests, a later range); ``progress(done, total)`` is called after each batch.
    """
    if years[0] > years[1]:
        raise TransformError(f"the year range {years} is empty")
    if products_per_batch < 1:
        raise TransformError("products_per_batch must be at least 1")
    codes = _product_codes(products)
    spec = SOURCES[SOURCE_ID]
    columns = _target_columns(spec)
    inputs = _inputs()
    target = _qualified(spec.schema, L1_TABLE)
    temp = _qualified(spec.schema, L1_TEMP_TABLE)
    with conn.begin_nested():
        _check_inputs(conn, inputs)
        _build_work_tables(
            conn,
            inputs,
            countries=countries,
            years=years,
            products=codes,
            products_per_batch=products_per_batch,
        )
        product_count = conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one()
        country_count = conn.execute(sa.text("SELECT count(*) FROM country_dictionary")).scalar_one()
        batches = -(-product_count // products_per_batch)

        _exec(conn, f"CREATE SCHEMA IF NOT EXISTS {_quote(spec.schema)}")
        _exec(conn, f"DROP TABLE IF EXISTS {temp}")
        definitions = ", ".join(f'"{name}" {sql_type}' for name, sql_type in columns)
        _exec(conn, f"CREATE TABLE {temp} (id bigint NOT NULL, data_source_row_id integer, {definitions})")
        rows = _fill_target(conn, temp, columns, years, batches, progress)

        # The swap: readers of L1 see the old rows until the caller commits.
        _exec(conn, f"DROP TABLE IF EXISTS {target}")
        _exec(conn, f'ALTER TABLE {temp} RENAME TO "{L1_TABLE}"')
        # Named after the final table, and built once the rows are in (cheaper than row by row).
        _exec(conn, f'ALTER TABLE {target} ADD CONSTRAINT "{L1_TABLE}_pkey" PRIMARY KEY (id)')
        _exec(
            conn,
            f'CREATE INDEX "{L1_TABLE}_product_reporter_partner_year_idx" '
            f"ON {target} (product, reporter, partner, year)",
        )
    return TransformReport(
        target=target,
        rows=rows,
        products=product_count,
        countries=country_count,
        years=years,
        batches=batches,
        product_filter=codes,
    )


def run_transform(
    engine: Engine,
    spec: SourceSpec,
    *,
    products: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """The loader's runner for this source (``load.SOURCE_RUNNERS``' signature): the transform in
    a transaction of its own, and its counts for the run's report."""
    if spec.id != SOURCE_ID:
        raise TransformError(f"{spec.id} is not {SOURCE_ID}")
    with engine.begin() as conn:
        # As the legacy: a full run takes hours, whatever the server's default limit.
        conn.execute(sa.text("SET LOCAL statement_timeout = '20h'"))
        report = transform_tariffs(conn, products=products, progress=progress)
    return {
        "rows": report.rows,
        "products": report.products,
        "countries": report.countries,
        "batches": report.batches,
    }
