"""``energy/technology``: the technology labels of (technology code, fuel code) pairs, loaded by
migration 0009 from the legacy's table (``ecr_pipelines/energy/data/technology.csv``)."""

import csv
from pathlib import Path

import dagster as dg

from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource

GROUP = "energy"
TECHNOLOGY_CSV = Path(__file__).resolve().parents[1] / "data" / "technology.csv"
UNKNOWN = "Unknown"


def shipped_rows() -> set[tuple[str, str, str]]:
    with TECHNOLOGY_CSV.open(newline="", encoding="utf-8") as handle:
        return {(r["technology_code"], r["fuel_code"], r["technology"]) for r in csv.DictReader(handle)}


@dg.asset(
    key=["energy", "technology"],
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "Technology labels (Solar, Wind, Biomass, ...) of (technology code, fuel code) pairs: the legacy's "
        "2,666-row table, loaded by migration 0009. GGOs and disclosures are grouped by these labels; a pair "
        f"missing from it is labelled '{UNKNOWN}'."
    ),
)
def energy_technology(db: DatabaseResource) -> dg.MaterializeResult:
    with db.connect() as conn:
        labels = conn.exec_driver_sql(
            "SELECT technology, count(*) FROM energy.technology GROUP BY technology ORDER BY technology"
        ).all()
    total = sum(count for _, count in labels)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": total,
            "labels": len(labels),
            "pairs_per_label": md_table(["label", "pairs"], labels),
        }
    )


@dg.asset_check(
    asset=energy_technology,
    description="energy.technology holds exactly the 2,666 shipped rows (technology.csv), labels as spelled there.",
)
def energy_technology_rows(db: DatabaseResource) -> dg.AssetCheckResult:
    shipped = shipped_rows()
    with db.connect() as conn:
        stored = {
            tuple(row)
            for row in conn.exec_driver_sql(
                "SELECT technology_code, fuel_code, technology FROM energy.technology"
            )
        }
    missing, extra = sorted(shipped - stored), sorted(stored - shipped)
    return dg.AssetCheckResult(
        passed=not missing and not extra,
        metadata={
            "shipped": len(shipped),
            "stored": len(stored),
            "missing": len(missing),
            "not_shipped": len(extra),
            "preview": md_table(["technology code", "fuel code", "label"], (missing + extra)[:20]),
        },
    )


technology_checks = [energy_technology_rows]
