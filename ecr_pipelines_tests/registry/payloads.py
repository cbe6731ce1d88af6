"""Builders of registry payloads shaped as the F-gas / ODS APIs send them (invented data)."""

import copy
from typing import Any


def address(country: str = "DE", country_type: str = "EU_TYPE", city: str = "Berlin") -> dict[str, Any]:
    return {
        "street": "Hauptstrasse",
        "number": "1",
        "zipCode": "10115",
        "city": city,
        "country": {"code": country, "name": f"Country {country}", "type": country_type},
    }


def person(username: str, email: str | None = None, first: str = "Ann", last: str = "Lee") -> dict[str, Any]:
    return {
        "userName": username,
        "firstName": first,
        "lastName": last,
        "emailAddress": email or f"{username}@example.test",
        "type": "ORGANISATION_USER",
    }


def representative(vat: str, country: str = "NL", name: str = "EU Rep BV") -> dict[str, Any]:
    return {
        "name": name,
        "address": address(country, "EU_TYPE", "Amsterdam"),
        "vatNumber": vat,
        "contactPersonFirstName": "Anna",
        "contactPersonLastName": "Jansen",
        "contactPersonEmailAddress": "anna@example.test",
    }


def fgas(external_id: int, name: str = "Polar Cooling GmbH", **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "@type": "FGASUndertaking",
        "id": external_id,
        "registrationNumId": f"FG-{external_id}",
        "name": name,
        "address": address(),
        "website": None,
        "phone": "+4930555000",
        "domain": "FGAS",
        "status": "VALID",
        "dateCreated": "20/10/2014",
        "dateUpdated": "06/11/2025",
        "contactPersons": [person(f"user{external_id}")],
        "euLegalRepresentativeCompany": None,
        "vat": f"DE{external_id}",
        "eori": "",
        "businessProfile": {"highLevelUses": ["fgas.importer.of.other.products.and.equipment"]},
        "types": ["FGAS_PRODUCER_IMPORTER_HFCS"],
    }
    record.update(overrides)
    return copy.deepcopy(record)


def ods(external_id: int, name: str = "Halon Services SRL", **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": external_id,
        "registrationNumId": f"OD-{external_id}",
        "name": name,
        "address": address("RO", "EU_TYPE", "Bucharest"),
        "website": None,
        "phone": "+40215550000",
        "domain": "ODS",
        "status": "VALID",
        "dateCreated": "07/04/2017",
        "dateUpdated": "01/02/2026",
        "eoriNumber": f"RO{external_id}",
        "contactPersons": [person(f"ods{external_id}")],
        "businessProfile": {"highLevelUses": ["import.of.products.or.equipment.for.destruction"]},
        "types": ["ODS_PRODUCER_IN_EU"],
    }
    record.update(overrides)
    return copy.deepcopy(record)
