"""Bundled reference tables of the registry cache (types, business profiles, conversion tables).

The tables are the legacy ECR fixtures shipped in ``ecr_pipelines/registry/data`` (see SOURCES.md
there). They are read through :mod:`importlib.resources` so the package works from a wheel or a zip,
and cached with :func:`functools.lru_cache` because they never change at run time. Mappings are
returned as read-only :class:`types.MappingProxyType` views so that a caller cannot corrupt the
cached copy shared by every asset in the process.
"""

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

FGAS = "FGAS"
ODS = "ODS"
DOMAINS = (FGAS, ODS)

_DATA_PACKAGE = "ecr_pipelines.registry"
_DATA_DIR = "data"


@dataclass(frozen=True, slots=True)
class TypeRef:
    """One accepted undertaking type (row of the ``type`` reference table)."""

    id: int
    type: str
    domain: str


@dataclass(frozen=True, slots=True)
class BusinessProfileRef:
    """One accepted high-level use (row of the ``businessprofile`` reference table)."""

    id: int
    domain: str
    highleveluses: str
    code: str
    short_code: str


@dataclass(frozen=True, slots=True)
class LicenceDetail:
    """Translation of a licence ``templateDetailedUseCode`` into use kind / description / type."""

    template_detailed_use_code: str
    lic_use_kind: str
    lic_use_desc: str
    lic_type: str


@dataclass(frozen=True, slots=True)
class ReferenceTables:
    """All reference tables at once, so pure functions can take one argument (and tests can fake it)."""

    types: tuple[TypeRef, ...]
    business_profiles: tuple[BusinessProfileRef, ...]
    country_codes: Mapping[str, str]
    substance_names: Mapping[str, str]
    licence_details: Mapping[str, LicenceDetail]

    def type_names(self, domain: str) -> frozenset[str]:
        """Accepted type names for ``domain``."""
        return frozenset(t.type for t in self.types if t.domain == domain)

    def business_profile_codes(self, domain: str) -> frozenset[str]:
        """Accepted high-level use codes for ``domain``."""
        return frozenset(p.highleveluses for p in self.business_profiles if p.domain == domain)

    def find_type(self, name: str, domain: str) -> TypeRef | None:
        """The type row for (name, domain), or None when the registry sent an unknown type."""
        for t in self.types:
            if t.type == name and t.domain == domain:
                return t
        return None

    def find_business_profile(
        self, code: str, domain: str, short_code: str | None = None
    ) -> BusinessProfileRef | None:
        """The business-profile row for (code, domain), or None when unknown.

        The lowest id wins, exactly like the legacy lookup on (highleveluses, domain): some codes
        appear twice with different short codes (ILAB id 25 / PLAB id 39), and the legacy linked
        the first row whatever short code the payload named, so a PLAB payload links the ILAB row.
        ``short_code`` is accepted for the callers' convenience and deliberately not used: the
        cache must link the rows BDR already sees.
        """
        del short_code  # see the docstring: the legacy lookup ignored it
        for profile in self.business_profiles:  # sorted by id (fixture_rows)
            if profile.highleveluses == code and profile.domain == domain:
                return profile
        return None

    def country_alpha2(self, english_name: str | None) -> str | None:
        """ISO alpha-2 for an English country short name (case-insensitive), None when unknown."""
        if english_name is None:
            return None
        return self.country_codes.get(country_name_key(english_name))

    def substance_name(self, ec_substance_name: str) -> str | None:
        """Corrected substance name for ``"<chemical> (virgin|non-virgin)"``, None when unknown."""
        return self.substance_names.get(ec_substance_name)

    def licence_detail(self, template_detailed_use_code: str | None) -> LicenceDetail | None:
        """Use kind / description / type for a detailed-use code, None when unknown."""
        if template_detailed_use_code is None:
            return None
        return self.licence_details.get(template_detailed_use_code)


def country_name_key(name: str) -> str:
    """Lookup key for country names.

    Case-insensitive like the legacy ``lower(a) == lower(b)`` query; surrounding blanks are also
    ignored because the upstream table itself stores ``"Finland "`` with a trailing space.
    """
    return name.strip().casefold()


def fixture_rows(filename: str, model: str) -> list[dict[str, Any]]:
    text = resources.files(_DATA_PACKAGE).joinpath(_DATA_DIR, filename).read_text(encoding="utf-8")
    rows = [item["fields"] for item in json.loads(text) if item.get("model") == model]
    # Lowest id first: duplicated keys then resolve the way the legacy `.first()` did.
    rows.sort(key=lambda f: f["id"])
    return rows


@functools.lru_cache(maxsize=1)
def load_types() -> tuple[TypeRef, ...]:
    """All accepted undertaking types (33 rows, both domains)."""
    return tuple(
        TypeRef(id=f["id"], type=f["type"], domain=f["domain"]) for f in fixture_rows("types.json", "Type")
    )


@functools.lru_cache(maxsize=1)
def load_business_profiles() -> tuple[BusinessProfileRef, ...]:
    """All accepted business profiles / high-level uses (39 rows, both domains)."""
    return tuple(
        BusinessProfileRef(
            id=f["id"],
            domain=f["domain"],
            highleveluses=f["highleveluses"],
            code=f["code"],
            short_code=f.get("short_code") or "",
        )
        for f in fixture_rows("business_profiles.json", "BusinessProfile")
    )


@functools.lru_cache(maxsize=1)
def load_country_codes() -> Mapping[str, str]:
    """Country English short name (key: :func:`country_name_key`) → alpha-2 code.

    Values are kept as the table says, including the empty code of NETHERLAND ANTILLES and the
    registry codes ``UK_GB`` / ``UK_NI``.
    """
    table: dict[str, str] = {}
    for f in fixture_rows("country_codes_conservion.json", "CountryCodesConversion"):
        table.setdefault(country_name_key(f["country_name_short_en"]), f["country_code_alpha2"])
    return MappingProxyType(table)


@functools.lru_cache(maxsize=1)
def load_substance_names() -> Mapping[str, str]:
    """EC substance name (``"<chemical> (virgin|non-virgin)"``, exact) → corrected name."""
    table: dict[str, str] = {}
    for f in fixture_rows("substance_name_conversion.json", "SubstanceNameConversion"):
        table.setdefault(f["ec_substance_name"], f["corrected_name"])
    return MappingProxyType(table)


@functools.lru_cache(maxsize=1)
def load_licence_details() -> Mapping[str, LicenceDetail]:
    """Licence ``templateDetailedUseCode`` (exact) → :class:`LicenceDetail`."""
    table: dict[str, LicenceDetail] = {}
    for f in fixture_rows("licence_details_conversion.json", "LicenceDetailsConversion"):
        table.setdefault(
            f["template_detailed_use_code"],
            LicenceDetail(
                template_detailed_use_code=f["template_detailed_use_code"],
                lic_use_kind=f["lic_use_kind"],
                lic_use_desc=f["lic_use_desc"],
                lic_type=f["lic_type"],
            ),
        )
    return MappingProxyType(table)


@functools.lru_cache(maxsize=1)
def load_reference_tables() -> ReferenceTables:
    """Every bundled table in one frozen object (cached)."""
    return ReferenceTables(
        types=load_types(),
        business_profiles=load_business_profiles(),
        country_codes=load_country_codes(),
        substance_names=load_substance_names(),
        licence_details=load_licence_details(),
    )
