"""Tests of the single-year ODS licence aggregation."""

from datetime import date
from typing import Any

import pytest

from ecr_pipelines.registry.licences import (
    SubstanceKey,
    aggregate_licences,
    aggregate_quantity,
    apply_licence_patches,
    ec_substance_name,
    needs_rebuild,
    use_kind,
)

YEAR = 2025
TODAY = date(2026, 3, 20)
IMPORT_USE = "import.of.substance.for.destruction"  # → destruction / import
LAB_USE = (
    "import.or.production.of.substance.for.laboratory.or.analytical.use."
    "carrier.solvent.during.volumetric.analysis.e.g..titrations"
)
REEXPORT_USE = "import.of.substance.for.repackaging.and.re-export.refrigeration"

_licence_ids = iter(range(1000, 100000))


def licence(**overrides: Any) -> dict[str, Any]:
    """An invented licence row of the ODS registry."""
    row: dict[str, Any] = {
        "organizationId": 26610,
        "licenceId": next(_licence_ids),
        "longLicenceNumber": "ODS-IMP-2025-00042",
        "chemicalName": "Halon-1211",
        "mixtureNatureType": "VIRGIN",
        "licenceState": "CLOSED",
        "customProcedureName": "Release for free circulation",
        "organizationCountryName": "Romania",
        "internationalPartyCountryName": "United States of America",
        "totalOdpMass": 30.0,
        "netMass": 1.0,
        "templateDetailedUseCode": IMPORT_USE,
        "licenceType": "IDST",
        "licenceUpdateDate": "2025-11-03T10:15:00",
    }
    row.update(overrides)
    return row


def test_quantity_is_rounded_up() -> None:
    rows = [licence(netMass=m) for m in (0.1, 0.2, 0.4, 0.5)]
    company = aggregate_licences(rows, YEAR, today=TODAY).companies[26610]
    assert len(company.substances) == 1
    aggregate = company.substances[0]
    assert aggregate.quantity == 2 and isinstance(aggregate.quantity, int)
    assert aggregate.key == SubstanceKey(
        year=YEAR,
        substance="Halon 1211 (virgin)",
        organization_country_name="RO",
        s_orig_country_name="US",
        lic_use_desc="destruction",
        lic_use_kind="free circulation",
        lic_type="import",
    )
    assert len(company.licences) == 4
    assert all(row.substance == aggregate.key for row in company.licences)
    assert sorted(aggregate.licence_ids) == sorted(r["licenceId"] for r in rows)


def test_totals_are_the_legacy_plain_sum_in_row_order() -> None:
    # The legacy's figures, binary noise included (issue 11): sum() in row order, then ceil.
    assert sum([0.2, 2.2, 0.6]) > 3
    assert aggregate_quantity([0.2, 2.2, 0.6], "destruction") == 4
    assert aggregate_quantity([0.2, 0.6, 2.2], "destruction") == 3  # that order sums to exactly 3.0
    assert aggregate_quantity([], "destruction") == 0


def test_laboratory_uses_round_to_seven_places() -> None:
    rows = [
        licence(netMass=0.123456789, templateDetailedUseCode=LAB_USE),
        licence(netMass=0.1, templateDetailedUseCode=LAB_USE),
    ]
    company = aggregate_licences(rows, YEAR, today=TODAY).companies[26610]
    (aggregate,) = company.substances
    assert aggregate.key.lic_use_desc == "laboratory uses"
    assert aggregate.quantity == 0.2234568 and isinstance(aggregate.quantity, float)


def test_use_kind_and_countries() -> None:
    row = licence(
        customProcedureName="Re-export",
        templateDetailedUseCode=REEXPORT_USE,
        internationalPartyCountryName="UNITED STATES",
        organizationCountryName="romania",
        mixtureNatureType="non_virgin",
    )
    company = aggregate_licences([row], YEAR, today=TODAY).companies[26610]
    (aggregate,) = company.substances
    assert aggregate.key.lic_use_kind == "re-export"
    assert aggregate.key.s_orig_country_name == "US"
    assert aggregate.key.organization_country_name == "RO"
    assert aggregate.key.substance == "Halon 1211 (non-virgin)"
    assert aggregate.key.lic_use_desc == "refrigeration (for re-export)"
    stored = company.licences[0]
    assert stored.international_party_country_name == "US"
    assert stored.international_party_country_name_orig == "UNITED STATES"


@pytest.mark.parametrize(
    ("procedure", "kind"),
    [
        ("Release for free circulation", "free circulation"),
        ("Release for free circulation - VAT exempt", "free circulation"),
        ("Re-import - with release for free circulation", "free circulation"),
        ("Re-export", "re-export"),
        ("Permanent export", "permanent export"),
        ("Transit - non-community goods", "transit"),
        ("Inward processing - suspension system", "inward processing"),
        ("Something else", ""),
        (None, ""),
    ],
)
def test_customs_procedure_use_kind(procedure: str | None, kind: str) -> None:
    assert use_kind(procedure) == kind


def test_substance_name_key() -> None:
    assert ec_substance_name("CFC-11", "VIRGIN") == "CFC-11 (virgin)"
    assert ec_substance_name("CFC-11", "virgin") == "CFC-11 (virgin)"
    assert ec_substance_name("CFC-11", "RECYCLED") == "CFC-11 (non-virgin)"
    assert ec_substance_name("CFC-11", None) == "CFC-11 (non-virgin)"


def test_untranslatable_rows_are_reported() -> None:
    rows = [
        licence(netMass=3.0),
        licence(internationalPartyCountryName="USA"),
        licence(organizationCountryName="Atlantis"),
        licence(chemicalName="Unobtainium"),
        licence(templateDetailedUseCode="no.such.use"),
        licence(netMass=None),
        licence(licenceId=None),
        licence(chemicalName=""),
    ]
    company = aggregate_licences(rows, YEAR, today=TODAY).companies[26610]
    reasons = [u.reason for u in company.untranslated]
    assert reasons == [
        "partner country 'USA' could not be translated",
        "organization country 'Atlantis' could not be translated",
        "substance 'Unobtainium (virgin)' is not in the substance name conversion table",
        "detailed use 'no.such.use' is not in the licence details table",
        "missing netMass",
        "missing licenceId",
        "missing chemicalName",
    ]
    assert company.untranslated[0].row.international_party_country_name == ""
    assert company.untranslated[0].raw is rows[1]
    assert [s.quantity for s in company.substances] == [3]
    assert len(company.licences) == 1


def test_only_expired_and_closed_licences_aggregate() -> None:
    rows = [
        licence(licenceState="EXPIRED", netMass=1.5),
        licence(licenceState="closed", netMass=1.0),
        licence(licenceState="VALID", netMass=100.0, licenceUpdateDate="2025-12-31"),
        licence(licenceState="CANCELLED", netMass=100.0),
    ]
    company = aggregate_licences(rows, YEAR, today=TODAY).companies[26610]
    assert [s.quantity for s in company.substances] == [3]
    assert [r.licence_state for r in company.not_aggregated] == ["VALID", "CANCELLED"]
    assert company.untranslated == []
    # Ignored rows still count for the delivery's freshness, as in the legacy grouping.
    assert company.updated_since == date(2025, 12, 31)


def test_grouping_updated_since_and_unknown_organisations() -> None:
    rows = [
        licence(organizationId=1, licenceUpdateDate="2025-05-01T00:00:00"),
        licence(organizationId=1, licenceUpdateDate="2025-07-09"),
        licence(organizationId=2, licenceUpdateDate=None),
        licence(organizationId=3),
        licence(organizationId=3),
        {"licenceId": 1},
        licence(organizationId=1, licenceUpdateDate="not a date"),
    ]
    result = aggregate_licences(rows, YEAR, known_organization_ids={1, 2}, today=TODAY)
    assert sorted(result.companies) == [1, 2]
    assert result.companies[1].updated_since == date(2025, 7, 9)
    assert result.companies[2].updated_since == TODAY  # missing date → today (legacy)
    assert result.unknown_organizations == [3]
    assert len(result.rejected) == 2
    assert all("malformed licence row" in reason for _, reason in result.rejected)


def test_several_substances_per_company() -> None:
    rows = [
        licence(netMass=1.2),
        licence(netMass=1.2, internationalPartyCountryName="China (excluding Hong Kong and Macao)"),
        licence(netMass=0.5, chemicalName="CFC-11"),
    ]
    company = aggregate_licences(rows, YEAR, today=TODAY).companies[26610]
    got = {(s.key.substance, s.key.s_orig_country_name): s.quantity for s in company.substances}
    assert got == {
        ("Halon 1211 (virgin)", "US"): 2,
        ("Halon 1211 (virgin)", "CN"): 2,
        ("CFC-11 (virgin)", "US"): 1,
    }


def test_repeated_licence_key_counts_once_last_wins() -> None:
    rows = [
        licence(licenceId=7, netMass=5.0),
        licence(licenceId=7, netMass=1.0),
        licence(licenceId=8, netMass=1.0),
    ]
    company = aggregate_licences(rows, YEAR, today=TODAY).companies[26610]
    assert [s.quantity for s in company.substances] == [2]
    assert [(r.licence_id, r.net_mass) for r in company.licences] == [(7, 1.0), (8, 1.0)]


def test_needs_rebuild() -> None:
    assert needs_rebuild(None, date(2025, 1, 1))
    assert needs_rebuild(date(2024, 12, 31), date(2025, 1, 1))
    assert not needs_rebuild(date(2025, 1, 1), date(2025, 1, 1))
    assert not needs_rebuild(date(2025, 2, 1), date(2025, 1, 1))


def test_apply_licence_patches() -> None:
    aggregated = [{"year": 2025, "substance": "CFC-11 (virgin)", "quantity": 3, "company_id": 5}]
    patches = [
        {"company_id": 5, "year": 2025, "substance": "X", "use_desc": "destruction", "quantity": 2.7},
        {"company_id": 5, "year": 2025, "substance": "Y", "use_desc": "laboratory uses", "quantity": 0.25},
        {"company_id": 5, "year": 2024, "substance": "Z", "use_desc": "destruction", "quantity": 1},
        {"company_id": 6, "year": 2025, "substance": "W", "use_desc": "destruction", "quantity": 1},
    ]
    result = apply_licence_patches(aggregated, patches, company_id=5, year=2025)
    assert [(r["substance"], r["quantity"]) for r in result] == [
        ("CFC-11 (virgin)", 3),
        ("X", 2),
        ("Y", 0.25),
    ]
    assert patches[0]["quantity"] == 2.7  # inputs untouched
    all_years = apply_licence_patches([], patches, company_id=5)
    assert [r["substance"] for r in all_years] == ["X", "Y", "Z"]
    assert apply_licence_patches(aggregated, None, company_id=5) == aggregated
