"""Matching on one medium population: 20,000 undertakings × 20,000 old companies over 30
countries (~13 million scored name pairs), the case the registry tests used to time.

Prints the pairs scored, seconds, pairs per second and candidates found, once with all cores and
once with one; figures only, no pass/fail (timings belong here, not in the test suite).
"""

import random
import time

import pandas as pd

from ecr_pipelines.registry.matching import find_candidates

SIZE = 20_000
COUNTRIES = [f"C{k}" for k in range(30)]
LIMIT = 75
WORDS = [
    "polar", "cooling", "refriger", "frigo", "klima", "therm", "gas", "chem", "fluor", "halon",
    "nord", "sud", "euro", "trade", "import", "export", "tech", "service", "industri", "group",
]  # fmt: skip
FORMS = [
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


def company_name(rng: random.Random) -> str:
    """Short names from a small vocabulary, so many pairs land near the fuzzy threshold."""
    words = [rng.choice(WORDS) + rng.choice(["", "s", "a", "o", "ex"]) for _ in range(rng.randint(1, 3))]
    name = (" ".join(words) + " " + rng.choice(FORMS)).strip()
    roll = rng.random()
    if roll < 0.3:
        return name.upper()
    if roll < 0.5:
        return name.title()
    return name


def population(seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = random.Random(seed)
    u = [(i, company_name(rng), rng.choice(COUNTRIES), None) for i in range(SIZE)]
    o = [(i, company_name(rng), rng.choice(COUNTRIES), None) for i in range(SIZE)]
    return (
        pd.DataFrame(u, columns=["id", "name", "country_code", "vat"]),
        pd.DataFrame(o, columns=["id", "name", "country_code", "eori"]),
    )


def scored_pairs(undertakings: pd.DataFrame, old: pd.DataFrame) -> int:
    """Pairs the matcher compares: within each country block only."""
    per_block = old["country_code"].str.lower().value_counts()
    return int(undertakings["country_code"].str.lower().map(per_block).fillna(0).sum())


def main() -> None:
    undertakings, old = population()
    pairs = scored_pairs(undertakings, old)
    print(f"{len(undertakings):,} undertakings × {len(old):,} old companies, {len(COUNTRIES)} countries")
    print(f"name pairs scored: {pairs:,}")
    for label, workers in (("all cores", -1), ("one core", 1)):
        started = time.perf_counter()
        found = find_candidates(undertakings, old, LIMIT, workers=workers)
        seconds = time.perf_counter() - started
        print(
            f"{label:>9}: {seconds:7.2f} s   {pairs / seconds / 1e6:6.1f} M pairs/s   "
            f"{len(found):,} candidate links"
        )


if __name__ == "__main__":
    main()
