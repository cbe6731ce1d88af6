"""Matching of registry undertakings with legacy BDR "old companies" (pure, vectorised).

A pair (undertaking u, old company o) is a candidate when their normalised countries are equal
(two missing countries are equal) and either ``u.vat == o.eori`` (both non-empty, exact) — rule
``"vat_eori"`` — or both lower-cased names are non-empty and
``round(rapidfuzz.fuzz.ratio(a, b)) >= fuzz_limit`` with Python's half-to-even ``round`` — rule
``"name"``. That is exactly the legacy ``thefuzz.fuzz.ratio(a, b) >= FUZZ_LIMIT`` test.

Exactness notes (why the code looks the way it does):

* The decision is taken on rapidfuzz's own float64 score, not on a recomputed fraction.
  rapidfuzz computes ``100 * (1 - dist / lensum)``, which is not always the exact rational
  ``200 * M / lensum``: e.g. lensum 80, LCS 17 gives 42.50000000000001 (legacy rounds to 43) where
  the exact value 42.5 would round to 42. Recomputing on integers would therefore *disagree* with
  the legacy service on such pairs.
* ``cdist`` returns float32 by default; casting 42.50000000000001 to float32 gives 42.5 and flips
  the decision, so every matrix is requested as float64. ``cdist(dtype=float64)`` yields the very
  same bits as the scalar ``fuzz.ratio`` (checked by the tests), and ``numpy.round`` rounds half
  to even on the exact float64 value just like Python's ``round``.
* A ``score_cutoff`` one point below the limit lets rapidfuzz skip hopeless pairs; any score it
  zeroes is below ``limit - 0.5`` and would fail anyway.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from rapidfuzz import fuzz, process

RULE_VAT_EORI = "vat_eori"
RULE_NAME = "name"
DEFAULT_FUZZ_LIMIT = 75
# Cells of one float64 score matrix computed at once (~32 MB); bounds memory on huge blocks.
DEFAULT_MAX_CELLS = 4_000_000
_COUNTRY_ALIASES = {"gb": "uk", "el": "gr"}
# Block key of "no country": normalise_country never returns "" so it cannot collide.
_NO_COUNTRY = ""
_RESULT_COLUMNS = ["undertaking_id", "oldcompany_id", "score", "rule"]


# --------------------------------------------------------------------------------------------------
# scalar rules


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def normalise_country(code: Any) -> str | None:
    """Country code as matching compares it: lower-case, ``gb``→``uk``, ``el``→``gr``; missing → None.

    Only those two aliases are folded (legacy rule): ``uk_gb`` stays ``uk_gb``.
    """
    if _is_missing(code):
        return None
    text = str(code).lower()
    if not text:
        return None
    return _COUNTRY_ALIASES.get(text, text)


def _text(value: Any) -> str:
    return "" if _is_missing(value) else str(value)


def fuzz_threshold(limit: int) -> tuple[float, bool]:
    """``(threshold, inclusive)`` equivalent to ``round(score) >= limit`` for a float ``score``.

    ``score >= threshold`` when ``inclusive`` else ``score > threshold``; threshold is
    ``limit - 0.5``, inclusive for even limits (``L - 0.5`` rounds half-to-even up to ``L``) and
    exclusive for odd ones (74.5 rounds down to 74, failing limit 75).
    """
    return float(limit) - 0.5, limit % 2 == 0


def score_passes(score: float, limit: int) -> bool:
    """The legacy name test on one rapidfuzz score: ``round(score) >= limit``."""
    return round(score) >= limit


def scores_pass(scores: np.ndarray, limit: int) -> np.ndarray:
    """Vectorised :func:`score_passes` (numpy rounds half to even, like Python)."""
    return np.round(np.asarray(scores, dtype=np.float64)) >= limit


def match_rule(
    u_country: Any,
    u_vat: Any,
    u_name: Any,
    o_country: Any,
    o_eori: Any,
    o_name: Any,
    fuzz_limit: int,
) -> str | None:
    """Candidate rule of one pair (``"vat_eori"``, ``"name"`` or None); the per-pair reference.

    ``u_country`` is the undertaking's *derived* country code.
    """
    if normalise_country(u_country) != normalise_country(o_country):
        return None
    vat, eori = _text(u_vat), _text(o_eori)
    if vat and eori and vat == eori:
        return RULE_VAT_EORI
    a, b = _text(u_name).lower(), _text(o_name).lower()
    if a and b and score_passes(fuzz.ratio(a, b, processor=None), fuzz_limit):
        return RULE_NAME
    return None


# --------------------------------------------------------------------------------------------------
# vectorised candidate search


def _prepare(frame: pd.DataFrame, code_column: str) -> pd.DataFrame:
    missing = {"id", "name", "country_code", code_column} - set(frame.columns)
    if missing:
        raise KeyError(f"missing columns: {sorted(missing)}")
    # Explicit object dtype: an empty list would otherwise become float64 and break the merge.
    return pd.DataFrame(
        {
            "id": frame["id"].to_numpy(),
            "name": pd.Series([_text(v).lower() for v in frame["name"].tolist()], dtype=object),
            "block": pd.Series(
                [normalise_country(v) or _NO_COUNTRY for v in frame["country_code"].tolist()], dtype=object
            ),
            "code": pd.Series([_text(v) for v in frame[code_column].tolist()], dtype=object),
        }
    )


def _name_pairs(
    u_ids: np.ndarray,
    u_names: list[str],
    o_ids: np.ndarray,
    o_names: list[str],
    limit: int,
    workers: int,
    max_cells: int,
) -> list[pd.DataFrame]:
    cutoff = float(limit - 1) if limit > 1 else None
    col_step = max(1, min(len(o_names), max_cells))
    row_step = max(1, max_cells // col_step)
    found: list[pd.DataFrame] = []
    for c0 in range(0, len(o_names), col_step):
        cols = o_names[c0 : c0 + col_step]
        for r0 in range(0, len(u_names), row_step):
            scores = process.cdist(
                u_names[r0 : r0 + row_step],
                cols,
                scorer=fuzz.ratio,
                processor=None,
                score_cutoff=cutoff,
                dtype=np.float64,
                workers=workers,
            )
            rows, hits = np.nonzero(scores_pass(scores, limit))
            if len(rows):
                found.append(
                    pd.DataFrame(
                        {
                            "undertaking_id": u_ids[r0 + rows],
                            "oldcompany_id": o_ids[c0 + hits],
                            "score": scores[rows, hits],
                            "rule": RULE_NAME,
                        }
                    )
                )
    return found


def _vat_pairs(u: pd.DataFrame, o: pd.DataFrame, workers: int) -> pd.DataFrame:
    left = u.loc[u["code"] != "", ["id", "block", "code", "name"]]
    right = o.loc[o["code"] != "", ["id", "block", "code", "name"]]
    pairs = left.merge(right, on=["block", "code"], suffixes=("_u", "_o"))
    if pairs.empty:
        return pd.DataFrame(columns=_RESULT_COLUMNS)
    a, b = pairs["name_u"].tolist(), pairs["name_o"].tolist()
    scores = process.cpdist(a, b, scorer=fuzz.ratio, processor=None, dtype=np.float64, workers=workers)
    # rapidfuzz scores two empty strings 100; a pair with a missing name has no name similarity.
    empty = (pairs["name_u"] == "").to_numpy() | (pairs["name_o"] == "").to_numpy()
    scores = np.where(empty, 0.0, scores)
    return pd.DataFrame(
        {
            "undertaking_id": pairs["id_u"].to_numpy(),
            "oldcompany_id": pairs["id_o"].to_numpy(),
            "score": scores.astype(np.float64),
            "rule": RULE_VAT_EORI,
        }
    )


def find_candidates(
    undertakings: pd.DataFrame,
    old_companies: pd.DataFrame,
    fuzz_limit: int,
    workers: int = -1,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> pd.DataFrame:
    """All candidate pairs between undertakings and old companies.

    ``undertakings`` needs columns ``id, name, country_code`` (derived code), ``vat``;
    ``old_companies`` needs ``id, name, country_code, eori``. Returns a DataFrame with
    ``undertaking_id, oldcompany_id, score`` (raw rapidfuzz ratio of the lower-cased names,
    float64; 0.0 when a name is empty) and ``rule`` (``"vat_eori"`` wins when both rules hold),
    sorted by ids. Pairs are blocked by normalised country and scored with
    ``rapidfuzz.process.cdist`` in chunks of at most ``max_cells`` scores.
    """
    u = _prepare(undertakings, "vat")
    o = _prepare(old_companies, "eori")
    parts: list[pd.DataFrame] = [_vat_pairs(u, o, workers)]

    u_named = u[u["name"] != ""]
    o_named = o[o["name"] != ""]
    o_blocks = o_named.groupby("block", sort=False).indices
    for block, u_positions in u_named.groupby("block", sort=False).indices.items():
        o_positions = o_blocks.get(block)
        if o_positions is None:
            continue
        ub, ob = u_named.iloc[u_positions], o_named.iloc[o_positions]
        parts.extend(
            _name_pairs(
                ub["id"].to_numpy(),
                ub["name"].tolist(),
                ob["id"].to_numpy(),
                ob["name"].tolist(),
                fuzz_limit,
                workers,
                max_cells,
            )
        )

    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(
            {
                "undertaking_id": pd.Series([], dtype=undertakings["id"].dtype),
                "oldcompany_id": pd.Series([], dtype=old_companies["id"].dtype),
                "score": pd.Series([], dtype=np.float64),
                "rule": pd.Series([], dtype=str),
            }
        )
    result = pd.concat(parts, ignore_index=True)
    # vat_eori rows come first in `parts`, so keep="first" lets that rule win on duplicates.
    result = result.drop_duplicates(["undertaking_id", "oldcompany_id"], keep="first")
    result["score"] = result["score"].astype(np.float64)
    result["rule"] = result["rule"].astype(str)
    return result.sort_values(["undertaking_id", "oldcompany_id"], kind="stable").reset_index(drop=True)[
        _RESULT_COLUMNS
    ]


# --------------------------------------------------------------------------------------------------
# run order helpers (domain settings and the auto-verification steps around the matching)


def parse_domain_list(value: str | None) -> list[str]:
    """Parse a comma-list domain setting: ``"FGAS, ODS"`` → ``["FGAS", "ODS"]``.

    Blanks around items are ignored, items are upper-cased and deduplicated; empty or unset
    gives ``[]`` (the legacy parser produced ``[""]`` and broke on spaces).
    """
    if not value:
        return []
    return list(dict.fromkeys(item.strip().upper() for item in value.split(",") if item.strip()))


def noneu_auto_verify_ids(unverified: pd.DataFrame) -> list[Any]:
    """Step 1: unverified FGAS undertakings with no representative and a NONEU_TYPE address.

    Columns: ``id, domain, has_representative`` (bool), ``country_type``. Applies to FGAS
    whatever the settings say (legacy behaviour); these are verified "as new" by SYSTEM.
    """
    mask = (
        (unverified["domain"] == "FGAS")
        & ~unverified["has_representative"].fillna(False).astype(bool)
        & (unverified["country_type"] == "NONEU_TYPE")
    )
    return unverified.loc[mask, "id"].tolist()


def auto_verify_all_ids(unverified: pd.DataFrame, domains: Sequence[str]) -> list[Any]:
    """Step 2: unverified undertakings (``id, domain``) of the AUTO_VERIFY_ALL_COMPANIES domains."""
    return unverified.loc[unverified["domain"].isin(list(domains)), "id"].tolist()


def companies_to_match(
    unverified: pd.DataFrame, domains: Sequence[str], already_verified: Iterable[Any] = ()
) -> pd.DataFrame:
    """Step 3 input: unverified undertakings of the MANUAL_VERIFY_ALL_COMPANIES domains.

    ``already_verified`` are the ids verified by steps 1 and 2 of the same run.
    """
    done = set(already_verified)
    mask = unverified["domain"].isin(list(domains)) & ~unverified["id"].isin(done)
    return unverified.loc[mask]


def candidate_pool(old_companies: pd.DataFrame, domains: Sequence[str]) -> pd.DataFrame:
    """Step 3 pool: old companies that are ``valid``, not ``taken`` and of a MANUAL domain obligation.

    Columns: ``valid`` (bool), ``taken`` (bool: some undertaking already points at it),
    ``obligation``. The obligation is not paired with the undertaking's domain (legacy behaviour);
    call :func:`find_candidates` per domain with a filtered pool to pair them.
    """
    wanted = {d.upper() for d in domains}
    mask = (
        old_companies["valid"].fillna(False).astype(bool)
        & ~old_companies["taken"].fillna(False).astype(bool)
        & old_companies["obligation"].map(lambda v: _text(v).strip().upper() in wanted)
    )
    return old_companies.loc[mask]


def one_link_per_company(
    candidates: pd.DataFrame,
    old_companies: pd.DataFrame,
    undertakings: pd.DataFrame,
    existing_links: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """At most one candidate per (undertaking, BDR company).

    One BDR company listed under both obligations is two ``old_company`` rows with the same
    ``external_id`` (the BDR pk); the legacy kept one row per pk, so it never proposed the same
    company twice to one undertaking. Of such rows the one whose ``obligation`` is the
    undertaking's ``domain`` is kept, else the lowest id; and when the undertaking already has a
    link to one of them (an earlier run), only that row stays.

    ``old_companies``: ``id, external_id, obligation``; ``undertakings``: ``id, domain``;
    ``existing_links``: ``undertaking_id, oldcompany_id, external_id``.
    """
    if candidates.empty:
        return candidates
    info = old_companies.set_index("id")[["external_id", "obligation"]]
    frame = candidates.join(info, on="oldcompany_id")
    domains = undertakings.set_index("id")["domain"]
    own = frame["obligation"].map(lambda v: _text(v).strip().upper()) == frame["undertaking_id"].map(domains)
    frame = frame.assign(_own=own.to_numpy())
    if existing_links is not None and not existing_links.empty:
        linked = existing_links[["undertaking_id", "external_id", "oldcompany_id"]].rename(
            columns={"oldcompany_id": "_linked"}
        )
        frame = frame.merge(linked, on=["undertaking_id", "external_id"], how="left")
        frame = frame[frame["_linked"].isna() | (frame["_linked"] == frame["oldcompany_id"])]
        frame = frame.drop(columns="_linked").drop_duplicates(["undertaking_id", "oldcompany_id"])
    frame = frame.sort_values(
        ["undertaking_id", "external_id", "_own", "oldcompany_id"],
        ascending=[True, True, False, True],
        kind="stable",
    ).drop_duplicates(["undertaking_id", "external_id"], keep="first")
    return frame.sort_values(["undertaking_id", "oldcompany_id"], kind="stable").reset_index(drop=True)[
        list(candidates.columns)
    ]


def new_company_ids(matched: pd.DataFrame, candidates: pd.DataFrame, domains: Sequence[str]) -> list[Any]:
    """Step 4: undertakings of ``matched`` (``id, domain``) with zero candidates whose domain is in
    AUTO_VERIFY_NEW_COMPANIES; they are verified "as new" by SYSTEM. Empty ``domains`` → ``[]``.
    """
    if not domains:
        return []
    linked = set(candidates["undertaking_id"].tolist()) if len(candidates) else set()
    mask = matched["domain"].isin(list(domains)) & ~matched["id"].isin(linked)
    return matched.loc[mask, "id"].tolist()
