"""ODS single-year licences (tables ``delivery_licence``, ``substance``, ``licence``,
``licence_rejection``): one delivery per (company, year), its substances rebuilt when newer
licence data arrives."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.clients import RegistryClient
from ecr_pipelines.registry.licences import (
    LicenceAggregation,
    aggregate_licences,
    apply_licence_patches,
    needs_rebuild,
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
    untranslated: list[tuple[int, int | None, str]] = field(default_factory=list)  # org, licence, reason


def store_licences(
    sql: Sql,
    aggregation: LicenceAggregation,
    patches: Sequence[Mapping[str, Any]] = (),
    run_id: str | None = None,
) -> LicenceReport:
    """One delivery per (ODS company, year); its substances are rebuilt when newer licence data
    arrived (licence rows are upserted and re-pointed, never lost). PATCH_LICENCES entries of the
    company and year are stored as extra substance rows marked ``patched``."""
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
        sql.exec("DELETE FROM registry.substance WHERE delivery_id = :d", {"d": delivery_id})
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
        patch_rows = apply_licence_patches([], patches, org_id, year)
        sql.values(
            "INSERT INTO registry.substance (year, substance, lic_use_kind, lic_use_desc, lic_type, "
            "s_orig_country_name, organization_country_name, quantity, delivery_id, patched) VALUES %s",
            [
                (
                    year,
                    p.get("substance"),
                    p.get("use_kind"),
                    p.get("use_desc"),
                    p.get("type"),
                    p.get("s_orig_country_name"),
                    p.get("organization_country_name"),
                    p.get("quantity") or 0,
                    delivery_id,
                    True,
                )
                for p in patch_rows
            ],
        )
        sql.exec(
            "UPDATE registry.delivery_licence SET updated_since = :s, date_updated = current_date WHERE id = :d",
            {"s": company.updated_since, "d": delivery_id},
        )
        report.substances += len(company.substances)
        report.licences += len(company.licences)
        report.patched += len(patch_rows)
    sql.values(
        "INSERT INTO registry.licence_rejection (run_id, year, organization_id, licence_id, reason) VALUES %s",
        [(run_id, year, org, lic, reason) for org, lic, reason in report.untranslated],
    )
    return report


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
