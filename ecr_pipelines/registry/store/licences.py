"""ODS single-year licences (tables ``delivery_licence``, ``substance``, ``licence``,
``licence_rejection``): one delivery per (company, year), its substances rebuilt when newer
licence data arrives, and the operator's ``PATCH_LICENCES`` as substance rows marked ``patched``.

The legacy rebuilt a delivery by deleting its substances, and its ORM cascade (substance →
delivery) deleted the delivery with them, so a re-sync with newer data crashed on the deleted
delivery. Here the delivery stays and only its aggregated substances are replaced.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.clients import RegistryClient
from ecr_pipelines.registry.licences import (
    LicenceAggregation,
    aggregate_licences,
    needs_rebuild,
    patch_quantity,
)


@dataclass
class LicenceReport:
    year: int
    fetched: int = 0
    companies: int = 0
    rebuilt: int = 0
    substances: int = 0
    licences: int = 0
    patched: int = 0
    unknown_organizations: list[int] = field(default_factory=list)
    # PATCH_LICENCES entries not stored: (company_id, year, why).
    unusable_patches: list[tuple[Any, Any, str]] = field(default_factory=list)
    untranslated: list[tuple[int, int | None, str]] = field(default_factory=list)  # org, licence, reason


def store_licences(
    sql: Sql,
    aggregation: LicenceAggregation,
    patches: Sequence[Mapping[str, Any]] = (),
    run_id: str | None = None,
) -> LicenceReport:
    """One delivery per (ODS company, year); its substances are rebuilt when newer licence data
    arrived (licence rows are upserted and re-pointed, never lost). Then every PATCH_LICENCES
    entry is (re)stored, see :func:`store_patched_substances`."""
    year = aggregation.year
    report = LicenceReport(year, unknown_organizations=list(aggregation.unknown_organizations))
    undertakings = dict(
        sql.all(
            "SELECT external_id, id FROM registry.undertaking WHERE domain = 'ODS' AND external_id = ANY(:ids)",
            {"ids": list(aggregation.companies)},
        )
    )
    for org_id, company in aggregation.companies.items():
        report.untranslated += [(org_id, u.row.licence_id, u.reason) for u in company.untranslated]
        undertaking_id = undertakings.get(org_id)
        if undertaking_id is None:
            report.unknown_organizations.append(org_id)
            continue
        report.companies += 1
        delivery_id, stored = sql.all(
            "INSERT INTO registry.delivery_licence (year, undertaking_id) VALUES (:y, :u) "
            "ON CONFLICT (undertaking_id, year) DO UPDATE SET year = EXCLUDED.year RETURNING id, updated_since",
            {"y": year, "u": undertaking_id},
        )[0]
        if not needs_rebuild(stored, company.updated_since):
            continue
        report.rebuilt += 1
        # The aggregates only: the patched rows are the operator's, rewritten below every run.
        sql.exec("DELETE FROM registry.substance WHERE delivery_id = :d AND NOT patched", {"d": delivery_id})
        substance_ids = sql.values(
            "INSERT INTO registry.substance (year, substance, lic_use_kind, lic_use_desc, lic_type, "
            "s_orig_country_name, organization_country_name, quantity, delivery_id) VALUES %s RETURNING id",
            [
                (
                    year,
                    s.key.substance,
                    s.key.lic_use_kind,
                    s.key.lic_use_desc,
                    s.key.lic_type,
                    s.key.s_orig_country_name,
                    s.key.organization_country_name,
                    s.quantity,
                    delivery_id,
                )
                for s in company.substances
            ],
            fetch=True,
        )
        by_key = {s.key: row[0] for s, row in zip(company.substances, substance_ids, strict=True)}
        sql.values(
            """
            INSERT INTO registry.licence (year, licence_id, chemical_name, organization_country_name,
                organization_country_name_orig, custom_procedure_name, international_party_country_name,
                international_party_country_name_orig, total_odp_mass, net_mass, licence_state,
                long_licence_number, template_detailed_use_code, licence_type, mixture_nature_type,
                updated_since, substance_id)
            VALUES %s
            ON CONFLICT (licence_id, year, chemical_name) DO UPDATE SET
                organization_country_name = EXCLUDED.organization_country_name,
                organization_country_name_orig = EXCLUDED.organization_country_name_orig,
                custom_procedure_name = EXCLUDED.custom_procedure_name,
                international_party_country_name = EXCLUDED.international_party_country_name,
                international_party_country_name_orig = EXCLUDED.international_party_country_name_orig,
                total_odp_mass = EXCLUDED.total_odp_mass, net_mass = EXCLUDED.net_mass,
                licence_state = EXCLUDED.licence_state, long_licence_number = EXCLUDED.long_licence_number,
                template_detailed_use_code = EXCLUDED.template_detailed_use_code,
                licence_type = EXCLUDED.licence_type, mixture_nature_type = EXCLUDED.mixture_nature_type,
                updated_since = EXCLUDED.updated_since, substance_id = EXCLUDED.substance_id,
                date_updated = current_date
            """,
            [
                (
                    year,
                    r.licence_id,
                    r.chemical_name,
                    r.organization_country_name,
                    r.organization_country_name_orig,
                    r.custom_procedure_name,
                    r.international_party_country_name,
                    r.international_party_country_name_orig,
                    r.total_odp_mass,
                    r.net_mass,
                    r.licence_state,
                    r.long_licence_number,
                    r.template_detailed_use_code,
                    r.licence_type,
                    r.mixture_nature_type,
                    r.updated_since,
                    by_key[r.substance] if r.substance else None,
                )
                for r in company.licences
            ],
        )
        sql.exec(
            "UPDATE registry.delivery_licence SET updated_since = :s, date_updated = current_date WHERE id = :d",
            {"s": company.updated_since, "d": delivery_id},
        )
        report.substances += len(company.substances)
        report.licences += len(company.licences)
    report.patched, report.unusable_patches = store_patched_substances(sql, patches)
    sql.values(
        "INSERT INTO registry.licence_rejection (run_id, year, organization_id, licence_id, reason) VALUES %s",
        [(run_id, year, org, lic, reason) for org, lic, reason in report.untranslated],
    )
    return report


def store_patched_substances(
    sql: Sql, patches: Sequence[Mapping[str, Any]]
) -> tuple[int, list[tuple[Any, Any, str]]]:
    """Store every ``PATCH_LICENCES`` entry (all years) as a substance row marked ``patched``.

    The legacy appended the entries to its API answers whenever the data was read, so an edit of
    the patches counted at once, whether or not new licence data came, and also for a company
    with no delivery that year. Here every licence run rewrites all patched rows from the current
    file (a removed entry disappears too) and creates the delivery an entry needs. Returns the
    number stored and the entries that could not be (no company/year, or not an ODS company).
    """
    sql.exec("DELETE FROM registry.substance WHERE patched")
    unusable: list[tuple[Any, Any, str]] = []
    entries: list[tuple[int, int, Mapping[str, Any]]] = []
    for entry in patches:
        if not isinstance(entry, Mapping):
            unusable.append((None, None, f"not an object: {entry!r}"))
            continue
        try:
            patch_quantity(entry)
            entries.append((int(entry["company_id"]), int(entry["year"]), entry))
        except (KeyError, TypeError, ValueError):
            unusable.append(
                (entry.get("company_id"), entry.get("year"), "needs company_id, year and a number")
            )
    if not entries:
        return 0, unusable
    undertakings = dict(
        sql.all(
            "SELECT external_id, id FROM registry.undertaking WHERE domain = 'ODS' AND external_id = ANY(:ids)",
            {"ids": sorted({company for company, _, _ in entries})},
        )
    )
    wanted = sorted({(undertakings[c], y) for c, y, _ in entries if c in undertakings})
    sql.values(
        "INSERT INTO registry.delivery_licence (undertaking_id, year) VALUES %s "
        "ON CONFLICT (undertaking_id, year) DO NOTHING",
        wanted,
    )
    deliveries = {
        (r.undertaking_id, r.year): r.id
        for r in sql.all(
            "SELECT id, undertaking_id, year FROM registry.delivery_licence WHERE undertaking_id = ANY(:u)",
            {"u": sorted({u for u, _ in wanted})},
        )
    }
    rows = []
    for company, year, entry in entries:
        undertaking_id = undertakings.get(company)
        if undertaking_id is None:
            unusable.append((company, year, "not an ODS undertaking of the cache"))
            continue
        rows.append(
            (
                year,
                entry.get("substance"),
                entry.get("use_kind"),
                entry.get("use_desc"),
                entry.get("type"),
                entry.get("s_orig_country_name"),
                entry.get("organization_country_name"),
                patch_quantity(entry),
                deliveries[(undertaking_id, year)],
                True,
            )
        )
    sql.values(
        "INSERT INTO registry.substance (year, substance, lic_use_kind, lic_use_desc, lic_type, "
        "s_orig_country_name, organization_country_name, quantity, delivery_id, patched) VALUES %s",
        rows,
    )
    return len(rows), unusable


@dataclass
class LicenceYear:
    """What one year's licence sync did (``report``) and what the table holds afterwards."""

    report: LicenceReport
    fetched: int
    rejected_rows: int  # rows the aggregation could not read at all
    stored: int  # licence rows of the year in the table


def fetch_licences(client: RegistryClient, year: int, page_size: int | None) -> list[dict[str, Any]]:
    """Every licence row of the year. Fetched before any transaction opens, so a slow registry
    holds no locks."""
    return [row for page in client.licences(year, page_size) for row in page]


def sync_licences(
    sql: Sql,
    rows: Sequence[Mapping[str, Any]],
    year: int,
    patches: Sequence[Mapping[str, Any]] = (),
    run_id: str | None = None,
) -> LicenceYear:
    """Aggregate the fetched rows against the stored ODS companies and store them."""
    known = [r[0] for r in sql.all("SELECT external_id FROM registry.undertaking WHERE domain = 'ODS'")]
    aggregation = aggregate_licences(list(rows), year, known_organization_ids=known)
    report = store_licences(sql, aggregation, patches, run_id)
    stored = sql.scalar("SELECT count(*) FROM registry.licence WHERE year = :y", {"y": year})
    return LicenceYear(report, len(rows), len(aggregation.rejected), int(stored or 0))
