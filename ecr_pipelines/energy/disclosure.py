"""Disclosures (no Dagster): the create request's rules, and the public view of a disclosure.

A disclosure publishes a customer's consumption over a date range, per metering point or as one
anonymised series, beside the guarantees of origin retired to it (read from the ledger by the
compile stage into ``energy.disclosure_settlement`` / ``energy.disclosure_ggo``). Its public view
is what the legacy's ``POST /disclosure`` answered; the compile stage writes the default view
(no date range, no resolution, UTC) to the blob store as a JSON document, and ``disclosure_view``
answers any other request from the database.

The view, as the legacy computed it:

* the requested date range is clipped to the disclosure's; the range runs from its first day
  00:00 to the day after its last 00:00, in the requested UTC offset;
* the resolution is the requested one, else one chosen by the span (``>= 3*365`` days: year,
  ``>= 60``: month, ``>= 3``: day, else hour; the span counts both end days), and then the coarser
  of that and the disclosure's ``max_resolution`` (all < year < month < day < hour);
* labels name every period of the range at that resolution in the offset's local time; values are
  sums of Wh aligned with the labels, ``null`` where nothing was measured (or retired).

Where this differs from the legacy (deliberately):

* resolution ``all`` gives one bucket, ``All-time``, summing the whole range (the legacy's label
  generator had no format for it and its sums were not aligned with any label);
* month and year labels start at the period that holds the range's first day (the legacy stepped
  from that day itself, so 15 January to 10 March gave no label for March);
* the range is half-open (a measurement beginning at the day-after-the-end 00:00 is not summed
  into the last period) and filtered in the offset's local time, like the labels;
* a disabled metering point has no series (the legacy listed it, with nothing in it).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

RESOLUTIONS = ("all", "year", "month", "day", "hour")  # coarse to fine, as the enum orders them
ALL_TIME = "All-time"
UNKNOWN_TECHNOLOGY = "Unknown"
PYTHON_FORMATS = {"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d", "hour": "%Y-%m-%d %H:00"}
POSTGRES_FORMATS = {"year": "YYYY", "month": "YYYY-MM", "day": "YYYY-MM-DD", "hour": "YYYY-MM-DD HH24:00"}
MAX_UTC_OFFSET = 23
CREATE_FIELDS = (
    "name",
    "description",
    "begin",
    "end",
    "maxResolution",
    "publicizeMeteringpoints",
    "publicizeGsrn",
    "publicizePhysicalAddress",
    "gsrn",
)


def disclosure_key(public_id: str) -> str:
    """Where the compiled public view of a disclosure lives in the blob store."""
    return f"energy/disclosures/{public_id}.json"


# -- the create request -------------------------------------------------------------------------


class DisclosureRefused(ValueError):
    """A create request that the rules refuse; the message says why (nothing was written)."""


@dataclass(frozen=True)
class CreateRequest:
    name: str
    description: str | None
    begin: date
    end: date
    max_resolution: str
    publicize_meteringpoints: bool
    publicize_gsrn: bool
    publicize_physical_address: bool
    gsrn: tuple[str, ...]


def _date(value: Any, name: str) -> date:
    if isinstance(value, datetime):
        raise DisclosureRefused(f"`{name}` must be a date, not a time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise DisclosureRefused(f"`{name}` must be a date (YYYY-MM-DD), not {value!r}")


def _flag(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name)
    if not isinstance(value, bool):
        raise DisclosureRefused(f"`{name}` must be true or false")
    return value


def validate_create(raw: Mapping[str, Any]) -> CreateRequest:
    """The create request's fields checked (the legacy's camelCase names); ``DisclosureRefused``
    names the first problem. Whether the GSRNs may be disclosed is checked against the database
    by ``stages.disclosures.create_disclosure``."""
    unknown = sorted(set(raw) - set(CREATE_FIELDS))
    if unknown:
        raise DisclosureRefused(f"unknown fields: {', '.join(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DisclosureRefused("`name` must be a non-empty string")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise DisclosureRefused("`description` must be a string")
    begin = _date(raw.get("begin"), "begin")
    end = _date(raw.get("end"), "end")
    if begin > end:
        raise DisclosureRefused(f"`begin` ({begin}) must not be after `end` ({end})")
    max_resolution = raw.get("maxResolution")
    if max_resolution not in RESOLUTIONS:
        raise DisclosureRefused(f"`maxResolution` must be one of {', '.join(RESOLUTIONS)}")
    gsrns = raw.get("gsrn")
    if (
        not isinstance(gsrns, list | tuple)
        or not gsrns
        or not all(isinstance(g, str) and g.strip() for g in gsrns)
    ):
        raise DisclosureRefused("`gsrn` must be a list of at least one GSRN")
    return CreateRequest(
        name=name.strip(),
        description=description,
        begin=begin,
        end=end,
        max_resolution=max_resolution,
        publicize_meteringpoints=_flag(raw, "publicizeMeteringpoints"),
        publicize_gsrn=_flag(raw, "publicizeGsrn"),
        publicize_physical_address=_flag(raw, "publicizePhysicalAddress"),
        gsrn=tuple(dict.fromkeys(g.strip() for g in gsrns)),  # each point once, in the given order
    )


def refusal_for(gsrn: str) -> DisclosureRefused:
    return DisclosureRefused(
        f'MeteringPoint with GSRN "{gsrn}" is not available, or is not eligible for disclosure'
    )


# -- resolution and labels (pure) ---------------------------------------------------------------


def coarser(first: str, second: str) -> str:
    return min(first, second, key=RESOLUTIONS.index)


def span_resolution(begin: date, end: date) -> str:
    """The resolution the legacy picked for a range of days (both ends counted)."""
    days = (end - begin).days + 1
    if days >= 3 * 365:
        return "year"
    if days >= 60:
        return "month"
    if days >= 3:
        return "day"
    return "hour"


def choose_resolution(requested: str | None, begin: date, end: date, max_resolution: str) -> str:
    return coarser(requested or span_resolution(begin, end), max_resolution)


def clip_range(requested: tuple[date, date] | None, begin: date, end: date) -> tuple[date, date]:
    """The requested range within the disclosure's (a range outside it shrinks to its nearest day)."""
    if requested is None:
        return begin, end
    first, last = requested

    def clip(day: date) -> date:
        return max(begin, min(end, day))

    return clip(first), clip(last)


def _month_start(day: date, months: int = 0) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def labels(begin: date, end: date, resolution: str) -> list[str]:
    """The labels of every period of ``resolution`` that the days ``begin``..``end`` touch."""
    if resolution == "all":
        return [ALL_TIME]
    fmt = PYTHON_FORMATS[resolution]
    if resolution == "hour":
        hours = ((end - begin).days + 1) * 24
        start = datetime.combine(begin, time())
        return [(start + timedelta(hours=n)).strftime(fmt) for n in range(hours)]
    if resolution == "day":
        return [(begin + timedelta(days=n)).strftime(fmt) for n in range((end - begin).days + 1)]
    if resolution == "month":
        count = (end.year - begin.year) * 12 + end.month - begin.month + 1
        return [_month_start(begin, n).strftime(fmt) for n in range(count)]
    if resolution == "year":
        return [date(year, 1, 1).strftime(fmt) for year in range(begin.year, end.year + 1)]
    raise ValueError(f"unknown resolution {resolution!r}")


def physical_address(street_name: Any, building_number: Any, postcode: Any, city_name: Any) -> str:
    def part(value: Any) -> str:
        return "" if value is None else str(value)

    return f"{part(street_name)} {part(building_number)}, {part(postcode)} {part(city_name)}"


# -- the view (SQL) -----------------------------------------------------------------------------


def technology_label(conn: Connection, technology_code: str | None, fuel_code: str | None) -> str:
    """The technology table's label of a code pair, ``Unknown`` for a pair it does not have."""
    label = conn.execute(
        sa.text(
            "SELECT technology FROM energy.technology WHERE technology_code = :technology AND fuel_code = :fuel"
        ),
        {"technology": technology_code, "fuel": fuel_code},
    ).scalar()
    return label if label is not None else UNKNOWN_TECHNOLOGY


def _label_sql(column: str, resolution: str) -> str:
    if resolution == "all":
        return f"'{ALL_TIME}'"
    # The stored instant as UTC wall time, moved by the offset: independent of the session's
    # TimeZone, which to_char on a timestamptz would otherwise use.
    return f"to_char(({column} AT TIME ZONE 'UTC') + make_interval(hours => :offset), :fmt)"


_MEASUREMENT_SUMS = """
    SELECT {series} AS series, {label} AS label, sum(m.amount) AS amount
    FROM energy.disclosure_meteringpoint dm
    JOIN energy.meteringpoint mp ON mp.gsrn = dm.gsrn AND NOT mp.disabled
    JOIN energy.measurement m ON m.gsrn = dm.gsrn
    WHERE dm.disclosure_id = :disclosure AND m.published AND m.begin >= :begin AND m.begin < :end
    GROUP BY 1, 2
"""

_GGO_SUMS = """
    SELECT {series} AS series, coalesce(t.technology, '{unknown}') AS technology, {label} AS label,
        sum(g.amount) AS amount
    FROM energy.disclosure_settlement s
    JOIN energy.measurement m ON m.id = s.measurement_id AND m.published
    JOIN energy.meteringpoint mp ON mp.gsrn = m.gsrn AND NOT mp.disabled
    JOIN energy.disclosure_ggo g ON g.settlement_id = s.id
    LEFT JOIN energy.technology t ON t.technology_code = g.technology_code AND t.fuel_code = g.fuel_code
    WHERE s.disclosure_id = :disclosure AND g.begin >= :begin AND g.begin < :end
    GROUP BY 1, 2, 3
"""


def _aligned(sums: Mapping[str, int], names: Sequence[str]) -> list[int | None]:
    return [sums.get(name) for name in names]


def _series(
    conn: Connection,
    disclosure_id: int,
    per_point: bool,
    resolution: str,
    params: Mapping[str, Any],
) -> tuple[dict[str | None, dict[str, int]], dict[str | None, dict[str, dict[str, int]]]]:
    """Sums per series (gsrn, or None for the anonymised one) and label; GGO sums also per
    technology label."""
    series = "m.gsrn" if per_point else "NULL::varchar"
    bound = {**params, "disclosure": disclosure_id}
    measured: dict[str | None, dict[str, int]] = {}
    for key, label, amount in conn.execute(
        sa.text(_MEASUREMENT_SUMS.format(series=series, label=_label_sql("m.begin", resolution))), bound
    ):
        measured.setdefault(key, {})[label] = int(amount)
    retired: dict[str | None, dict[str, dict[str, int]]] = {}
    sql = _GGO_SUMS.format(series=series, unknown=UNKNOWN_TECHNOLOGY, label=_label_sql("g.begin", resolution))
    for key, technology, label, amount in conn.execute(sa.text(sql), bound):
        retired.setdefault(key, {}).setdefault(technology, {})[label] = int(amount)
    return measured, retired


def _series_entry(
    gsrn: str | None,
    address: str | None,
    measured: Mapping[str, int],
    retired: Mapping[str, Mapping[str, int]],
    names: Sequence[str],
) -> dict[str, Any]:
    return {
        "gsrn": gsrn,
        "address": address,
        "measurements": _aligned(measured, names),
        "ggos": [
            {"group": [technology], "values": _aligned(retired[technology], names)}
            for technology in sorted(retired)
        ],
    }


def not_found(public_id: str) -> dict[str, Any]:
    return {"success": False, "message": f'Disclosure with ID "{public_id}" not found'}


def disclosure_view(
    conn: Connection,
    public_id: str,
    *,
    utc_offset: int = 0,
    resolution: str | None = None,
    date_range: tuple[date, date] | None = None,
) -> dict[str, Any]:
    """The public view of a disclosure, as the legacy's ``POST /disclosure`` answered it (see the
    module docstring for the rules and where they differ). JSON-serialisable: dates are ISO
    strings, the state is the enum's name. ``ValueError`` for a malformed request."""
    if isinstance(utc_offset, bool) or not isinstance(utc_offset, int) or abs(utc_offset) > MAX_UTC_OFFSET:
        raise ValueError(f"utcOffset must be a whole number of hours within ±{MAX_UTC_OFFSET}")
    if resolution is not None and resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if date_range is not None and date_range[0] > date_range[1]:
        raise ValueError("dateRange: begin must not be after end")
    row = conn.execute(
        sa.text(
            'SELECT id, description, begin, "end", state::text AS state, max_resolution::text AS max_resolution, '
            "publicize_meteringpoints, publicize_gsrn, publicize_physical_address "
            "FROM energy.disclosure WHERE public_id = :public_id"
        ),
        {"public_id": public_id},
    ).first()
    if row is None:
        return not_found(public_id)
    begin, end = clip_range(date_range, row.begin, row.end)
    chosen = choose_resolution(resolution, begin, end, row.max_resolution)
    names = labels(begin, end, chosen)
    zone = timezone(timedelta(hours=utc_offset))
    params = {
        "begin": datetime.combine(begin, time(), zone).astimezone(UTC),
        "end": datetime.combine(end + timedelta(days=1), time(), zone).astimezone(UTC),
        "offset": utc_offset,
        "fmt": POSTGRES_FORMATS.get(chosen, ""),
    }
    per_point = bool(row.publicize_meteringpoints)
    measured, retired = _series(conn, row.id, per_point, chosen, params)
    if per_point:
        points = conn.execute(
            sa.text(
                "SELECT mp.gsrn, mp.street_name, mp.building_number, mp.postcode, mp.city_name "
                "FROM energy.disclosure_meteringpoint dm "
                "JOIN energy.meteringpoint mp ON mp.gsrn = dm.gsrn AND NOT mp.disabled "
                "WHERE dm.disclosure_id = :disclosure ORDER BY mp.gsrn"
            ),
            {"disclosure": row.id},
        ).all()
        data = [
            _series_entry(
                point.gsrn if row.publicize_gsrn else None,
                physical_address(point.street_name, point.building_number, point.postcode, point.city_name)
                if row.publicize_physical_address
                else None,
                measured.get(point.gsrn, {}),
                retired.get(point.gsrn, {}),
                names,
            )
            for point in points
        ]
    else:
        data = [_series_entry(None, None, measured.get(None, {}), retired.get(None, {}), names)]
    return {
        "success": True,
        "description": row.description,
        "begin": row.begin.isoformat(),
        "end": row.end.isoformat(),
        "state": row.state,
        "labels": names,
        "data": data,
    }


def view_json(view: Mapping[str, Any]) -> bytes:
    """The document as stored in the blob store (UTF-8 JSON)."""
    return json.dumps(view, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
