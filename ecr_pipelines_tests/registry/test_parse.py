"""Tests of registry record parsing, patches and the bundled reference tables."""

import copy
from datetime import date, datetime
from typing import Any

import pytest

from ecr_pipelines.registry import reference
from ecr_pipelines.registry.parse import (
    ContactPerson,
    RecordRejected,
    apply_company_patch,
    apply_gb_old_representative_patch,
    bdr_obligation_slug,
    parse_bdr_date_registered,
    parse_old_company,
    parse_patch_users,
    parse_undertaking,
)


def fgas_record(**overrides: Any) -> dict[str, Any]:
    """An invented, valid FGAS undertaking (non-EU company with an NL representative)."""
    record: dict[str, Any] = {
        "@type": "FGASUndertaking",
        "id": 10085,
        "registrationNumId": "FG-7Q2K9",
        "registrationId": "legacy-reg",
        "name": "Polar Cooling Ltd",
        "address": {
            "street": "Harbour Rd",
            "number": "12",
            "zipCode": "200000",
            "city": "Shanghai",
            "country": {"code": "CN", "name": "China", "type": "NONEU_TYPE"},
        },
        "website": None,
        "phone": "+8621555000",
        "domain": "FGAS",
        "status": "VALID",
        "dateCreated": "20/10/2014",
        "dateUpdated": "06/11/2025",
        "contactPersons": [
            {
                "userName": "n00abcde",
                "firstName": "Li",
                "lastName": "Wei",
                "emailAddress": "li.wei@example.test",
                "type": "ORGANISATION_USER",
            }
        ],
        "euLegalRepresentativeCompany": {
            "name": "EU Rep BV",
            "vatNumber": "NL123456789B01",
            "contactPersonFirstName": "Anna",
            "contactPersonLastName": "Jansen",
            "contactPersonEmailAddress": "anna@example.test",
            "address": {
                "street": "Kade",
                "number": "1",
                "zipCode": "1011AA",
                "city": "Amsterdam",
                "country": {"code": "NL", "name": "Netherlands", "type": "EU_TYPE"},
            },
        },
        "vat": "CN-91310000",
        "eori": "CNEORI1",
        "businessProfile": {
            "highLevelUses": [
                {
                    "code": "fgas.importer.of.refrigeration.ac..and.heatpump.equipment.containing.hfcs",
                    "shortCode": "",
                }
            ]
        },
        "types": ["FGAS_PRODUCER_IMPORTER_HFCS", "FGAS_IMPORTER_OF_EQUIPMENT_HFCS"],
    }
    record.update(overrides)
    return record


def ods_record(**overrides: Any) -> dict[str, Any]:
    """An invented, valid ODS undertaking (EU company, old business-profile shape)."""
    record: dict[str, Any] = {
        "id": 26610,
        "registrationNumId": "OD-55X1",
        "name": "Halon Services SRL",
        "address": {
            "street": "Str. Lunga",
            "number": "5",
            "zipCode": "010101",
            "city": "Bucharest",
            "country": {"code": "RO", "name": "Romania", "type": "EU_TYPE"},
        },
        "website": None,
        "phone": "+40215550000",
        "domain": "ODS",
        "status": "VALID",
        "dateCreated": "07/04/2017",
        "dateUpdated": "01/02/2026",
        "eoriNumber": "RO12345678",
        "contactPersons": [
            {
                "userName": "ods_user1",
                "firstName": "Ana",
                "lastName": "Pop",
                "emailAddress": "ana@example.test",
            }
        ],
        "businessProfile": {"highLevelUses": ["import.of.halon.for.critical.use"]},
        "types": ["IMPORTER_MIXTURES_SUBSTANCES"],
    }
    record.update(overrides)
    return record


# --------------------------------------------------------------------------------------------------
# reference tables


def test_reference_tables_load_and_are_cached() -> None:
    refs = reference.load_reference_tables()
    assert refs is reference.load_reference_tables()
    assert len(refs.types) == 33
    assert len(refs.business_profiles) == 39
    assert len(refs.licence_details) == 107
    assert len(refs.type_names("FGAS")) == 18 and len(refs.type_names("ODS")) == 15
    with pytest.raises(TypeError):
        refs.country_codes["X"] = "Y"  # type: ignore[index]


def test_reference_lookups() -> None:
    refs = reference.load_reference_tables()
    assert refs.country_alpha2("united states of america") == "US"
    assert refs.country_alpha2("UNITED STATES") == "US"
    assert refs.country_alpha2("USA") is None
    assert refs.country_alpha2("finland") == "FI"  # the table stores "Finland " with a blank
    assert refs.country_alpha2("Great Britain") == "UK_GB"
    # Duplicate source name: the lowest id wins.
    assert refs.substance_name("HCFC-132b (virgin)") == "HCFC-132b (virgin)"
    assert refs.substance_name("Carbon tetrachloride (virgin)") == "CTC (virgin)"
    detail = refs.licence_detail("import.of.substance.for.destruction")
    assert detail is not None and detail.lic_use_desc == "destruction" and detail.lic_type == "import"
    code = "import.or.production.of.substance.for.laboratory.or.analytical.use"
    assert refs.find_business_profile(code, "ODS").short_code == "ILAB"  # type: ignore[union-attr]
    # The legacy lookup ignored the short code: PLAB resolves to the first (ILAB) row.
    assert refs.find_business_profile(code, "ODS", "PLAB").id == 25  # type: ignore[union-attr]
    assert refs.find_business_profile(code, "FGAS") is None


# --------------------------------------------------------------------------------------------------
# undertakings


def test_parse_fgas_maps_fields() -> None:
    u = parse_undertaking(fgas_record())
    assert u.external_id == 10085 and u.domain == "FGAS"
    assert u.registration_id == "FG-7Q2K9"
    assert u.undertaking_type == "FGASUndertaking"
    assert u.vat == "CN-91310000" and u.eori_number == "CNEORI1"
    assert u.date_created == date(2014, 10, 20) and u.date_updated == date(2025, 11, 6)
    assert u.address.zipcode == "200000" and u.address.country.type == "NONEU_TYPE"
    assert u.country_code_orig == "CN"
    assert u.represent is not None
    assert u.represent.vatnumber == "NL123456789B01"
    assert u.represent.contact_email == "anna@example.test"
    assert u.represent.address.country.code == "NL"
    assert u.contact_persons == (
        ContactPerson("n00abcde", "Li", "Wei", "li.wei@example.test", "ORGANISATION_USER"),
    )
    assert u.types == ("FGAS_PRODUCER_IMPORTER_HFCS", "FGAS_IMPORTER_OF_EQUIPMENT_HFCS")
    assert [p.id for p in u.business_profiles] == [8]


def test_parse_fgas_defaults() -> None:
    record = fgas_record(euLegalRepresentativeCompany={})
    del record["eori"], record["registrationNumId"], record["vat"]
    u = parse_undertaking(record)
    assert u.represent is None and u.eori_number == "" and u.registration_id == "" and u.vat is None


def test_parse_ods_maps_eori_to_vat_and_ignores_representative() -> None:
    record = ods_record(euLegalRepresentativeCompany=fgas_record()["euLegalRepresentativeCompany"])
    u = parse_undertaking(record)
    assert u.vat == "RO12345678"
    assert u.eori_number == ""
    assert u.represent is None
    assert u.undertaking_type == "ODSUndertaking"
    assert [p.short_code for p in u.business_profiles] == ["ICUH"]


def test_unknown_types_and_profiles_are_kept_apart() -> None:
    record = ods_record(
        types=["IMPORTER", "NOT_A_TYPE", "IMPORTER"],
        businessProfile={"highLevelUses": ["import.of.halon.for.critical.use", "no.such.use"]},
    )
    u = parse_undertaking(record)
    assert u.types == ("IMPORTER",)
    assert u.unknown_types == ("NOT_A_TYPE",)
    assert u.unknown_business_profiles == ("no.such.use",)


def test_null_business_profile_is_no_profile() -> None:
    assert parse_undertaking(fgas_record(businessProfile=None)).business_profiles == ()


def test_business_profile_extra_keys_are_tolerated() -> None:
    profile = {"id": 3, "highLevelUses": [{"code": "fgas.export", "shortCode": "", "label": "Export"}]}
    u = parse_undertaking(fgas_record(businessProfile=profile))
    assert [p.code for p in u.business_profiles] == ["fgas.export"]


def test_representative_snake_case_from_patch() -> None:
    rep = {
        "name": "GB Rep Ltd",
        "vatnumber": "GB999",
        "contact_first_name": "Sam",
        "contact_last_name": "Smith",
        "contact_email": "sam@example.test",
        "address": {
            "street": "High St",
            "number": "1",
            "zipCode": "N1",
            "city": "London",
            "country": {"code": "UK_GB"},
        },
    }
    u = parse_undertaking(fgas_record(euLegalRepresentativeCompany=rep))
    assert (
        u.represent is not None
        and u.represent.vatnumber == "GB999"
        and u.represent.contact_first_name == "Sam"
    )


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    record = copy.deepcopy(record)
    del record[key]
    return record


def _contact(**fields: Any) -> dict[str, Any]:
    base = {"userName": "u1", "firstName": "A", "lastName": "B", "emailAddress": "a@example.test"}
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("record", "reason", "kind"),
    [
        (_without(ods_record(), "eoriNumber"), "missing eoriNumber", "missing_field"),
        (_without(fgas_record(), "dateCreated"), "missing dateCreated", "missing_field"),
        (_without(fgas_record(), "contactPersons"), "missing contactPersons", "missing_field"),
        (_without(fgas_record(), "domain"), "missing domain", "missing_field"),
        (fgas_record(dateUpdated="31/02/2020"), "bad date in dateUpdated: '31/02/2020'", "bad_date"),
        (fgas_record(dateCreated="2020-01-01"), "bad date in dateCreated: '2020-01-01'", "bad_date"),
        (fgas_record(contactPersons=[_contact(type="X")]), "bad contact type 'X'", "bad_contact_type"),
        (
            fgas_record(contactPersons=[{"userName": "u", "firstName": "A", "lastName": "B"}]),
            "missing contactPersons[0].emailAddress",
            "missing_field",
        ),
        (
            fgas_record(
                contactPersons=[{"firstName": "A", "lastName": "B", "emailAddress": "a@example.test"}]
            ),
            "missing contactPersons[0].userName",
            "missing_field",
        ),
        (fgas_record(status=["VALID"]), "bad value in status: ['VALID']", "bad_value"),
        (fgas_record(contactPersons="nobody"), "bad value in contactPersons: expected a list", "bad_value"),
        (fgas_record(address=None), "missing address", "missing_field"),
        (
            fgas_record(address={"street": "x", "country": {"name": "Nowhere"}}),
            "missing address.country.code",
            "missing_field",
        ),
        (
            fgas_record(euLegalRepresentativeCompany={"name": "Rep", "vatNumber": "1"}),
            "missing euLegalRepresentativeCompany.address",
            "missing_field",
        ),
        (fgas_record(domain="XYZ"), "bad value in domain: 'XYZ'", "bad_value"),
        (fgas_record(id="abc"), "bad value in id: 'abc'", "bad_value"),
        (fgas_record(types="IMPORTER"), "bad value in types: expected a list of strings", "bad_value"),
        (
            fgas_record(businessProfile={"highLevelUses": [42]}),
            "bad value in businessProfile.highLevelUses: 42",
            "bad_value",
        ),
    ],
)
def test_malformed_records_are_rejected(record: dict[str, Any], reason: str, kind: str) -> None:
    with pytest.raises(RecordRejected) as info:
        parse_undertaking(record)
    assert info.value.reason == reason
    assert info.value.kind == kind
    assert str(info.value) == reason


def test_string_id_is_accepted() -> None:
    assert parse_undertaking(fgas_record(id="10085")).external_id == 10085


def test_unknown_keys_are_ignored_and_listed() -> None:
    record = fgas_record(foo=1, eoriNumber="X", contactPersons=[_contact(role="x"), _contact(role="y")])
    record["address"] = {"street": "x", "floor": 2, "country": {"code": "DE", "iso3": "DEU"}}
    u = parse_undertaking(record)
    assert u.unknown_fields == (
        "eoriNumber",
        "foo",
        "address.floor",
        "address.country.iso3",
        "contactPersons[].role",
    )
    assert u.address.country.code == "DE" and len(u.contact_persons) == 2


def test_nulls_the_legacy_stored_are_kept() -> None:
    u = parse_undertaking(ods_record(eoriNumber=None, status=None, name=None, registrationNumId=None))
    assert (u.vat, u.status, u.name, u.registration_id) == (None, None, None, None)
    assert parse_undertaking(fgas_record(eori=None)).eori_number is None
    person = parse_undertaking(fgas_record(contactPersons=[_contact(userName="")])).contact_persons[0]
    assert person.username == "" and not person.has_type


# --------------------------------------------------------------------------------------------------
# patches


def test_apply_company_patch_is_shallow_and_pure() -> None:
    raw = fgas_record()
    before = copy.deepcopy(raw)
    patched = apply_company_patch(raw, {"name": "Patched", "address": {"country": {"code": "DE"}}})
    assert raw == before
    assert patched["name"] == "Patched"
    assert patched["address"] == {"country": {"code": "DE"}}  # whole address replaced
    assert patched["vat"] == raw["vat"]
    assert apply_company_patch(raw, None) == raw
    assert apply_company_patch(raw, None) is not raw


def test_gb_old_representative_patch_only_without_representative() -> None:
    patch = {"euLegalRepresentativeCompany": {"name": "Old GB rep"}}
    with_rep = fgas_record()
    assert apply_gb_old_representative_patch(with_rep, patch) == with_rep
    without = fgas_record(euLegalRepresentativeCompany=None)
    assert apply_gb_old_representative_patch(without, patch)["euLegalRepresentativeCompany"] == {
        "name": "Old GB rep"
    }


def test_patch_users_are_parsed_and_appended() -> None:
    extra = parse_patch_users(
        [
            {
                "username": "patched@example.test",
                "first_name": "P",
                "last_name": "Q",
                "email": "patched@example.test",
            }
        ]
    )
    u = parse_undertaking(fgas_record(), extra_contact_persons=extra)
    assert [p.username for p in u.contact_persons] == ["n00abcde", "patched@example.test"]
    assert u.contact_persons[0].ecas_id == "n00abcde"
    assert u.contact_persons[1].ecas_id is None  # e-mail usernames are no ECAS id
    assert parse_patch_users(None) == []
    with pytest.raises(RecordRejected, match="unknown field 'PATCH_USERS\\[0\\].userName'"):
        parse_patch_users([{"userName": "x"}])
    with pytest.raises(RecordRejected, match="bad contact type 'BOSS'"):
        parse_patch_users([{"username": "x", "type": "BOSS"}])


# --------------------------------------------------------------------------------------------------
# BDR old companies


def old_company_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "pk": 4021,
        "name": "POLAR COOLING LIMITED",
        "addr_street": "Harbour Rd 12",
        "addr_postalcode": "200000",
        "addr_place1": "Shanghai",
        "addr_place2": "",
        "eori": "CN-91310000",
        "vat_number": "",
        "active": True,
        "website": "",
        "country": {"code": "cn", "name": "China"},
        "date_registered": "2013/05/02 14:02:1367503320",
        "account": "fgas30123",
    }
    record.update(overrides)
    return record


def test_parse_old_company() -> None:
    o = parse_old_company(old_company_record(), "FGAS")
    assert o.external_id == 4021 and o.name == "POLAR COOLING LIMITED"
    assert o.country_code == "cn" and o.account == "fgas30123" and o.eori == "CN-91310000"
    assert o.obligation == "FGAS" and o.active is True
    # The legacy rule keeps the 12-hour hour as the "minute".
    assert o.date_registered == datetime(2013, 5, 2, 14, 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2013/05/02 14:02:1367503320", datetime(2013, 5, 2, 14, 2)),
        ("2013/05/02 00:12:1367452800", datetime(2013, 5, 2, 0, 12)),
        ("2001/01/02 09:09:978426000", datetime(2001, 1, 2, 9, 0)),  # 9-digit epoch: the legacy cut
        ("", None),
        (None, None),
    ],
)
def test_bdr_date_registered(value: str | None, expected: datetime | None) -> None:
    assert parse_bdr_date_registered(value) == expected


@pytest.mark.parametrize(
    "value", ["02/05/2013", "2013/13/02 14:02:1367503320", "2013/05/02 14:02", "yesterday", 20130502]
)
def test_bad_bdr_date_is_rejected(value: Any) -> None:
    with pytest.raises(RecordRejected) as info:
        parse_bdr_date_registered(value)
    assert info.value.kind == "bad_date"


def test_old_company_rejections() -> None:
    assert parse_old_company(old_company_record(extra=1), "ODS").unknown_fields == ("extra",)
    with pytest.raises(RecordRejected, match="missing pk"):
        parse_old_company(old_company_record(pk=None), "ODS")


def test_bdr_obligation_slug() -> None:
    assert bdr_obligation_slug("FGAS") == "fgases"
    assert bdr_obligation_slug("fgas") == "fgases"
    assert bdr_obligation_slug("ODS") == "ods"
