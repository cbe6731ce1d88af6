"""Business rules of the registry cache sync (pure functions, no I/O).

* :func:`check_fgas` / :func:`check_ods` — the "EEA double checks" that set ``check_passed``;
  they run on the raw, *unpatched* record and return the failed-rule messages.
* :func:`derive_country_code` — the derived ``country_code`` column.
* :func:`updated_since` — the sync window (fixed: ``-d``/``-u`` are honoured for both domains).
* :func:`diff_contact_persons` — which users to link, update and unlink (fixed: exactly the
  persons missing from the payload are unlinked, including "all of them").
* :func:`representative_change` / :func:`country_history_additions` — representative and country
  history transitions of an upsert.
"""

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from ecr_pipelines.registry.parse import (
    AMBIGUOUS_TYPE,
    EU_TYPE,
    NONEU_TYPE,
    ContactPerson,
    RecordRejected,
    Representative,
    Undertaking,
    high_level_uses,
)
from ecr_pipelines.registry.reference import FGAS, ODS, ReferenceTables, load_reference_tables

FGAS_MANUFACTURER_ONLY_TYPE = "FGAS_MANUFACTURER_OF_EQUIPMENT_HFCS"
FGAS_ACCEPTED_STATUSES = frozenset({"VALID", "REVISION", "REPORTING_ONLY"})
ODS_ACCEPTED_STATUSES = frozenset({"VALID", "REVISION"})
# Companies whose types are all in these sets have nothing to report.
NOT_OBLIGED_TO_REPORT_FGAS_TYPES = frozenset({"EXPORTER_OF_EQUIPMENT_HFCS", "EXPORTER_HFCS"})
NOT_OBLIGED_TO_REPORT_ODS_TYPES = frozenset({"IMPORTER", "IMPORTER_ODS", "EXPORTER", "EXPORTER_ODS"})
# ODS types that may have no high-level uses at all.
NO_HIGHLEVEL_TYPES = frozenset(
    {
        "REPACKAGER",
        "PRODUCER",
        "ODS_DESTROYER",
        "ODS_FEEDSTOCK_USER",
        "ODS_PROCESS_AGENT_USER",
        "ODS_STOCKS_HOLDER",
        "ODS_NEW_SUBSTANCES_PRODUCER_IMP_EXP",
        "ODS_PRODUCER_IN_EU",
    }
)
# ODS high-level uses that on their own create no reporting obligation.
NOT_OBLIGED_TO_REPORT = frozenset(
    {
        "import.of.products.or.equipment.for.laboratory.or.analytical.use",
        "import.of.products.or.equipment.containing.halon.for.critical.use.on.aircrafts",
        "export.of.products.or.equipment.containing.halon.for.critical.use.on.aircrafts",
        "import.of.products.or.equipment.for.destruction",
        "import.of.products.or.equipment.containing.halon.for.critical.uses.on.units.other.than.aircrafts",
        "export.of.products.or.equipment.covered.by.an.exemption.decision",
        "export.of.products.or.equipment.for.laboratory.or.analytical.use",
        "import.of.methyl.bromide.for.repackaging.and.re-export",
        "export.of.methyl.bromide.for.quarantine.and.pre-shipment.use",
        "import.of.products.or.equipment.covered.by.an.exemption.decision",
        "export.of.products.or.equipment.containing.halon.for.critical.uses.on.units.other.than.aircrafts",
        "export.of.metered.dose.inhalers",
    }
)
_ODS_REQUIRED_FIELDS = (
    "id",
    "name",
    "address",
    "phone",
    "domain",
    "dateCreated",
    "dateUpdated",
    "status",
    "eoriNumber",
    "types",
    "businessProfile",
)
_ODS_COUNTRY_FIELDS = ("code", "name", "type")
_ODS_CONTACT_FIELDS = ("userName", "firstName", "lastName", "emailAddress")


# --------------------------------------------------------------------------------------------------
# EEA double checks


def _is_excepted(raw: Mapping[str, Any], excepted: Collection[str | int]) -> bool:
    # The setting is a comma list of strings; compare as text so ints and strings both work.
    wanted = {str(e).strip() for e in excepted if str(e).strip()}
    return str(raw.get("id")) in wanted


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _one_of(value: Any, allowed: Collection[str]) -> bool:
    """``value in allowed`` that never raises: a list or object in ``status`` is unhashable, and
    a check must report it as a failure of that record, not crash the domain's batch."""
    return isinstance(value, str) and value in allowed


def _str_list(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _uses(raw: Mapping[str, Any]) -> tuple[bool, list[str], list[str]]:
    """(businessProfile present?, use codes, malformed-profile messages) of a raw record."""
    try:
        uses = high_level_uses(raw.get("businessProfile"))
    except RecordRejected as exc:
        return True, [], [f"Organisation businessProfile is malformed: {exc.reason}."]
    if uses is None:
        return False, [], []
    return True, [code for code, _ in uses], []


def check_fgas(
    raw: Mapping[str, Any],
    refs: ReferenceTables | None = None,
    excepted: Collection[str | int] = (),
) -> list[str]:
    """EEA double checks for one raw FGAS record; returns failed-rule messages ([] = passed).

    ``excepted`` is ``COMPANIES_EXCEPTED_FROM_CHECKS`` (external ids); those pass immediately.
    Never raises on malformed input: missing pieces are reported as failures.
    """
    if _is_excepted(raw, excepted):
        return []
    refs = refs or load_reference_tables()
    failures: list[str] = []
    country = _mapping(_mapping(raw.get("address")).get("country"))
    types = _str_list(raw.get("types"))

    if country.get("type") in (NONEU_TYPE, AMBIGUOUS_TYPE) and not raw.get("euLegalRepresentativeCompany"):
        failures.append("NONEU_TYPE and AMBIGUOUS_TYPE companies must have a representative.")
    if types == [FGAS_MANUFACTURER_ONLY_TYPE]:
        failures.append("Equipment manufacturers only have no reporting obligations.")
    if not _one_of(raw.get("status"), FGAS_ACCEPTED_STATUSES):
        failures.append(
            f"Organisation status {raw.get('status')!r} is not VALID, REVISION or REPORTING_ONLY."
        )
    has_profile, uses, malformed = _uses(raw)
    failures.extend(malformed)
    if not has_profile:
        # An empty highLevelUses list inside a profile object passes, as in the legacy check.
        failures.append("Organisation has no businessProfile.")
    elif any(not use.startswith("fgas.") for use in uses):
        failures.append("Organisation highLevelUses elements don't start with 'fgas.'.")
    if set(types) <= NOT_OBLIGED_TO_REPORT_FGAS_TYPES:
        failures.append(f"Organisation types {types} should not report.")
    accepted = refs.type_names(FGAS)
    failures.extend(f"Organisation type {t} is not accepted." for t in types if t not in accepted)
    if raw.get("domain") != FGAS:
        failures.append("Organisation domain is not FGAS.")
    return failures


def check_ods(
    raw: Mapping[str, Any],
    refs: ReferenceTables | None = None,
    excepted: Collection[str | int] = (),
) -> list[str]:
    """EEA double checks for one raw ODS record; returns failed-rule messages ([] = passed).

    ``excepted`` is ``COMPANIES_EXCEPTED_FROM_CHECKS`` (external ids); those pass immediately.
    Never raises on malformed input: missing pieces are reported as failures.
    """
    if _is_excepted(raw, excepted):
        return []
    refs = refs or load_reference_tables()
    failures: list[str] = []

    failures.extend(f"Organisation {f} field is missing." for f in _ODS_REQUIRED_FIELDS if not raw.get(f))
    if raw.get("domain") != ODS:
        failures.append("Organisation domain is not ODS.")
    if not _one_of(raw.get("status"), ODS_ACCEPTED_STATUSES):
        failures.append(f"Organisation status {raw.get('status')!r} is not VALID or REVISION.")

    country = _mapping(raw.get("address")).get("country")
    if not country or not isinstance(country, Mapping):
        failures.append("Organisation address country is missing.")
        country = {}
    else:
        failures.extend(
            f"Organisation country {f} is missing." for f in _ODS_COUNTRY_FIELDS if not country.get(f)
        )
    if country.get("type") not in (EU_TYPE, AMBIGUOUS_TYPE):
        failures.append("Organisation country type is not EU_TYPE or AMBIGUOUS_TYPE.")

    contacts = raw.get("contactPersons")
    for index, person in enumerate(contacts if isinstance(contacts, list) else []):
        person = _mapping(person)
        failures.extend(
            f"Organisation user {f} is missing (contact #{index})."
            for f in _ODS_CONTACT_FIELDS
            if not person.get(f)
        )

    types = _str_list(raw.get("types"))
    accepted_types = refs.type_names(ODS)
    failures.extend(f"Organisation type {t} is not accepted." for t in types if t not in accepted_types)
    if set(types) <= NOT_OBLIGED_TO_REPORT_ODS_TYPES:
        failures.append(f"Organisation types {types} should not report.")

    _, uses, malformed = _uses(raw)
    failures.extend(malformed)
    exempt_from_uses = bool(set(types) & NO_HIGHLEVEL_TYPES)
    if not uses and not exempt_from_uses:
        failures.append("Organisation high level uses are missing.")
    accepted_uses = refs.business_profile_codes(ODS)
    failures.extend(
        f"Organisation highlevel use {u} is not accepted." for u in uses if u not in accepted_uses
    )
    obliged = any(u in accepted_uses and u not in NOT_OBLIGED_TO_REPORT for u in uses)
    if uses and not obliged and not exempt_from_uses:
        failures.append(
            f"Organisations with highlevel uses {', '.join(dict.fromkeys(uses))} should not report."
        )
    return failures


def run_double_checks(
    raw: Mapping[str, Any],
    domain: str,
    refs: ReferenceTables | None = None,
    excepted: Collection[str | int] = (),
) -> list[str]:
    """Dispatch to :func:`check_fgas` or :func:`check_ods` by the endpoint's domain."""
    if domain == FGAS:
        return check_fgas(raw, refs, excepted)
    if domain == ODS:
        return check_ods(raw, refs, excepted)
    raise ValueError(f"unknown domain {domain!r}")


# --------------------------------------------------------------------------------------------------
# derived country code


def derive_country_code(undertaking: Undertaking) -> str | None:
    """The derived ``country_code``: where the company reports from.

    AMBIGUOUS address country → representative's country if any, else the address country;
    EU address → address country; otherwise the representative's country; a non-EU company
    without representative whose first type is the equipment-manufacturer type → ``"NON_EU"``;
    else None.
    """
    country = undertaking.address.country
    rep = undertaking.represent
    rep_code = rep.address.country.code if rep else None
    if country.type == AMBIGUOUS_TYPE:
        return rep_code or country.code
    if country.type == EU_TYPE:
        return country.code
    if rep_code:
        return rep_code
    if undertaking.types and undertaking.types[0] == FGAS_MANUFACTURER_ONLY_TYPE:
        return "NON_EU"
    return None


# --------------------------------------------------------------------------------------------------
# sync window


def updated_since(
    days: int | None,
    explicit: date | None,
    last_date_updated: date | None,
    today: date,
) -> date | None:
    """The ``updatedSince`` filter of an undertaking sync (None = fetch everything).

    An explicit date wins; else ``days > 0`` gives ``today - days``; else the newest
    ``date_updated`` already stored for the domain minus one day; else None (empty table).
    """
    if explicit is not None:
        return explicit
    if days is not None and days > 0:
        return today - timedelta(days=days)
    if last_date_updated is not None:
        return last_date_updated - timedelta(days=1)
    return None


# --------------------------------------------------------------------------------------------------
# contact persons


@dataclass(frozen=True, slots=True)
class ContactDiff:
    """What an upsert must do with an undertaking's contact persons (keyed by username)."""

    to_add: tuple[ContactPerson, ...]
    to_update: tuple[ContactPerson, ...]
    to_remove: tuple[str, ...]


def diff_contact_persons(
    current: Iterable[ContactPerson | str],
    incoming: Sequence[ContactPerson],
) -> ContactDiff:
    """Compare the persons linked now with the payload's persons.

    ``current`` holds the linked users, as :class:`ContactPerson` (then unchanged users are left
    out of ``to_update``) or as bare usernames (then every kept user is in ``to_update``).
    Usernames repeated in the payload collapse to the last entry, so a ``PATCH_USERS`` entry
    appended after the payload overrides it. ``to_remove`` is exactly the current usernames
    missing from the payload — all of them when the payload is empty.
    """
    wanted: dict[str, ContactPerson] = {}
    for person in incoming:
        wanted.pop(person.username, None)
        wanted[person.username] = person

    known: dict[str, ContactPerson | None] = {}
    for item in current:
        if isinstance(item, str):
            known[item] = None
        else:
            known[item.username] = item

    to_add = tuple(p for u, p in wanted.items() if u not in known)
    to_update = tuple(p for u, p in wanted.items() if u in known and known[u] != p)
    to_remove = tuple(u for u in known if u not in wanted)
    return ContactDiff(to_add=to_add, to_update=to_update, to_remove=to_remove)


# --------------------------------------------------------------------------------------------------
# representative and country history


class RepresentativeChangeKind(enum.Enum):
    """How the EU legal representative changes in one upsert."""

    NONE = "none"  # none before, none now
    CREATED = "created"  # none before, one now
    REMOVED = "removed"  # one before, none now: the old one goes to history
    REPLACED = "replaced"  # VAT number changed: old one to history, new row
    UPDATED = "updated"  # same VAT number: update the row and its address in place


@dataclass(frozen=True, slots=True)
class RepresentativeChange:
    """Outcome of :func:`representative_change`.

    ``to_history`` is the old representative to append to ``represent_history``; ``changed`` is
    the legacy ``represent_changed`` flag (queues a BDR collection call).
    """

    kind: RepresentativeChangeKind
    to_history: Representative | None
    new: Representative | None

    @property
    def changed(self) -> bool:
        """True for CREATED, REMOVED and REPLACED."""
        return self.kind in (
            RepresentativeChangeKind.CREATED,
            RepresentativeChangeKind.REMOVED,
            RepresentativeChangeKind.REPLACED,
        )


def representative_change(old: Representative | None, new: Representative | None) -> RepresentativeChange:
    """Classify the representative transition of an upsert (identity = exact VAT number)."""
    if old is None and new is None:
        return RepresentativeChange(RepresentativeChangeKind.NONE, None, None)
    if old is None:
        return RepresentativeChange(RepresentativeChangeKind.CREATED, None, new)
    if new is None:
        return RepresentativeChange(RepresentativeChangeKind.REMOVED, old, None)
    if (old.vatnumber or "") != (new.vatnumber or ""):
        return RepresentativeChange(RepresentativeChangeKind.REPLACED, old, new)
    return RepresentativeChange(RepresentativeChangeKind.UPDATED, None, new)


def country_history_additions(
    previous_country_code: str | None,
    undertaking: Undertaking,
    change: RepresentativeChange,
    existing_history: Iterable[str] = (),
) -> list[str]:
    """Country codes to append to ``country_history`` in this upsert (deduplicated).

    The previous address country when the address country code changed; and the (new) address
    country when a representative appears for an AMBIGUOUS_TYPE company.
    """
    seen = set(existing_history)
    additions: list[str] = []

    def add(code: str | None) -> None:
        if code and code not in seen:
            seen.add(code)
            additions.append(code)

    current = undertaking.address.country
    if previous_country_code and previous_country_code != current.code:
        add(previous_country_code)
    if change.kind is RepresentativeChangeKind.CREATED and current.type == AMBIGUOUS_TYPE:
        add(current.code)
    return additions
