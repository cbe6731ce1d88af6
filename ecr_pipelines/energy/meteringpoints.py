"""ElOverblik metering points mapped to ``energy.meteringpoint`` rows (no Dagster).

The legacy rules (research notes C4): E18 is a production point, E17 a consumption point; the
child points an answer lists under a point are not imported; the sector (price area) is DK2
below postcode 5000, else DK1. A type other than E17/E18 at the top level made the legacy's
whole import fail; here that point alone is refused with its reason and the others go on.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TYPES = {"E18": "PRODUCTION", "E17": "CONSUMPTION"}
ADDRESS_FIELDS = {
    "street_code": "streetCode",
    "street_name": "streetName",
    "building_number": "buildingNumber",
    "city_name": "cityName",
    "postcode": "postcode",
    "municipality_code": "municipalityCode",
}


@dataclass(frozen=True)
class MappedPoint:
    gsrn: str
    type: str  # PRODUCTION | CONSUMPTION (energy.measurementtype)
    sector: str
    address: Mapping[str, str | None]

    @property
    def is_production(self) -> bool:
        return self.type == "PRODUCTION"


@dataclass(frozen=True)
class Refused:
    gsrn: str
    reason: str


def sector_of(postcode: str) -> str:
    return "DK2" if int(postcode) < 5000 else "DK1"


def map_point(raw: Mapping[str, Any]) -> MappedPoint | Refused:
    gsrn = str(raw.get("meteringPointId") or "").strip()
    if not gsrn:
        return Refused("?", "the metering point has no meteringPointId")
    type_of_mp = raw.get("typeOfMP")
    kind = TYPES.get(str(type_of_mp))
    if kind is None:
        return Refused(gsrn, f"type {type_of_mp!r} is neither E18 (production) nor E17 (consumption)")
    postcode = str(raw.get("postcode") or "").strip()
    try:
        sector = sector_of(postcode)
    except ValueError:
        return Refused(gsrn, f"postcode {postcode!r} is not a number, so its price area is unknown")
    address = {column: _text(raw.get(key)) for column, key in ADDRESS_FIELDS.items()}
    return MappedPoint(gsrn=gsrn, type=kind, sector=sector, address=address)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
