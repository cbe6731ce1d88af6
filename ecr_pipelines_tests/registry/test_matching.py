"""Tests of undertaking ↔ old-company matching: exact legacy rounding, blocking, VAT=EORI, run helpers."""

import random
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from rapidfuzz import fuzz, process

from ecr_pipelines.registry.matching import (
    auto_verify_all_ids,
    candidate_pool,
    companies_to_match,
    find_candidates,
    fuzz_threshold,
    match_rule,
    new_company_ids,
    noneu_auto_verify_ids,
    normalise_country,
    parse_domain_list,
    score_passes,
    scores_pass,
)


def pair_with_lcs(len_a: int, len_b: int, lcs: int) -> tuple[str, str]:
    """Two strings whose longest common subsequence is exactly ``lcs`` (ratio = 200*lcs/(la+lb))."""
    return "x" * lcs + "a" * (len_a - lcs), "x" * lcs + "b" * (len_b - lcs)


def legacy_passes(a: str, b: str, limit: int) -> bool:
    """The legacy test: ``thefuzz.fuzz.ratio(a, b) >= limit`` = ``int(round(rapidfuzz ratio)) >= limit``."""
    return int(round(fuzz.ratio(a, b))) >= limit


def frames(
    u_rows: list[tuple[int, str | None, str | None, str | None]],
    o_rows: list[tuple[int, str | None, str | None, str | None]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    u = pd.DataFrame(u_rows, columns=["id", "name", "country_code", "vat"])
    o = pd.DataFrame(o_rows, columns=["id", "name", "country_code", "eori"])
    return u, o


# --------------------------------------------------------------------------------------------------
# country normalisation


@pytest.mark.parametrize(
    ("code", "expected"),
    [("GB", "uk"), ("gb", "uk"), ("UK", "uk"), ("EL", "gr"), ("GR", "gr"), ("RO", "ro"), ("UK_GB", "uk_gb")],
)
def test_normalise_country(code: str, expected: str) -> None:
    assert normalise_country(code) == expected


@pytest.mark.parametrize("missing", [None, "", float("nan"), pd.NA])
def test_missing_country_is_none(missing: object) -> None:
    assert normalise_country(missing) is None


def test_country_rule_in_matching() -> None:
    assert match_rule("GB", None, "Acme", "uk", None, "ACME", 75) == "name"
    assert match_rule("EL", None, "Acme", "gr", None, "acme", 75) == "name"
    assert match_rule(None, None, "Acme", None, None, "acme", 75) == "name"  # None == None
    assert match_rule(None, None, "Acme", "ro", None, "acme", 75) is None
    assert match_rule("DE", None, "Acme", "AT", None, "acme", 75) is None


# --------------------------------------------------------------------------------------------------
# rounding boundary


@pytest.mark.parametrize(
    ("len_a", "len_b", "lcs", "score", "limit", "passes"),
    [
        (125, 125, 93, 74.4, 75, False),
        (200, 200, 149, 74.5, 75, False),  # half-to-even: 74.5 → 74
        (4, 4, 3, 75.0, 75, True),
        (200, 200, 151, 75.5, 75, True),  # 75.5 → 76
        (200, 200, 151, 75.5, 76, True),  # even limit: L - 0.5 rounds up to L
        (200, 200, 147, 73.5, 74, True),
        (200, 200, 149, 74.5, 74, True),
        (200, 200, 153, 76.5, 77, False),  # odd limit: L - 0.5 rounds down to L - 1
        (200, 200, 153, 76.5, 76, True),
        (125, 125, 93, 74.4, 74, True),
    ],
)
def test_exact_boundaries(len_a: int, len_b: int, lcs: int, score: float, limit: int, passes: bool) -> None:
    a, b = pair_with_lcs(len_a, len_b, lcs)
    assert fuzz.ratio(a, b) == score
    assert legacy_passes(a, b, limit) is passes
    assert score_passes(score, limit) is passes
    assert match_rule("RO", None, a, "ro", None, b, limit) == ("name" if passes else None)
    u, o = frames([(1, a, "RO", None)], [(2, b, "ro", None)])
    found = find_candidates(u, o, limit)
    assert len(found) == int(passes)
    if passes:
        assert found.loc[0, "score"] == score and found.loc[0, "rule"] == "name"


def test_decision_follows_rapidfuzz_float_not_exact_fraction() -> None:
    # lensum 80, LCS 17: exactly 42.5 on paper, but rapidfuzz returns 42.50000000000001, which the
    # legacy round() sends to 43. Integer recomputation would say 42; float32 cdist would say 42.5 → 42.
    a, b = pair_with_lcs(40, 40, 17)
    score = fuzz.ratio(a, b)
    assert Fraction(200 * 17, 80) == Fraction(85, 2) and score > 42.5
    assert round(float(np.float32(score))) == 42
    assert legacy_passes(a, b, 43)
    u, o = frames([(1, a, None, None)], [(2, b, None, None)])
    assert len(find_candidates(u, o, 43)) == 1
    # And the mirror case: 57.49999999999999 stays below the boundary.
    a, b = pair_with_lcs(40, 40, 23)
    assert not legacy_passes(a, b, 58)
    assert len(find_candidates(*frames([(1, a, None, None)], [(2, b, None, None)]), 58)) == 0


@pytest.mark.parametrize("limit", [0, 1, 2, 42, 43, 74, 75, 76, 99, 100])
def test_fuzz_threshold_equals_round(limit: int) -> None:
    threshold, inclusive = fuzz_threshold(limit)
    values = [limit - 0.5, limit - 1.0, limit - 1.5, float(limit), limit + 0.5]
    values += [np.nextafter(v, d) for v in list(values) for d in (-np.inf, np.inf)]
    rng = np.random.default_rng(limit)
    values += list(rng.uniform(limit - 2, limit + 2, 2000))
    for value in values:
        expected = round(float(value)) >= limit
        got = value >= threshold if inclusive else value > threshold
        assert got == expected, (limit, value)
        assert score_passes(float(value), limit) == expected
    assert list(scores_pass(np.array(values, dtype=np.float64), limit)) == [
        round(float(v)) >= limit for v in values
    ]


def test_numpy_round_matches_python_round() -> None:
    rng = np.random.default_rng(7)
    halves = np.arange(0, 201) / 2.0
    values = np.concatenate(
        [halves, np.nextafter(halves, -1), np.nextafter(halves, 200), rng.uniform(0, 100, 5000)]
    )
    assert list(np.round(values)) == [float(round(float(v))) for v in values]


def test_cdist_float64_is_bitwise_the_scalar_ratio() -> None:
    rng = random.Random(11)
    # Small alphabet and lengths summing to multiples of 4/8/40 make many exact .5 scores.
    a_list = ["".join(rng.choice("abc ") for _ in range(rng.randint(1, 40))) for _ in range(300)]
    b_list = ["".join(rng.choice("abc ") for _ in range(rng.randint(1, 40))) for _ in range(300)]
    matrix = process.cdist(a_list, b_list, scorer=fuzz.ratio, processor=None, dtype=np.float64)
    cut = process.cdist(
        a_list, b_list, scorer=fuzz.ratio, processor=None, dtype=np.float64, score_cutoff=40.0
    )
    halves = 0
    for i, a in enumerate(a_list):
        for j, b in enumerate(b_list):
            scalar = fuzz.ratio(a, b)
            assert matrix[i, j] == scalar
            assert cut[i, j] == (scalar if scalar >= 40.0 else 0.0)
            halves += scalar % 1 == 0.5
    assert halves > 100
    for limit in (41, 42, 75, 76):
        assert (scores_pass(matrix, limit) == (np.vectorize(lambda s: round(s))(matrix) >= limit)).all()


# --------------------------------------------------------------------------------------------------
# VAT == EORI and rule precedence


def test_vat_equals_eori() -> None:
    u, o = frames(
        [(1, "Totally Different", "DE", "DE123"), (2, "Acme", "DE", "de123"), (3, "Other", "FR", "DE123")],
        [(10, "Nothing Alike Corp", "de", "DE123"), (11, "", "de", "DE123")],
    )
    found = find_candidates(u, o, 75)
    assert found[["undertaking_id", "oldcompany_id", "rule"]].values.tolist() == [
        [1, 10, "vat_eori"],
        [1, 11, "vat_eori"],
    ]
    assert found.loc[1, "score"] == 0.0  # empty name: no similarity
    assert found.loc[0, "score"] == fuzz.ratio("totally different", "nothing alike corp")


def test_vat_eori_wins_over_name() -> None:
    u, o = frames([(1, "Acme Ltd", "IE", "IE1")], [(5, "ACME LTD", "ie", "IE1")])
    found = find_candidates(u, o, 75)
    assert found.values.tolist() == [[1, 5, 100.0, "vat_eori"]]
    assert match_rule("IE", "IE1", "Acme Ltd", "ie", "IE1", "ACME LTD", 75) == "vat_eori"


def test_empty_names_and_codes_never_match() -> None:
    u, o = frames([(1, "", "RO", ""), (2, None, "RO", None)], [(5, "", "ro", ""), (6, None, "ro", None)])
    assert find_candidates(u, o, 0).empty
    assert match_rule("RO", "", "", "ro", "", "", 0) is None


def test_empty_result_has_columns() -> None:
    u, o = frames([(1, "Acme", "RO", None)], [(5, "Zebra Works", "ro", None)])
    some = find_candidates(u, frames([], [(6, "acme", "ro", None)])[1], 75)
    for found in (
        find_candidates(u, o, 75),
        find_candidates(u.iloc[0:0], o, 75),
        find_candidates(u, o.iloc[0:0], 75),
    ):
        assert list(found.columns) == ["undertaking_id", "oldcompany_id", "score", "rule"]
        assert found.empty
        assert found.dtypes.to_dict() == some.dtypes.to_dict()


# --------------------------------------------------------------------------------------------------
# equivalence with the per-pair loop

_WORDS = [
    "polar", "cooling", "refriger", "frigo", "klima", "therm", "gas", "chem", "fluor", "halon",
    "nord", "sud", "euro", "trade", "import", "export", "tech", "service", "industri", "group",
]  # fmt: skip
_FORMS = [
    "ltd",
    "limited",
    "gmbh",
    "gmbh & co. kg",
    "s.r.l.",
    "srl",
    "bv",
    "b.v.",
    "sa",
    "s.a.",
    "oy",
    "ab",
    "",
]
_COUNTRIES = ["DE", "de", "RO", "GB", "uk", "UK", "EL", "gr", "IE", None, "", "NL", "UK_GB"]


def _company_name(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) + rng.choice(["", "s", "a", "o", "ex"]) for _ in range(rng.randint(1, 3))]
    name = " ".join(words) + " " + rng.choice(_FORMS)
    name = name.strip()
    roll = rng.random()
    if roll < 0.3:
        name = name.upper()
    elif roll < 0.5:
        name = name.title()
    elif roll < 0.52:
        name = ""
    return name


def _random_frames(seed: int, n_u: int, n_o: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = random.Random(seed)
    codes = [f"VAT{k}" for k in range(60)]

    def code() -> str | None:
        roll = rng.random()
        return rng.choice(codes) if roll < 0.15 else (None if roll < 0.6 else "")

    u_rows = [(i, _company_name(rng), rng.choice(_COUNTRIES), code()) for i in range(n_u)]
    o_rows = [(10_000 + j, _company_name(rng), rng.choice(_COUNTRIES), code()) for j in range(n_o)]
    return frames(u_rows, o_rows)


def _brute_force(u: pd.DataFrame, o: pd.DataFrame, limit: int) -> set[tuple[int, int, str]]:
    u_rows = list(u.itertuples(index=False))
    o_rows = list(o.itertuples(index=False))
    u_cc = [normalise_country(r.country_code) for r in u_rows]
    o_cc = [normalise_country(r.country_code) for r in o_rows]
    found: set[tuple[int, int, str]] = set()
    for i, ur in enumerate(u_rows):
        ua = (ur.name or "").lower()
        for j, orow in enumerate(o_rows):
            if u_cc[i] != o_cc[j]:
                continue
            if ur.vat and orow.eori and ur.vat == orow.eori:
                found.add((ur.id, orow.id, "vat_eori"))
                continue
            ob = (orow.name or "").lower()
            if ua and ob and int(round(fuzz.ratio(ua, ob))) >= limit:
                found.add((ur.id, orow.id, "name"))
    return found


@pytest.mark.parametrize("limit", [75, 76])
def test_find_candidates_equals_brute_force(limit: int) -> None:
    u, o = _random_frames(seed=limit, n_u=2000, n_o=1000)
    expected = _brute_force(u, o, limit)
    found = find_candidates(u, o, limit)
    got = set(zip(found["undertaking_id"], found["oldcompany_id"], found["rule"], strict=True))
    assert got == expected
    assert len(expected) > 500 and any(r == "vat_eori" for *_, r in expected)
    names_u = dict(zip(u["id"], u["name"], strict=True))
    names_o = dict(zip(o["id"], o["name"], strict=True))
    for uid, oid, score, rule in found.itertuples(index=False):
        a, b = (names_u[uid] or "").lower(), (names_o[oid] or "").lower()
        assert score == (fuzz.ratio(a, b) if a and b else 0.0)
        assert rule != "name" or round(score) >= limit


def test_chunking_does_not_change_the_result() -> None:
    u, o = _random_frames(seed=3, n_u=600, n_o=400)
    whole = find_candidates(u, o, 75)
    for max_cells in (1, 7, 500, 10_000):
        pd.testing.assert_frame_equal(find_candidates(u, o, 75, workers=1, max_cells=max_cells), whole)


# --------------------------------------------------------------------------------------------------
# domain settings and run order


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("FGAS, ODS", ["FGAS", "ODS"]),
        ("FGAS,ODS", ["FGAS", "ODS"]),
        (" fgas ,ods,", ["FGAS", "ODS"]),
        ("ODS,ODS", ["ODS"]),
        ("", []),
        (None, []),
        (" , ", []),
    ],
)
def test_parse_domain_list(value: str | None, expected: list[str]) -> None:
    assert parse_domain_list(value) == expected


def test_run_order_helpers() -> None:
    unverified = pd.DataFrame(
        [
            (1, "FGAS", False, "NONEU_TYPE"),
            (2, "FGAS", True, "NONEU_TYPE"),
            (3, "FGAS", False, "EU_TYPE"),
            (4, "ODS", False, "NONEU_TYPE"),
            (5, "ODS", False, "EU_TYPE"),
        ],
        columns=["id", "domain", "has_representative", "country_type"],
    )
    step1 = noneu_auto_verify_ids(unverified)
    assert step1 == [1]
    step2 = auto_verify_all_ids(unverified, ["ODS"])
    assert step2 == [4, 5]
    assert auto_verify_all_ids(unverified, []) == []
    to_match = companies_to_match(unverified, ["FGAS", "ODS"], step1 + step2)
    assert to_match["id"].tolist() == [2, 3]

    old = pd.DataFrame(
        [
            (10, True, False, "FGAS"),
            (11, False, False, "FGAS"),
            (12, True, True, "ODS"),
            (13, True, False, "ods "),
        ],
        columns=["id", "valid", "taken", "obligation"],
    )
    assert candidate_pool(old, ["FGAS", "ODS"])["id"].tolist() == [10, 13]
    assert candidate_pool(old, ["FGAS"])["id"].tolist() == [10]

    candidates = pd.DataFrame(
        {"undertaking_id": [2], "oldcompany_id": [10], "score": [90.0], "rule": ["name"]}
    )
    assert new_company_ids(to_match, candidates, ["FGAS"]) == [3]
    assert new_company_ids(to_match, candidates, []) == []
    assert new_company_ids(to_match, candidates.iloc[0:0], ["FGAS"]) == [2, 3]
