"""Tests of the registry sync rules: double checks, derived country, window, contacts, representative."""

import copy
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from ecr_pipelines.registry.parse import ContactPerson, parse_undertaking
from ecr_pipelines.registry.rules import (
    RepresentativeChangeKind,
    check_fgas,
    check_ods,
    country_history_additions,
    derive_country_code,
    diff_contact_persons,
    representative_change,
    run_double_checks,
    updated_since,
)
from ecr_pipelines_tests.registry.test_parse import fgas_record, ods_record


def _rep(country: str, vat: str = "REPVAT1") -> dict[str, Any]:
    return {
        "name": f"Rep {country}",
        "vatNumber": vat,
        "contactPersonFirstName": "A",
        "contactPersonLastName": "B",
        "contactPersonEmailAddress": "rep@example.test",
        "address": {
            "street": "s",
            "number": "1",
            "zipCode": "1",
            "city": "c",
            "country": {"code": country, "name": country, "type": "EU_TYPE"},
        },
    }


def _address(code: str, country_type: str) -> dict[str, Any]:
    return {
        "street": "s",
        "number": "1",
        "zipCode": "1",
        "city": "c",
        "country": {"code": code, "name": code, "type": country_type},
    }


# --------------------------------------------------------------------------------------------------
# derived country code


@pytest.mark.parametrize(
    ("address", "rep", "types", "expected"),
    [
        # CN company with an NL (10006-like) or BE (10007-like) representative → the rep's country.
        (_address("CN", "NONEU_TYPE"), _rep("NL"), ["FGAS_PRODUCER_IMPORTER_HFCS"], "NL"),
        (_address("CN", "NONEU_TYPE"), _rep("BE"), ["FGAS_PRODUCER_IMPORTER_HFCS"], "BE"),
        (_address("IE", "EU_TYPE"), None, ["FGAS_PRODUCER_IMPORTER_HFCS"], "IE"),
        (_address("IE", "EU_TYPE"), _rep("BE"), ["FGAS_PRODUCER_IMPORTER_HFCS"], "IE"),
        (_address("CN", "NONEU_TYPE"), None, ["FGAS_MANUFACTURER_OF_EQUIPMENT_HFCS"], "NON_EU"),
        (
            _address("CN", "NONEU_TYPE"),
            None,
            ["FGAS_MANUFACTURER_OF_EQUIPMENT_HFCS", "FGAS_PRODUCER_IMPORTER_HFCS"],
            "NON_EU",
        ),
        (_address("CN", "NONEU_TYPE"), None, ["FGAS_PRODUCER_IMPORTER_HFCS"], None),
        (
            _address("CN", "NONEU_TYPE"),
            None,
            ["FGAS_PRODUCER_IMPORTER_HFCS", "FGAS_MANUFACTURER_OF_EQUIPMENT_HFCS"],
            None,
        ),
        (_address("UK_NI", "AMBIGUOUS_TYPE"), None, ["FGAS_PRODUCER_IMPORTER_HFCS"], "UK_NI"),
        (_address("UK_NI", "AMBIGUOUS_TYPE"), _rep("IE"), ["FGAS_PRODUCER_IMPORTER_HFCS"], "IE"),
    ],
)
def test_derive_country_code(
    address: dict[str, Any], rep: dict[str, Any] | None, types: list[str], expected: str | None
) -> None:
    u = parse_undertaking(fgas_record(address=address, euLegalRepresentativeCompany=rep, types=types))
    assert derive_country_code(u) == expected


# --------------------------------------------------------------------------------------------------
# EEA double checks


def test_valid_records_pass() -> None:
    assert check_fgas(fgas_record()) == []
    assert check_ods(ods_record()) == []
    assert run_double_checks(fgas_record(), "FGAS") == []
    assert run_double_checks(ods_record(), "ODS") == []
    with pytest.raises(ValueError):
        run_double_checks(ods_record(), "XYZ")


def test_fgas_empty_high_level_use_list_passes() -> None:
    assert check_fgas(fgas_record(businessProfile={"highLevelUses": []})) == []


FGAS_FAILURES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "non-EU without representative",
        lambda r: r.update(euLegalRepresentativeCompany=None),
        "must have a representative",
    ),
    (
        "ambiguous without representative",
        lambda r: r.update(euLegalRepresentativeCompany=None, address=_address("UK_NI", "AMBIGUOUS_TYPE")),
        "must have a representative",
    ),
    (
        "manufacturer only",
        lambda r: r.update(types=["FGAS_MANUFACTURER_OF_EQUIPMENT_HFCS"]),
        "Equipment manufacturers only",
    ),
    ("status", lambda r: r.update(status="DISABLED"), "status 'DISABLED'"),
    ("no business profile", lambda r: r.update(businessProfile=None), "no businessProfile"),
    (
        "use not fgas.",
        lambda r: r.update(businessProfile={"highLevelUses": ["import.of.halon.for.critical.use"]}),
        "don't start with 'fgas.'",
    ),
    (
        "exporters only",
        lambda r: r.update(types=["EXPORTER_HFCS", "EXPORTER_OF_EQUIPMENT_HFCS"]),
        "should not report",
    ),
    ("no types", lambda r: r.update(types=[]), "should not report"),
    ("unknown type", lambda r: r.update(types=["FGAS_PRODUCER_IMPORTER_HFCS", "IMPORTER"]), "type IMPORTER"),
    ("domain", lambda r: r.update(domain="ODS"), "domain is not FGAS"),
]


@pytest.mark.parametrize(("case", "mutate", "message"), FGAS_FAILURES, ids=[c[0] for c in FGAS_FAILURES])
def test_fgas_rule_failures(case: str, mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    record = fgas_record()
    mutate(record)
    failures = check_fgas(record)
    assert any(message in f for f in failures), failures


def test_fgas_status_reporting_only_passes() -> None:
    assert check_fgas(fgas_record(status="REPORTING_ONLY")) == []
    assert check_fgas(fgas_record(status="REVISION")) == []


def _without_country_field(field: str) -> Callable[[dict[str, Any]], None]:
    def mutate(record: dict[str, Any]) -> None:
        record["address"]["country"][field] = ""

    return mutate


ODS_FAILURES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing phone", lambda r: r.update(phone=""), "phone field is missing"),
    ("missing eoriNumber", lambda r: r.pop("eoriNumber"), "eoriNumber field is missing"),
    ("missing name", lambda r: r.update(name=None), "name field is missing"),
    ("domain", lambda r: r.update(domain="FGAS"), "domain is not ODS"),
    ("status", lambda r: r.update(status="REPORTING_ONLY"), "status 'REPORTING_ONLY'"),
    ("no country", lambda r: r["address"].update(country=None), "address country is missing"),
    ("country code", _without_country_field("code"), "country code is missing"),
    ("country name", _without_country_field("name"), "country name is missing"),
    ("country type", _without_country_field("type"), "country type is missing"),
    ("non-EU country", lambda r: r["address"]["country"].update(type="NONEU_TYPE"), "not EU_TYPE"),
    (
        "contact without e-mail",
        lambda r: r["contactPersons"][0].update(emailAddress=""),
        "emailAddress is missing",
    ),
    (
        "contact without userName",
        lambda r: r["contactPersons"][0].update(userName=None),
        "userName is missing",
    ),
    ("unknown type", lambda r: r["types"].append("FGAS_EXPORTER_HFCS"), "type FGAS_EXPORTER_HFCS"),
    ("importer only", lambda r: r.update(types=["IMPORTER", "EXPORTER_ODS"]), "should not report"),
    ("no uses", lambda r: r.update(businessProfile={"highLevelUses": []}), "high level uses are missing"),
    (
        "unknown use",
        lambda r: r.update(businessProfile={"highLevelUses": ["fgas.export"]}),
        "highlevel use fgas.export is not accepted",
    ),
    (
        "not obliged uses only",
        lambda r: r.update(businessProfile={"highLevelUses": ["export.of.metered.dose.inhalers"]}),
        "should not report",
    ),
    ("null business profile", lambda r: r.update(businessProfile=None), "businessProfile field is missing"),
]


@pytest.mark.parametrize(("case", "mutate", "message"), ODS_FAILURES, ids=[c[0] for c in ODS_FAILURES])
def test_ods_rule_failures(case: str, mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    record = copy.deepcopy(ods_record())
    mutate(record)
    failures = check_ods(record)
    assert any(message in f for f in failures), failures


def test_ods_no_highlevel_types_may_have_no_uses() -> None:
    record = ods_record(types=["ODS_DESTROYER"], businessProfile={"highLevelUses": []})
    # The profile object itself is present (non-empty), so the required-field rule is satisfied.
    assert check_ods(record) == []
    record = ods_record(
        types=["ODS_DESTROYER"], businessProfile={"highLevelUses": ["export.of.metered.dose.inhalers"]}
    )
    assert check_ods(record) == []


def test_ods_one_obliged_use_is_enough() -> None:
    uses = ["export.of.metered.dose.inhalers", "import.of.halon.for.critical.use"]
    assert check_ods(ods_record(businessProfile={"highLevelUses": uses})) == []
    new_shape = [{"code": u, "shortCode": ""} for u in uses]
    assert check_ods(ods_record(businessProfile={"highLevelUses": new_shape})) == []


def test_excepted_companies_pass() -> None:
    bad_fgas = fgas_record(status="DISABLED", types=[])
    bad_ods = ods_record(status="DISABLED")
    assert check_fgas(bad_fgas) != [] and check_ods(bad_ods) != []
    assert check_fgas(bad_fgas, excepted=["10085"]) == []
    assert check_ods(bad_ods, excepted=[" 26610", ""]) == []
    assert check_ods(bad_ods, excepted=[26610]) == []
    assert check_ods(bad_ods, excepted=["1"]) != []


def test_checks_do_not_raise_on_garbage() -> None:
    assert check_fgas({}) != []
    assert check_ods({}) != []
    assert check_ods({"address": "nowhere", "contactPersons": "x", "businessProfile": 5}) != []


# --------------------------------------------------------------------------------------------------
# sync window


TODAY = date(2026, 3, 20)


@pytest.mark.parametrize(
    ("days", "explicit", "last", "expected"),
    [
        (3, date(2026, 1, 1), date(2026, 3, 1), date(2026, 1, 1)),  # explicit wins
        (None, date(2026, 1, 1), None, date(2026, 1, 1)),
        (3, None, date(2026, 3, 1), date(2026, 3, 17)),
        (0, None, date(2026, 3, 1), date(2026, 2, 28)),
        (-1, None, date(2026, 3, 1), date(2026, 2, 28)),
        (None, None, date(2026, 3, 1), date(2026, 2, 28)),
        (None, None, None, None),
        (0, None, None, None),
    ],
)
def test_updated_since(
    days: int | None, explicit: date | None, last: date | None, expected: date | None
) -> None:
    assert updated_since(days, explicit, last, TODAY) == expected


# --------------------------------------------------------------------------------------------------
# contact persons


def _p(username: str, email: str | None = None, first: str = "F") -> ContactPerson:
    return ContactPerson(username, first, "L", email or f"{username}@example.test", "ORGANISATION_USER")


def test_contacts_added() -> None:
    diff = diff_contact_persons([_p("a")], [_p("a"), _p("b")])
    assert [p.username for p in diff.to_add] == ["b"]
    assert diff.to_update == () and diff.to_remove == ()


def test_contacts_updated() -> None:
    diff = diff_contact_persons([_p("a"), _p("b")], [_p("a", email="new@example.test"), _p("b")])
    assert [p.email for p in diff.to_update] == ["new@example.test"]
    assert diff.to_add == () and diff.to_remove == ()


def test_contacts_remove_one() -> None:
    assert diff_contact_persons([_p("a"), _p("b")], [_p("a")]).to_remove == ("b",)


def test_contacts_remove_several() -> None:
    diff = diff_contact_persons([_p("a"), _p("b"), _p("c")], [_p("b")])
    assert diff.to_remove == ("a", "c")


def test_contacts_remove_all_with_empty_payload() -> None:
    diff = diff_contact_persons([_p("a"), _p("b"), _p("c")], [])
    assert diff.to_remove == ("a", "b", "c")
    assert diff.to_add == () and diff.to_update == ()


def test_contacts_from_usernames_and_duplicates() -> None:
    diff = diff_contact_persons(["a", "b"], [_p("a"), _p("c", first="X"), _p("c", first="Y")])
    assert [p.username for p in diff.to_update] == ["a"]  # unknown stored data: upsert kept users
    assert [(p.username, p.first_name) for p in diff.to_add] == [("c", "Y")]  # last entry wins
    assert diff.to_remove == ("b",)


# --------------------------------------------------------------------------------------------------
# representative


def _parsed_rep(country: str, vat: str) -> Any:
    return parse_undertaking(fgas_record(euLegalRepresentativeCompany=_rep(country, vat))).represent


def test_representative_transitions() -> None:
    old = _parsed_rep("NL", "TESTVAT123")
    same_vat_new_address = _parsed_rep("BE", "TESTVAT123")
    new_vat = _parsed_rep("DE", "NEWVAT")

    none = representative_change(None, None)
    assert none.kind is RepresentativeChangeKind.NONE and not none.changed and none.to_history is None

    created = representative_change(None, old)
    assert created.kind is RepresentativeChangeKind.CREATED and created.changed and created.new == old

    removed = representative_change(old, None)
    assert removed.kind is RepresentativeChangeKind.REMOVED and removed.changed and removed.to_history == old

    replaced = representative_change(old, new_vat)
    assert replaced.kind is RepresentativeChangeKind.REPLACED and replaced.changed
    assert replaced.to_history == old and replaced.new == new_vat

    updated = representative_change(old, same_vat_new_address)
    assert updated.kind is RepresentativeChangeKind.UPDATED and not updated.changed
    assert updated.to_history is None and updated.new == same_vat_new_address


def test_representative_vat_change_moves_derived_country() -> None:
    # Probed legacy example: NEWVAT in DE → history [TESTVAT123], country DE; then removed → None.
    before = parse_undertaking(fgas_record(euLegalRepresentativeCompany=_rep("NL", "TESTVAT123")))
    after = parse_undertaking(fgas_record(euLegalRepresentativeCompany=_rep("DE", "NEWVAT")))
    change = representative_change(before.represent, after.represent)
    assert change.to_history is not None and change.to_history.vatnumber == "TESTVAT123"
    assert derive_country_code(after) == "DE"
    gone = parse_undertaking(fgas_record(euLegalRepresentativeCompany=None))
    assert representative_change(after.represent, gone.represent).to_history == after.represent
    assert derive_country_code(gone) is None


def test_country_history_additions() -> None:
    moved = parse_undertaking(fgas_record(address=_address("DE", "EU_TYPE")))
    keep = representative_change(moved.represent, moved.represent)
    assert country_history_additions("FR", moved, keep) == ["FR"]
    assert country_history_additions("FR", moved, keep, existing_history=["FR"]) == []
    assert country_history_additions("DE", moved, keep) == []
    assert country_history_additions(None, moved, keep) == []

    ambiguous = parse_undertaking(
        fgas_record(address=_address("UK_NI", "AMBIGUOUS_TYPE"), euLegalRepresentativeCompany=_rep("IE"))
    )
    created = representative_change(None, ambiguous.represent)
    assert country_history_additions("UK_NI", ambiguous, created) == ["UK_NI"]
    assert country_history_additions("UK_GB", ambiguous, created) == ["UK_GB", "UK_NI"]
