"""Reference tables of the registry cache (types, business profiles, conversion tables)."""

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.reference import fixture_rows


def seed_reference_tables(sql: Sql) -> dict[str, int]:
    """Upsert the bundled reference tables by their legacy ids (types, business profiles and the
    three licence conversion tables)."""
    tables = {
        "type": ("types.json", "Type", ("type", "domain")),
        "businessprofile": (
            "business_profiles.json",
            "BusinessProfile",
            ("highleveluses", "code", "short_code", "domain"),
        ),
        "country_codes_conversion": (
            "country_codes_conservion.json",
            "CountryCodesConversion",
            ("country_name_short_en", "country_code_alpha2"),
        ),
        "substance_name_conversion": (
            "substance_name_conversion.json",
            "SubstanceNameConversion",
            ("ec_substance_name", "corrected_name"),
        ),
        "licence_details_conversion": (
            "licence_details_conversion.json",
            "LicenceDetailsConversion",
            ("template_detailed_use_code", "lic_use_kind", "lic_use_desc", "lic_type"),
        ),
    }
    counts = {}
    for table, (filename, model, columns) in tables.items():
        rows = fixture_rows(filename, model)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
        sql.values(
            f"INSERT INTO registry.{table} (id, {', '.join(columns)}) VALUES %s "
            f"ON CONFLICT (id) DO UPDATE SET {updates}",
            [(r["id"], *(r.get(c) or "" for c in columns)) for r in rows],
        )
        counts[table] = len(rows)
    return counts
