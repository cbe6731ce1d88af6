"""Parsing of registry payloads into typed records (no I/O, no database).

* FGAS / ODS undertakings (one JSON object of the ``fgasundertakings`` / ``odsundertakings`` lists)
  → :class:`Undertaking`, mapped the way the legacy cache stored them (ODS ``eoriNumber`` goes to
  ``vat``, FGAS ``eori`` to ``eori_number``, ``zipCode`` to ``zipcode`` ...).
* Operator patches: ``PATCH_COMPANIES`` (shallow merge), ``PATCH_GB_OLD_REPR`` and ``PATCH_USERS``.
* Legacy BDR registry companies → :class:`OldCompany`.

Leniency follows the legacy service where it stored what it got: a key the parser does not know
(the registry added a field) is ignored and listed in ``unknown_fields`` for the run's report, and
the nulls the legacy stored (``name``, ``status``, ``eoriNumber``, ``registrationNumId``, ``eori``,
an empty ``userName``) are stored. Where the legacy let the ORM constructor explode (a missing
``id``, ``dateCreated``, ``contactPersons``, a bad date or contact type, a value of the wrong
shape), which lost the whole batch, every such problem raises :class:`RecordRejected` with a short
classified reason, so a pipeline can reject that one record and keep the others.
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ecr_pipelines.registry.reference import (
    DOMAINS,
    FGAS,
    ODS,
    BusinessProfileRef,
    ReferenceTables,
    load_reference_tables,
)

EU_TYPE = "EU_TYPE"
NONEU_TYPE = "NONEU_TYPE"
AMBIGUOUS_TYPE = "AMBIGUOUS_TYPE"

CONTACT_TYPES = frozenset(
    {
        "ORGANISATION_USER",
        "EUONLYREPRESENTATIVE_USER",
        "AUDITOR_ORG_FGAS",
        "AUDITOR_ORG_AND_VERIFIER",
        "AUDITOR_ORG_ONLY_VERIFIER",
    }
)

# Keys the legacy ORM mapping accepted; anything else made it fail, so the payload shape is closed.
_COMMON_KEYS = frozenset(
    {
        "@type",
        "id",
        "registrationNumId",
        "registrationId",
        "name",
        "address",
        "website",
        "phone",
        "domain",
        "status",
        "dateCreated",
        "dateUpdated",
        "contactPersons",
        "businessProfile",
        "types",
        "eori",
        "euLegalRepresentativeCompany",
    }
)
_DOMAIN_KEYS = {
    FGAS: _COMMON_KEYS | {"vat"},
    # ODS: the EORI lives in `eoriNumber` and is stored as `vat`; a stray `vat` key is overwritten.
    ODS: _COMMON_KEYS | {"eoriNumber", "vat"},
}
# Keys whose null or absence the legacy parser could not get past (it raised, losing the batch);
# `name` and `status` are not among them: the legacy stored their nulls.
_REQUIRED_KEYS = (
    "id",
    "address",
    "domain",
    "dateCreated",
    "dateUpdated",
    "contactPersons",
    "types",
)
_ADDRESS_KEYS = frozenset({"street", "number", "zipCode", "city", "country"})
_COUNTRY_KEYS = frozenset({"code", "name", "type"})
# camelCase from the registry; snake_case is what operators write in PATCH_GB_OLD_REPR.
_REPRESENTATIVE_ALIASES = {
    "vatnumber": ("vatNumber", "vatnumber"),
    "contact_first_name": ("contactPersonFirstName", "contact_first_name"),
    "contact_last_name": ("contactPersonLastName", "contact_last_name"),
    "contact_email": ("contactPersonEmailAddress", "contact_email"),
}
_REPRESENTATIVE_KEYS = frozenset({"name", "address"}) | {
    alias for aliases in _REPRESENTATIVE_ALIASES.values() for alias in aliases
}
_CONTACT_KEYS = frozenset({"userName", "firstName", "lastName", "emailAddress", "type"})
# Keys of a contact person the legacy parser popped without a default: their absence raised.
_CONTACT_REQUIRED_KEYS = ("userName", "firstName", "lastName", "emailAddress")
_PATCH_USER_KEYS = frozenset({"username", "first_name", "last_name", "email", "type"})
_OLD_COMPANY_KEYS = frozenset(
    {
        "pk",
        "name",
        "addr_street",
        "addr_postalcode",
        "addr_place1",
        "addr_place2",
        "eori",
        "vat_number",
        "active",
        "website",
        "country",
        "date_registered",
        "account",
    }
)


class RecordRejected(ValueError):
    """One registry record cannot be stored; ``reason`` says why in one short line.

    ``kind`` classifies the reason for counting: ``unknown_field``, ``missing_field``,
    ``bad_value``, ``bad_date`` or ``bad_contact_type``.
    """

    def __init__(self, reason: str, kind: str = "bad_value") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Country:
    """Country of an address, as the registry sends it (registry codes such as ``UK_GB``)."""

    code: str
    name: str | None
    type: str | None


@dataclass(frozen=True, slots=True)
class Address:
    """Postal address of an undertaking or of its EU representative."""

    street: str | None
    number: str | None
    zipcode: str | None
    city: str | None
    country: Country


@dataclass(frozen=True, slots=True)
class Representative:
    """EU legal representative of a non-EU FGAS undertaking; identity is ``vatnumber``."""

    name: str | None
    address: Address
    vatnumber: str
    contact_first_name: str
    contact_last_name: str
    contact_email: str


@dataclass(frozen=True, slots=True)
class ContactPerson:
    """Registry user allowed to report for an undertaking.

    The stored user is found by ``username``, else by ``email`` (legacy rule, see
    ``store.undertakings``). ``has_type`` tells whether the payload carried a ``type`` key at all:
    the legacy only overwrote a known user's type when it did.
    """

    username: str
    first_name: str | None
    last_name: str | None
    email: str | None
    type: str | None = None
    has_type: bool = field(default=False, compare=False)

    @property
    def ecas_id(self) -> str | None:
        """The ECAS id to store when the user has none yet: the username unless it is an e-mail."""
        return None if "@" in self.username else self.username


@dataclass(frozen=True, slots=True)
class Undertaking:
    """One FGAS or ODS company, mapped to the cache's columns. Natural key: (external_id, domain).

    ``types`` / ``business_profiles`` hold only entries present in the reference tables (what the
    cache links); entries the tables do not know are kept in ``unknown_types`` /
    ``unknown_business_profiles`` so they can be logged.
    """

    external_id: int
    domain: str
    registration_id: str | None
    name: str | None
    address: Address
    website: str | None
    phone: str | None
    status: str | None
    date_created: date
    date_updated: date
    undertaking_type: str
    vat: str | None
    eori_number: str | None
    represent: Representative | None
    contact_persons: tuple[ContactPerson, ...]
    types: tuple[str, ...]
    business_profiles: tuple[BusinessProfileRef, ...]
    unknown_types: tuple[str, ...] = field(default=())
    unknown_business_profiles: tuple[str, ...] = field(default=())
    # Payload keys nobody reads (``address.floor``, ``contactPersons[].role`` ...), for the report.
    unknown_fields: tuple[str, ...] = field(default=())

    @property
    def country_code_orig(self) -> str:
        """Code of the address country (the ``country_code_orig`` column)."""
        return self.address.country.code


@dataclass(frozen=True, slots=True)
class OldCompany:
    """Company of the legacy BDR registry (matching candidate pool). Key: ``external_id`` (BDR pk)."""

    external_id: int
    name: str
    country_code: str | None
    account: str | None
    vat_number: str | None
    eori: str | None
    active: bool | None
    website: str | None
    date_registered: datetime | None
    obligation: str
    unknown_fields: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------------------------
# small validators


def _missing(path: str) -> RecordRejected:
    return RecordRejected(f"missing {path}", "missing_field")


def _note_unknown(
    obj: Mapping[str, Any], allowed: Iterable[str], prefix: str, unknown: list[str] | None
) -> None:
    """Collect the keys nobody reads (the registry added a field): ignored, as the legacy's store
    ignored them, but listed so that the run reports them."""
    if unknown is not None:
        unknown.extend(f"{prefix}{k}" for k in sorted(str(k) for k in obj if k not in allowed))


def _check_keys(obj: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    """Strict variant for the operator's own patch file, where an unknown key is a typo."""
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        names = ", ".join(f"'{prefix}{k}'" for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise RecordRejected(f"unknown field{plural} {names}", "unknown_field")


def _opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RecordRejected(f"bad value in {path}: {value!r}")
    # Numbers sneak in for phone/number/zipCode fields; the columns are text.
    return value if isinstance(value, str) else str(value)


def _parse_int(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise RecordRejected(f"bad value in {path}: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise RecordRejected(f"bad value in {path}: {value!r}")


def parse_registry_date(value: Any, path: str = "date") -> date:
    """Parse a registry ``DD/MM/YYYY`` date; anything else raises :class:`RecordRejected`."""
    if not isinstance(value, str):
        raise RecordRejected(f"bad date in {path}: {value!r}", "bad_date")
    try:
        return datetime.strptime(value, "%d/%m/%Y").date()
    except ValueError:
        raise RecordRejected(f"bad date in {path}: {value!r}", "bad_date") from None


def high_level_uses(business_profile: Any) -> list[tuple[str, str]] | None:
    """``(code, short_code)`` pairs of a raw ``businessProfile``; None when it is null/empty.

    Accepts the old shape ``{"highLevelUses": ["code", ...]}``, the 2026 shape
    ``{"highLevelUses": [{"code": ..., "shortCode": ...}]}`` and, defensively, a bare list of either.
    Raises :class:`RecordRejected` on anything else.
    """
    if not business_profile:
        return None
    if isinstance(business_profile, Mapping):
        # Other keys of the profile object were never read by the legacy cache: tolerated.
        uses = business_profile.get("highLevelUses") or []
    else:
        uses = business_profile
    if not isinstance(uses, list):
        raise RecordRejected("bad value in businessProfile.highLevelUses: expected a list")
    result: list[tuple[str, str]] = []
    for use in uses:
        if isinstance(use, str):
            result.append((use, ""))
        elif isinstance(use, Mapping) and isinstance(use.get("code"), str):
            result.append((use["code"], use.get("shortCode") or ""))
        else:
            raise RecordRejected(f"bad value in businessProfile.highLevelUses: {use!r}")
    return result


# --------------------------------------------------------------------------------------------------
# undertakings


def parse_country(raw: Any, path: str, unknown: list[str] | None = None) -> Country:
    """Parse an address ``country`` object (``code`` required); unknown keys go to ``unknown``."""
    if raw is None:
        raise _missing(path)
    if not isinstance(raw, Mapping):
        raise RecordRejected(f"bad value in {path}: expected an object")
    _note_unknown(raw, _COUNTRY_KEYS, f"{path}.", unknown)
    code = _opt_str(raw, "code", f"{path}.code")
    if not code:
        raise _missing(f"{path}.code")
    return Country(
        code=code, name=_opt_str(raw, "name", f"{path}.name"), type=_opt_str(raw, "type", f"{path}.type")
    )


def parse_address(raw: Any, path: str = "address", unknown: list[str] | None = None) -> Address:
    """Parse an ``address`` object; ``zipCode`` becomes ``zipcode``."""
    if raw is None:
        raise _missing(path)
    if not isinstance(raw, Mapping):
        raise RecordRejected(f"bad value in {path}: expected an object")
    _note_unknown(raw, _ADDRESS_KEYS, f"{path}.", unknown)
    return Address(
        street=_opt_str(raw, "street", f"{path}.street"),
        number=_opt_str(raw, "number", f"{path}.number"),
        zipcode=_opt_str(raw, "zipCode", f"{path}.zipCode"),
        city=_opt_str(raw, "city", f"{path}.city"),
        country=parse_country(raw.get("country"), f"{path}.country", unknown),
    )


def parse_representative(raw: Any, unknown: list[str] | None = None) -> Representative | None:
    """Parse ``euLegalRepresentativeCompany`` (camelCase or the snake_case of patches).

    Null or ``{}`` means no representative, as in the legacy parser; missing text fields become "".
    """
    path = "euLegalRepresentativeCompany"
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise RecordRejected(f"bad value in {path}: expected an object")
    _note_unknown(raw, _REPRESENTATIVE_KEYS, f"{path}.", unknown)
    values: dict[str, str] = {}
    for target, aliases in _REPRESENTATIVE_ALIASES.items():
        # First non-empty alias wins, like `pop(camel, "") or pop(snake, "")` did.
        values[target] = next((v for a in aliases if (v := _opt_str(raw, a, f"{path}.{a}"))), "")
    return Representative(
        name=_opt_str(raw, "name", f"{path}.name"),
        address=parse_address(raw.get("address"), f"{path}.address", unknown),
        **values,
    )


def parse_contact_person(
    raw: Any, path: str = "contactPersons[0]", unknown: list[str] | None = None
) -> ContactPerson:
    """Parse one registry contact person (the four name/e-mail keys present, ``type`` validated).

    An empty or null ``userName`` is stored as "" like the legacy did (the ODS checks flag it); it
    does not reject the company.
    """
    if not isinstance(raw, Mapping):
        raise RecordRejected(f"bad value in {path}: expected an object")
    _note_unknown(raw, _CONTACT_KEYS, f"{path}.", unknown)
    for key in _CONTACT_REQUIRED_KEYS:
        if key not in raw:
            raise _missing(f"{path}.{key}")
    return ContactPerson(
        username=_opt_str(raw, "userName", f"{path}.userName") or "",
        first_name=_opt_str(raw, "firstName", f"{path}.firstName"),
        last_name=_opt_str(raw, "lastName", f"{path}.lastName"),
        email=_opt_str(raw, "emailAddress", f"{path}.emailAddress"),
        type=_contact_type(raw.get("type")),
        has_type="type" in raw,
    )


def _contact_type(value: Any) -> str | None:
    if value is None:
        return None
    if value not in CONTACT_TYPES:
        raise RecordRejected(f"bad contact type {value!r}", "bad_contact_type")
    return str(value)


def parse_patch_users(entries: Sequence[Mapping[str, Any]] | None) -> list[ContactPerson]:
    """Parse the ``PATCH_USERS[<external id>]`` list (snake_case keys) into contact persons.

    The result is meant to be appended to the payload's contact persons (see
    :func:`parse_undertaking`'s ``extra_contact_persons``).
    """
    persons: list[ContactPerson] = []
    for index, raw in enumerate(entries or ()):
        path = f"PATCH_USERS[{index}]"
        if not isinstance(raw, Mapping):
            raise RecordRejected(f"bad value in {path}: expected an object")
        _check_keys(raw, _PATCH_USER_KEYS, f"{path}.")
        username = _opt_str(raw, "username", f"{path}.username")
        if not username:
            raise _missing(f"{path}.username")
        persons.append(
            ContactPerson(
                username=username,
                first_name=_opt_str(raw, "first_name", f"{path}.first_name"),
                last_name=_opt_str(raw, "last_name", f"{path}.last_name"),
                email=_opt_str(raw, "email", f"{path}.email"),
                type=_contact_type(raw.get("type")),
                has_type="type" in raw,
            )
        )
    return persons


def apply_company_patch(raw: Mapping[str, Any], patch: Mapping[str, Any] | None) -> dict[str, Any]:
    """``PATCH_COMPANIES`` semantics: top-level keys of ``patch`` replace those of ``raw``.

    Shallow on purpose (a patched ``address`` replaces the whole address). Returns a new dict; the
    input is not modified, so the double checks can keep working on the unpatched record.
    """
    merged = dict(raw)
    if patch:
        merged.update(patch)
    return merged


def apply_gb_old_representative_patch(
    raw: Mapping[str, Any], patch: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``PATCH_GB_OLD_REPR`` semantics (FGAS): merge the patch only when the record has no representative."""
    if patch and not raw.get("euLegalRepresentativeCompany"):
        return apply_company_patch(raw, patch)
    return dict(raw)


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def parse_undertaking(
    raw: Mapping[str, Any],
    refs: ReferenceTables | None = None,
    extra_contact_persons: Sequence[ContactPerson] = (),
) -> Undertaking:
    """Parse one (already patched) FGAS/ODS undertaking record into an :class:`Undertaking`.

    ``extra_contact_persons`` (from :func:`parse_patch_users`) are appended to the payload's
    persons. Raises :class:`RecordRejected` for missing required fields (the ``eoriNumber`` key for
    ODS; its null is stored), bad dates, bad contact types and wrongly typed values. Keys it does not
    know are ignored and listed in ``unknown_fields``.
    """
    if not isinstance(raw, Mapping):
        raise RecordRejected("bad value in record: expected an object")
    refs = refs or load_reference_tables()

    domain = raw.get("domain")
    if domain is None:
        raise _missing("domain")
    if domain not in DOMAINS:
        raise RecordRejected(f"bad value in domain: {domain!r}")
    unknown: list[str] = []
    _note_unknown(raw, _DOMAIN_KEYS[domain], "", unknown)
    for key in _REQUIRED_KEYS:
        if raw.get(key) is None:
            raise _missing(key)
    # The legacy read the ODS EORI without a default: its absence raised, its null was stored.
    if domain == ODS and "eoriNumber" not in raw:
        raise _missing("eoriNumber")

    external_id = _parse_int(raw["id"], "id")
    name = _opt_str(raw, "name", "name")
    status = _opt_str(raw, "status", "status")
    address = parse_address(raw["address"], unknown=unknown)
    date_created = parse_registry_date(raw["dateCreated"], "dateCreated")
    date_updated = parse_registry_date(raw["dateUpdated"], "dateUpdated")

    contacts_raw = raw["contactPersons"]
    if not isinstance(contacts_raw, list):
        raise RecordRejected("bad value in contactPersons: expected a list")
    contacts = [
        parse_contact_person(cp, f"contactPersons[{i}]", unknown) for i, cp in enumerate(contacts_raw)
    ]
    contacts.extend(extra_contact_persons)

    types_raw = raw["types"]
    if not isinstance(types_raw, list) or not all(isinstance(t, str) for t in types_raw):
        raise RecordRejected("bad value in types: expected a list of strings")
    known_types = refs.type_names(domain)
    types = _dedupe(t for t in types_raw if t in known_types)
    unknown_types = _dedupe(t for t in types_raw if t not in known_types)

    profiles: list[BusinessProfileRef] = []
    unknown_profiles: list[str] = []
    for code, short_code in high_level_uses(raw.get("businessProfile")) or []:
        ref = refs.find_business_profile(code, domain, short_code)
        if ref is None:
            unknown_profiles.append(code)
        elif ref not in profiles:
            profiles.append(ref)

    if domain == ODS:
        # Sic: the ODS EORI is stored in `vat`; ODS undertakings never have a representative.
        vat = _opt_str(raw, "eoriNumber", "eoriNumber")
        represent = None
    else:
        vat = _opt_str(raw, "vat", "vat")
        represent = parse_representative(raw.get("euLegalRepresentativeCompany"), unknown)

    return Undertaking(
        external_id=external_id,
        domain=domain,
        # Absent → "" (the legacy's default), null → NULL (the legacy stored it).
        registration_id=_opt_str(raw, "registrationNumId", "registrationNumId")
        if "registrationNumId" in raw
        else "",
        name=name,
        address=address,
        website=_opt_str(raw, "website", "website"),
        phone=_opt_str(raw, "phone", "phone"),
        status=status,
        date_created=date_created,
        date_updated=date_updated,
        undertaking_type=f"{domain}Undertaking",
        vat=vat,
        eori_number=_opt_str(raw, "eori", "eori") if "eori" in raw else "",
        represent=represent,
        contact_persons=tuple(contacts),
        types=types,
        business_profiles=tuple(profiles),
        unknown_types=unknown_types,
        unknown_business_profiles=_dedupe(unknown_profiles),
        unknown_fields=_dedupe(_generic_path(u) for u in unknown),
    )


_INDEX = re.compile(r"\[\d+\]")


def _generic_path(path: str) -> str:
    """``contactPersons[3].role`` → ``contactPersons[].role``: one line per field in the report."""
    return _INDEX.sub("[]", path)


# --------------------------------------------------------------------------------------------------
# legacy BDR registry ("old companies")

# The registry formats date_registered with "%Y/%m/%d %H:%I:%s": 24h hour, then the 12h hour,
# then epoch seconds. The legacy cache cut the last 11 characters (":" and a 10-digit epoch) and
# parsed the rest as "%Y/%m/%d %H:%M", so the stored "minute" is really the 12-hour hour. Kept
# exactly, fixed cut included: with a 9-digit epoch (before September 2001) the cut eats one digit
# of the 12-hour hour ("2001/01/02 09:09:978426000" → 09:00), and the old companies' dates must
# be the ones the legacy showed.
_BDR_DATE_CUT = 11


def parse_bdr_date_registered(value: Any) -> datetime | None:
    """Parse the BDR ``date_registered`` string with the legacy rule (None when null or empty).

    ``"2013/05/02 14:02:1367503320"`` → ``datetime(2013, 5, 2, 14, 2)``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return datetime.strptime(value[:-_BDR_DATE_CUT], "%Y/%m/%d %H:%M")
        except ValueError:
            pass
    raise RecordRejected(f"bad date in date_registered: {value!r}", "bad_date")


def bdr_obligation_slug(domain: str) -> str:
    """BDR registry URL slug of a domain/obligation: lower-cased, ``fgas`` → ``fgases``."""
    slug = domain.strip().lower()
    return "fgases" if slug == "fgas" else slug


def parse_old_company(raw: Mapping[str, Any], obligation: str) -> OldCompany:
    """Parse one BDR registry company; ``obligation`` is the configured domain string it came from.

    The ``addr_*`` fields are dropped (the cache never stored them); ``country.code`` becomes
    ``country_code``. Keys it does not know are ignored and listed in ``unknown_fields``.
    """
    if not isinstance(raw, Mapping):
        raise RecordRejected("bad value in record: expected an object")
    unknown: list[str] = []
    _note_unknown(raw, _OLD_COMPANY_KEYS, "", unknown)
    if raw.get("pk") is None:
        raise _missing("pk")
    country = raw.get("country")
    if country is not None and not isinstance(country, Mapping):
        raise RecordRejected("bad value in country: expected an object")
    active = raw.get("active")
    if active is not None and not isinstance(active, bool):
        raise RecordRejected(f"bad value in active: {active!r}")
    return OldCompany(
        external_id=_parse_int(raw["pk"], "pk"),
        name=_opt_str(raw, "name", "name") or "",
        country_code=_opt_str(country, "code", "country.code") if country else None,
        account=_opt_str(raw, "account", "account"),
        vat_number=_opt_str(raw, "vat_number", "vat_number"),
        eori=_opt_str(raw, "eori", "eori"),
        active=active,
        website=_opt_str(raw, "website", "website"),
        date_registered=parse_bdr_date_registered(raw.get("date_registered")),
        obligation=obligation,
        unknown_fields=tuple(unknown),
    )
