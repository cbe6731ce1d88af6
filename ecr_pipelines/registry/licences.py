"""Single-year ODS licence aggregation (pure; the caller stores the result).

Input: the licence rows the ODS registry returns for one year. Output, per company
(``organizationId``): the newest ``licenceUpdateDate`` (the delivery's ``updated_since``), the
normalised licence rows to upsert by (licence_id, year, chemical_name), the substance aggregates
that replace the delivery's substances, and the rows that could not be translated, with a reason.

Rules (legacy ECR behaviour, see the research notes §4.6):

* only ``EXPIRED`` / ``CLOSED`` licences aggregate (case-insensitive); other states are listed in
  ``not_aggregated`` and still count for ``updated_since``;
* substance = conversion table of ``"<chemicalName> (virgin)"`` when ``mixtureNatureType`` is
  virgin, else ``"<chemicalName> (non-virgin)"``;
* organisation / partner country: case-insensitive English-name lookup → alpha-2, blanks around
  the table's names ignored (a fix: the legacy dropped every licence of "Finland", whose table
  row reads "Finland ");
* ``templateDetailedUseCode`` → use description and licence type (table); use kind from the
  customs procedure name (:data:`CUSTOMS_PROCEDURE_USE_KIND`);
* quantity = plain ``sum`` of ``netMass`` at the legacy column's precision (``real``), in row
  order; ``round(q, 7)`` for "laboratory uses", else ``ceil`` as int. Exactly the legacy figures,
  binary noise included: 0.2 + 2.2 + 0.6 is 3.0000000000000004 and gives 4, as it always did.

:func:`apply_licence_patches` appends ``PATCH_LICENCES`` entries to an API answer.
"""

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np

from ecr_pipelines.registry.reference import ReferenceTables, load_reference_tables

AGGREGATED_STATES = frozenset({"expired", "closed"})
LABORATORY_USES = "laboratory uses"

# Exact customs procedure names of the licence API → lic_use_kind ("" for anything else).
CUSTOMS_PROCEDURE_USE_KIND: Mapping[str, str] = {
    "Release for free circulation": "free circulation",
    "Release for free circulation - VAT exempt": "free circulation",
    "Release for free circulation - no VAT paid": "free circulation",
    "Release for free circulation - redispatched": "free circulation",
    "Re-import - with release for free circulation": "free circulation",
    "Re-export": "re-export",
    "Permanent export": "permanent export",
    "Transit - non-community goods": "transit",
    "Inward processing - suspension system": "inward processing",
    "Inward processing - drawback procedure": "inward processing",
}


@dataclass(frozen=True, slots=True)
class SubstanceKey:
    """Identity of one aggregate row (the legacy ``substance`` get-or-create key, minus delivery)."""

    year: int
    substance: str
    organization_country_name: str
    s_orig_country_name: str
    lic_use_desc: str
    lic_use_kind: str
    lic_type: str


@dataclass(frozen=True, slots=True)
class LicenceRow:
    """One licence row normalised to the ``licence`` table's columns.

    ``substance`` is the aggregate it belongs to (None for rows that do not aggregate).
    Country columns hold the alpha-2 code ("" when unknown) and ``*_orig`` the English name.
    """

    organization_id: int
    year: int
    licence_id: int | None
    long_licence_number: str | None
    chemical_name: str | None
    mixture_nature_type: str | None
    licence_state: str | None
    custom_procedure_name: str | None
    organization_country_name: str
    organization_country_name_orig: str | None
    international_party_country_name: str
    international_party_country_name_orig: str | None
    total_odp_mass: float | None
    net_mass: float | None
    template_detailed_use_code: str | None
    licence_type: str | None
    updated_since: str | None
    substance: SubstanceKey | None = None


@dataclass(frozen=True, slots=True)
class SubstanceAggregate:
    """One aggregate (``substance`` table row) with its quantity and the licences summed into it."""

    key: SubstanceKey
    quantity: int | float
    licence_ids: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class UntranslatedLicence:
    """A licence row that cannot be aggregated: the reason, the normalised row and the raw payload."""

    row: LicenceRow
    reason: str
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CompanyLicences:
    """Everything about one company's licences of the year."""

    organization_id: int
    year: int
    updated_since: date
    licences: list[LicenceRow] = field(default_factory=list)
    substances: list[SubstanceAggregate] = field(default_factory=list)
    untranslated: list[UntranslatedLicence] = field(default_factory=list)
    not_aggregated: list[LicenceRow] = field(default_factory=list)


@dataclass(slots=True)
class LicenceAggregation:
    """Result of :func:`aggregate_licences` for one year."""

    year: int
    companies: dict[int, CompanyLicences] = field(default_factory=dict)
    unknown_organizations: list[int] = field(default_factory=list)
    rejected: list[tuple[Mapping[str, Any], str]] = field(default_factory=list)


def licence_update_date(value: Any, today: date) -> date:
    """Date of ``licenceUpdateDate`` (first 10 characters, ``YYYY-MM-DD``); empty → ``today``."""
    if not value:
        return today
    return datetime.strptime(str(value)[:10], "%Y-%m-%d").date()


def use_kind(custom_procedure_name: str | None) -> str:
    """lic_use_kind for a customs procedure name ("" when not one of the known procedures)."""
    return CUSTOMS_PROCEDURE_USE_KIND.get(custom_procedure_name or "", "")


def ec_substance_name(chemical_name: str, mixture_nature_type: str | None) -> str:
    """The conversion-table key: ``"<chemical> (virgin)"`` or ``"<chemical> (non-virgin)"``."""
    nature = "virgin" if (mixture_nature_type or "").lower() == "virgin" else "non-virgin"
    return f"{chemical_name} ({nature})"


def as_real(value: float) -> float:
    """``value`` as the legacy's ``real`` columns (``Float(7)``) gave it back: rounded to single
    precision, then read as the shortest decimal that names that single (what Postgres prints
    for a ``real`` and the driver parses). 10.123456789 → 10.123457; 0.2 stays 0.2."""
    return float(str(np.float32(value)))


def aggregate_quantity(net_masses: Iterable[float], use_desc: str) -> int | float:
    """The legacy aggregate: plain ``sum`` of the net masses, ``round(q, 7)`` for laboratory
    uses (kept at ``real`` precision, the column's), else rounded up to an int.

    ``sum``, not :func:`math.fsum`, on purpose: the legacy's figures are what BDR and the
    companies saw, binary noise included (0.2 + 2.2 + 0.6 → 3.0000000000000004 → 4).
    """
    total = sum(net_masses, 0.0)
    if use_desc == LABORATORY_USES:
        return as_real(round(total, 7))
    return int(math.ceil(total))


def _float_or_none(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    return float(value)


def _real_or_none(value: Any) -> float | None:
    number = _float_or_none(value)
    return None if number is None else as_real(number)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def normalise_licence(raw: Mapping[str, Any], year: int, refs: ReferenceTables) -> LicenceRow:
    """Map one raw licence row to :class:`LicenceRow` (countries translated, no substance yet)."""
    org_name = _str_or_none(raw.get("organizationCountryName"))
    partner_name = _str_or_none(raw.get("internationalPartyCountryName"))
    licence_id = raw.get("licenceId")
    return LicenceRow(
        organization_id=int(raw["organizationId"]),
        year=year,
        licence_id=int(licence_id) if licence_id is not None else None,
        long_licence_number=_str_or_none(raw.get("longLicenceNumber")),
        chemical_name=_str_or_none(raw.get("chemicalName")),
        mixture_nature_type=_str_or_none(raw.get("mixtureNatureType")),
        licence_state=_str_or_none(raw.get("licenceState")),
        custom_procedure_name=_str_or_none(raw.get("customProcedureName")),
        organization_country_name=refs.country_alpha2(org_name) or "",
        organization_country_name_orig=org_name,
        international_party_country_name=refs.country_alpha2(partner_name) or "",
        international_party_country_name_orig=partner_name,
        # The legacy columns are `real`: the masses are summed and shown at that precision.
        total_odp_mass=_real_or_none(raw.get("totalOdpMass")),
        net_mass=_real_or_none(raw.get("netMass")),
        template_detailed_use_code=_str_or_none(raw.get("templateDetailedUseCode")),
        licence_type=_str_or_none(raw.get("licenceType")),
        updated_since=_str_or_none(raw.get("licenceUpdateDate")),
    )


def substance_for(row: LicenceRow, refs: ReferenceTables) -> SubstanceKey | str:
    """The aggregate key of an aggregatable licence row, or the reason it cannot aggregate."""
    if (row.licence_state or "").lower() not in AGGREGATED_STATES:
        return f"licence state {row.licence_state!r} is not EXPIRED or CLOSED"
    # Both are part of the licence table's natural key, so a row without them cannot be stored.
    if row.licence_id is None:
        return "missing licenceId"
    if not row.chemical_name:
        return "missing chemicalName"
    ec_name = ec_substance_name(row.chemical_name, row.mixture_nature_type)
    corrected = refs.substance_name(ec_name)
    if corrected is None:
        return f"substance {ec_name!r} is not in the substance name conversion table"
    org_code = refs.country_alpha2(row.organization_country_name_orig)
    if org_code is None:
        return f"organization country {row.organization_country_name_orig!r} could not be translated"
    partner_code = refs.country_alpha2(row.international_party_country_name_orig)
    if partner_code is None:
        return f"partner country {row.international_party_country_name_orig!r} could not be translated"
    detail = refs.licence_detail(row.template_detailed_use_code)
    if detail is None:
        return f"detailed use {row.template_detailed_use_code!r} is not in the licence details table"
    if row.net_mass is None:
        return "missing netMass"
    return SubstanceKey(
        year=row.year,
        substance=corrected,
        organization_country_name=org_code,
        s_orig_country_name=partner_code,
        lic_use_desc=detail.lic_use_desc,
        lic_use_kind=use_kind(row.custom_procedure_name),
        lic_type=detail.lic_type,
    )


def aggregate_licences(
    rows: Iterable[Mapping[str, Any]],
    year: int,
    refs: ReferenceTables | None = None,
    known_organization_ids: Collection[int] | None = None,
    today: date | None = None,
) -> LicenceAggregation:
    """Group one year's licence rows by ``organizationId`` and aggregate them into substances.

    ``known_organization_ids`` are the ODS undertakings in the cache; rows of other companies are
    skipped and their ids listed once in ``unknown_organizations`` (None = accept every id).
    Rows without a usable ``organizationId`` or ``licenceUpdateDate`` land in ``rejected``.
    The caller rebuilds a delivery only when the group's ``updated_since`` is newer than the
    stored one (see :func:`needs_rebuild`).
    """
    refs = refs or load_reference_tables()
    today = today or date.today()
    known = set(known_organization_ids) if known_organization_ids is not None else None
    result = LicenceAggregation(year=year)
    unknown_seen: set[int] = set()
    groups: dict[int, list[tuple[LicenceRow, Mapping[str, Any]]]] = {}

    for raw in rows:
        try:
            org_id = int(raw["organizationId"])
            updated = licence_update_date(raw.get("licenceUpdateDate"), today)
            row = normalise_licence(raw, year, refs)
        except (KeyError, TypeError, ValueError) as exc:
            result.rejected.append((raw, f"malformed licence row: {exc!r}"))
            continue
        if known is not None and org_id not in known:
            if org_id not in unknown_seen:
                unknown_seen.add(org_id)
                result.unknown_organizations.append(org_id)
            continue
        company = result.companies.get(org_id)
        if company is None:
            company = result.companies[org_id] = CompanyLicences(org_id, year, updated)
        elif updated > company.updated_since:
            company.updated_since = updated
        groups.setdefault(org_id, []).append((row, raw))

    for org_id, group in groups.items():
        _aggregate_company(result.companies[org_id], group, refs)
    return result


def _aggregate_company(
    company: CompanyLicences, rows: Sequence[tuple[LicenceRow, Mapping[str, Any]]], refs: ReferenceTables
) -> None:
    # Licences are upserted by (licence_id, year, chemical_name): a repeated key overwrites the
    # earlier row, so only the last one counts (dict keeps first-insertion order, so pop first).
    translated: dict[tuple[int | None, str | None], LicenceRow] = {}
    for row, raw in rows:
        outcome = substance_for(row, refs)
        if isinstance(outcome, str):
            if (row.licence_state or "").lower() not in AGGREGATED_STATES:
                company.not_aggregated.append(row)
            else:
                company.untranslated.append(UntranslatedLicence(row, outcome, raw))
            continue
        key = (row.licence_id, row.chemical_name)
        translated.pop(key, None)
        translated[key] = dataclasses.replace(row, substance=outcome)

    members: dict[SubstanceKey, list[LicenceRow]] = {}
    for row in translated.values():
        assert row.substance is not None  # set just above for every translated row
        members.setdefault(row.substance, []).append(row)
    company.licences = list(translated.values())
    company.substances = [
        SubstanceAggregate(
            key=key,
            quantity=aggregate_quantity((r.net_mass or 0.0 for r in group), key.lic_use_desc),
            licence_ids=tuple(r.licence_id for r in group),
        )
        for key, group in members.items()
    ]


def needs_rebuild(stored_updated_since: date | None, incoming_updated_since: date) -> bool:
    """Whether a delivery's substances must be rebuilt: never synced, or newer licence data."""
    return stored_updated_since is None or incoming_updated_since > stored_updated_since


def apply_licence_patches(
    aggregated: Sequence[Mapping[str, Any]],
    patches: Sequence[Mapping[str, Any]] | None,
    company_id: int,
    year: int | None = None,
) -> list[dict[str, Any]]:
    """Append the ``PATCH_LICENCES`` entries of ``company_id`` (and ``year``, if given) verbatim.

    Like the legacy API, ``quantity`` is cast to int unless ``use_desc`` is "laboratory uses".
    Returns a new list; neither input is modified.
    """
    result = [dict(item) for item in aggregated]
    for patch in patches or ():
        if patch.get("company_id") != company_id:
            continue
        if year is not None and patch.get("year") != year:
            continue
        entry = dict(patch)
        if entry.get("quantity") is not None:
            entry["quantity"] = patch_quantity(entry)
        result.append(entry)
    return result


def patch_quantity(entry: Mapping[str, Any]) -> int | float:
    """A ``PATCH_LICENCES`` quantity as the legacy API gave it: int unless "laboratory uses"."""
    quantity = entry.get("quantity") or 0
    return quantity if entry.get("use_desc") == LABORATORY_USES else int(quantity)
