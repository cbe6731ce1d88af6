"""Stand-ins for the energy hub's two upstreams, ElOverblik and the EnergyTypeService (research C2).

Both register dynamic routes on a ``StandInServer`` (a test's ``standin``, the demo's shared
server), so the project's real clients talk to them over a socket.

``EloverblikStandIn`` is ElOverblik's third-party API under ``mount``:

* ``GET /api/Token`` trades the refresh token (bearer) for a new access token each call;
* ``GET /api/Authorization/Authorization/MeteringPoints/customerKey/<sub>`` lists a customer's
  metering points as raw ElOverblik dicts (``add_customer``; ``meteringpoint()`` builds one);
* ``POST /api/MeterData/GetTimeSeries/<from>/<to>/Hour`` answers one entry per asked metering
  point. Per GSRN the series is a recording served as recorded (``serve_recording``), a series
  built for the asked dates (``serve_synthetic``), a null document (``serve_null``); a GSRN
  nobody set gets the "access denied" entry. ``fail_gsrn`` makes requests that ask for one GSRN
  fail while the others succeed.

The synthetic series is built as text, never as dictionaries: one Period per Danish local day
(23 or 25 hours on DST days), and with a constant quantity the Periods of a date range are built
once and spliced into every GSRN's entry. A benchmark asks for 1,000 points over a year, so one
point-year (8,760 points, ~0.8 MB) must cost a few milliseconds.

``EnergyTypeStandIn`` is the EnergyTypeService: ``/get-energy-type`` and ``/get-emissions``
with a GSRN query parameter, counting its calls so a test can check what a run fetched.

Paths match in the legacy client's casing only (the real API ignores case). Development only:
no pytest here, nothing of ``ecr_pipelines`` outside ``dev`` imports this.
"""

import copy
import hashlib
import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from ecr_pipelines.dev.standins.server import RecordedRequest, Reply, Route, StandInServer

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "energy"
METERINGPOINTS_RECORDING = "imported_meteringpoint_data.json"
TIMESERIES_RECORDINGS = ("imported_timeseries_data_gsrn1.json", "imported_timeseries_data_gsrn2.json")
DANISH_TIME = ZoneInfo("Europe/Copenhagen")

TOKEN_PATH = "/api/Token"
METERINGPOINTS_PATH = "/api/Authorization/Authorization/MeteringPoints/"
TIMESERIES_PATH = "/api/MeterData/GetTimeSeries/"
SCOPES = ("authorizationId", "customerCVR", "customerKey")
UNITS = ("KWH", "MWH")

# What the real API calls an entry it may not serve (its MeterData error list: 30006
# AccessToMeterPointDenied). The third-party API's exact answer for a point without an
# authorisation was never recorded; this is the plausible one.
DENIED_CODE = "30006"
DENIED_TEXT = "AccessToMeterPointDenied"

Quantity = str | Callable[[str, datetime], str]

_JSON = {"Content-Type": "application/json; charset=utf-8"}
_POINT = '{"position": "%d", "out_Quantity.quantity": %s, "out_Quantity.quality": "A04"}'
_PERIOD = '{"resolution": "PT1H", "timeInterval": {"start": "%s", "end": "%s"}, "Point": [%s]}'
_SLOT = "@@periods@@"


# -- recordings and raw metering points -----------------------------------------------------------
@dataclass(frozen=True)
class _Recording:
    gsrn: str
    whole: bytes  # the file, served as is when it is the only point asked for
    entry: bytes  # its one result entry as recorded, spliced among others


@cache
def _recording(name: str) -> _Recording:
    if name not in TIMESERIES_RECORDINGS:
        raise ValueError(f"no time-series recording {name!r} (there are {', '.join(TIMESERIES_RECORDINGS)})")
    whole = (RECORDINGS / name).read_bytes()
    (entry,) = json.loads(whole)["result"]
    # The entry's own bytes: between the result list's brackets (the file holds one entry).
    raw = whole[whole.index(b"[") + 1 : whole.rindex(b"]")].strip()
    assert json.loads(raw) == entry, name
    return _Recording(entry["id"], whole, raw)


def recording_gsrn(name: str) -> str:
    """The GSRN a time-series recording answers for (its entry ``id`` and TimeSeries ``mRID``)."""
    return _recording(name).gsrn


def recorded_meteringpoints() -> list[dict[str, Any]]:
    """The metering-point recording's list (two points with child points); a fresh copy."""
    return json.loads((RECORDINGS / METERINGPOINTS_RECORDING).read_bytes())["result"]


def meteringpoint(
    gsrn: str, type_of_mp: str = "E17", postcode: str = "7000", **overrides: Any
) -> dict[str, Any]:
    """One raw ElOverblik metering point with every field the recording has (fictional address).

    ``overrides`` use the API's field names (``streetName="..."``, ``childMeteringPoints=[...]``);
    an unknown name is an error, so a typo does not pass silently.
    """
    point: dict[str, Any] = {
        "meteringPointId": gsrn,
        "typeOfMP": type_of_mp,
        "accessFrom": "01/01/2019 00:00:00",
        "accessTo": "12/31/2030 00:00:00",
        "streetCode": "0001",
        "streetName": "Demovej",
        "buildingNumber": "1",
        "floorId": "",
        "roomId": "",
        "postcode": postcode,
        "cityName": "Fredericia" if postcode == "7000" else "Demoby",
        "citySubDivisionName": "",
        "municipalityCode": "607",
        "locationDescription": "",
        # As recorded: consumption points are flex-settled (D01), production points have none.
        "settlementMethod": "D01" if type_of_mp == "E17" else "",
        "meterReadingOccurrence": "PT1H",
        "firstConsumerPartyName": "Demo Kunde",
        "secondConsumerPartyName": "",
        "consumerCVR": "",
        "dataAccessCVR": "",
        "meterNumber": "",
        "consumerStartDate": "12/31/2018 23:00:00",
        "childMeteringPoints": [],
    }
    unknown = sorted(set(overrides) - set(point))
    if unknown:
        raise TypeError(f"not ElOverblik metering-point fields: {', '.join(unknown)}")
    point.update(overrides)
    return point


# -- synthetic series -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Synthetic:
    quantity: Quantity
    unit: str


class _Null:
    pass


_Series = _Recording | _Synthetic | _Null


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _danish_midnight(day: date) -> datetime:
    # Danish clocks change at 02:00/03:00, so local midnight is never ambiguous.
    return datetime.combine(day, time(), tzinfo=DANISH_TIME)


@dataclass(frozen=True)
class _Day:
    start: str
    end: str
    hours: tuple[datetime, ...]  # UTC, one per position


# Small caches: a year of Periods is ~0.8 MB of text, and a run asks for one or two ranges.
@lru_cache(maxsize=16)
def _days(date_from: date, date_to: date) -> tuple[_Day, ...]:
    """One entry per Danish local day in [date_from, date_to): the API leaves the to-date out."""
    days = []
    day = date_from
    while day < date_to:
        start = _danish_midnight(day).astimezone(UTC)
        end = _danish_midnight(day + timedelta(days=1)).astimezone(UTC)
        count = int((end - start) / timedelta(hours=1))
        hours = tuple(start + timedelta(hours=i) for i in range(count))
        days.append(_Day(_utc_text(start), _utc_text(end), hours))
        day += timedelta(days=1)
    return tuple(days)


@lru_cache(maxsize=8)
def _constant_periods(date_from: date, date_to: date, quantity: str) -> str:
    encoded = json.dumps(quantity)
    points: dict[int, str] = {}
    periods = []
    for day in _days(date_from, date_to):
        count = len(day.hours)
        if count not in points:
            points[count] = ", ".join(_POINT % (i, encoded) for i in range(1, count + 1))
        periods.append(_PERIOD % (day.start, day.end, points[count]))
    return ", ".join(periods)


def _computed_periods(
    gsrn: str, date_from: date, date_to: date, quantity: Callable[[str, datetime], str]
) -> str:
    encoded: dict[Any, str] = {}  # few distinct quantities: encode each once
    periods = []
    for day in _days(date_from, date_to):
        points = []
        for position, hour in enumerate(day.hours, 1):
            value = quantity(gsrn, hour)
            text = encoded.get(value)
            if text is None:
                text = encoded[value] = json.dumps(str(value))
            points.append(_POINT % (position, text))
        periods.append(_PERIOD % (day.start, day.end, ", ".join(points)))
    return ", ".join(periods)


def _entry(gsrn: str, document: Any, success: bool = True, code: str = "10000", text: str = "NoError") -> str:
    # Key order as recorded.
    return json.dumps(
        {
            "MyEnergyData_MarketDocument": document,
            "success": success,
            "errorCode": code,
            "errorText": text,
            "id": gsrn,
            "stackTrace": None,
        },
        ensure_ascii=False,
    )


def _synthetic_entry(gsrn: str, series: _Synthetic, date_from: date, date_to: date) -> str:
    if callable(series.quantity):
        periods = _computed_periods(gsrn, date_from, date_to, series.quantity)
    else:
        periods = _constant_periods(date_from, date_to, series.quantity)
    document = {
        "mRID": hashlib.md5(f"{gsrn}/{date_from}/{date_to}".encode(), usedforsecurity=False).hexdigest(),
        "createdDateTime": _utc_text(datetime.now(UTC)),
        "sender_MarketParticipant.name": "",
        "sender_MarketParticipant.mRID": {"codingScheme": None, "name": None},
        "period.timeInterval": {
            "start": _utc_text(_danish_midnight(date_from)),
            "end": _utc_text(_danish_midnight(date_to)),
        },
        "TimeSeries": [
            {
                "mRID": gsrn,
                "businessType": "A04",
                "curveType": "A01",
                "measurement_Unit.name": series.unit,
                "MarketEvaluationPoint": {"mRID": {"codingScheme": "A10", "name": gsrn}},
                "Period": _SLOT,
            }
        ],
    }
    head, tail = _entry(gsrn, document).split(json.dumps(_SLOT), 1)
    return head + "[" + periods + "]" + tail


# -- ElOverblik -----------------------------------------------------------------------------------
def _bearer(request: RecordedRequest) -> str | None:
    value = next((v for k, v in request.headers.items() if k.lower() == "authorization"), None)
    if value is None or not value.startswith("Bearer "):
        return None
    return value[len("Bearer ") :].strip()


def _unauthorized() -> Reply:
    return Reply.json({"error": "Unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})


def _bad_request(message: str) -> Reply:
    return Reply.json({"error": message}, 400)


class EloverblikStandIn:
    """ElOverblik's third-party API on ``server`` under ``mount`` (see the module docstring)."""

    meteringpoint = staticmethod(meteringpoint)
    recorded_meteringpoints = staticmethod(recorded_meteringpoints)
    recording_gsrn = staticmethod(recording_gsrn)

    def __init__(
        self, server: StandInServer, mount: str = "/eloverblik", refresh_token: str = "demo-refresh-token"
    ) -> None:
        self.server = server
        self.mount = mount.rstrip("/")
        self.refresh_token = refresh_token
        self._lock = threading.Lock()
        self._access_tokens: set[str] = set()
        self._token_calls = 0
        self._customers: dict[str, list[dict[str, Any]]] = {}
        self._series: dict[str, _Series] = {}
        self._gsrn_faults: dict[str, list[Any]] = {}  # gsrn -> [status, times left or None]
        self._timeseries_requests: list[tuple[date, date, list[str]]] = []
        server.add(Route(self.token_path, handler=self._token))
        server.add(Route(self.mount + METERINGPOINTS_PATH + "*", handler=self._meteringpoints))
        server.add(Route(self.mount + TIMESERIES_PATH + "*", method="POST", handler=self._timeseries))

    # -- where it is ------------------------------------------------------------------------------
    @property
    def token_path(self) -> str:
        return self.mount + TOKEN_PATH

    def meteringpoints_path(self, sub: str) -> str:
        return f"{self.mount}{METERINGPOINTS_PATH}customerKey/{sub}"

    def timeseries_path(self, date_from: date, date_to: date) -> str:
        """For ``server.inject(..., method="POST")``: a fault there hits every time-series request."""
        return f"{self.mount}{TIMESERIES_PATH}{date_from:%Y-%m-%d}/{date_to:%Y-%m-%d}/Hour"

    def env(self) -> dict[str, str]:
        """The variables that point the client here (the server must be running)."""
        return {"ELOVERBLIK_SERVICE_URL": self.server.url(self.mount), "ELOVERBLIK_TOKEN": self.refresh_token}

    # -- tokens -----------------------------------------------------------------------------------
    @property
    def token_calls(self) -> int:
        """How many ``/api/Token`` requests came (refused ones too)."""
        with self._lock:
            return self._token_calls

    def revoke_access_tokens(self) -> None:
        """Every access token handed out so far stops working (as when it expires)."""
        with self._lock:
            self._access_tokens.clear()

    def _token(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._token_calls += 1
        if _bearer(request) != self.refresh_token:
            return _unauthorized()
        token = secrets.token_urlsafe(32)  # opaque; the real one is a JWT nobody should parse
        with self._lock:
            self._access_tokens.add(token)
        return Reply.json({"result": token})

    def _authorized(self, request: RecordedRequest) -> bool:
        token = _bearer(request)
        with self._lock:
            return token is not None and token in self._access_tokens

    # -- metering points --------------------------------------------------------------------------
    def add_customer(self, sub: str, meteringpoints: list[dict[str, Any]]) -> None:
        """What ``customerKey/<sub>`` lists from now on (replacing what it listed)."""
        with self._lock:
            self._customers[sub] = copy.deepcopy(meteringpoints)

    def _meteringpoints(self, request: RecordedRequest) -> Reply:
        if not self._authorized(request):
            return _unauthorized()
        scope, _, identifier = request.path[len(self.mount + METERINGPOINTS_PATH) :].partition("/")
        if scope not in SCOPES or not identifier or "/" in identifier:
            return Reply.json({"error": "not found"}, 404)
        with self._lock:
            # Only customer keys have points here: the hub never asks by CVR or authorisation id.
            points = self._customers.get(unquote(identifier), []) if scope == "customerKey" else []
            return Reply.json({"result": points})

    # -- time series ------------------------------------------------------------------------------
    def serve_recording(self, name: str) -> str:
        """Serve the recorded answer ``name`` for its GSRN whatever dates are asked; returns the GSRN."""
        recording = _recording(name)
        with self._lock:
            self._series[recording.gsrn] = recording
        return recording.gsrn

    def serve_synthetic(self, gsrn: str, *, quantity: Quantity = "1.0", unit: str = "KWH") -> None:
        """Build ``gsrn``'s series for the asked dates: hourly points of ``quantity`` in ``unit``.

        ``quantity`` is the text of every point or ``f(gsrn, utc_hour) -> text``.
        """
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
        if _SLOT in gsrn:
            raise ValueError(f"{gsrn!r} is not a GSRN")
        with self._lock:
            self._series[gsrn] = _Synthetic(quantity, unit)

    def serve_null(self, gsrn: str) -> None:
        """Answer ``gsrn`` with a successful entry whose document is null (the legacy crashed on it)."""
        with self._lock:
            self._series[gsrn] = _Null()

    def fail_gsrn(self, gsrn: str, status: int = 500, times: int | None = 1) -> None:
        """The next ``times`` time-series requests that ask for ``gsrn`` (all of them with None)
        answer ``status``: a client asking point by point sees that point fail and no other."""
        with self._lock:
            self._gsrn_faults[gsrn] = [status, times]

    def clear_faults(self) -> None:
        with self._lock:
            self._gsrn_faults.clear()

    def requests_for_timeseries(self) -> list[tuple[date, date, list[str]]]:
        """(from, to, GSRNs) of every well-formed, authorised time-series request, failed ones too."""
        with self._lock:
            return [(f, t, list(g)) for f, t, g in self._timeseries_requests]

    def _take_fault(self, gsrns: list[str]) -> int | None:
        with self._lock:
            for gsrn in gsrns:
                fault = self._gsrn_faults.get(gsrn)
                if fault is None or fault[1] == 0:
                    continue
                if fault[1] is not None:
                    fault[1] -= 1
                return fault[0]
        return None

    def _timeseries(self, request: RecordedRequest) -> Reply:
        if not self._authorized(request):
            return _unauthorized()
        parts = request.path[len(self.mount + TIMESERIES_PATH) :].split("/")
        if len(parts) != 3:
            return Reply.json({"error": "not found"}, 404)
        try:
            if len(parts[0]) != 10 or len(parts[1]) != 10:
                raise ValueError
            date_from, date_to = date.fromisoformat(parts[0]), date.fromisoformat(parts[1])
        except ValueError:
            return _bad_request("InvalidDateFormat: dates are YYYY-MM-DD")
        if parts[2] != "Hour":
            return _bad_request("the stand-in serves hourly series only")
        if date_to <= date_from:
            return _bad_request("FromDateIsGreaterThanToDate or ToDateCantBeEqualToFromDate")
        try:
            gsrns = json.loads(request.body)["meteringPoints"]["meteringPoint"]
            if not isinstance(gsrns, list) or not all(isinstance(g, str) for g in gsrns):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            return _bad_request('body must be {"meteringPoints": {"meteringPoint": ["<gsrn>", ...]}}')
        with self._lock:
            self._timeseries_requests.append((date_from, date_to, gsrns))
        status = self._take_fault(gsrns)
        if status is not None:
            return Reply.json({"error": f"injected fault for {', '.join(gsrns)}"}, status)
        with self._lock:
            series = [self._series.get(gsrn) for gsrn in gsrns]
        if len(series) == 1 and isinstance(series[0], _Recording):
            return Reply(200, series[0].whole, dict(_JSON))
        entries = []
        for gsrn, served in zip(gsrns, series, strict=True):
            if isinstance(served, _Recording):
                entries.append(served.entry)
            elif isinstance(served, _Synthetic):
                entries.append(_synthetic_entry(gsrn, served, date_from, date_to).encode())
            elif isinstance(served, _Null):
                entries.append(_entry(gsrn, None).encode())
            else:
                entries.append(_entry(gsrn, None, False, DENIED_CODE, DENIED_TEXT).encode())
        return Reply(200, b'{"result": [' + b", ".join(entries) + b"]}", dict(_JSON))


# -- EnergyTypeService ----------------------------------------------------------------------------
class EnergyTypeStandIn:
    """The EnergyTypeService on ``server`` under ``mount``: ``/get-energy-type`` and ``/get-emissions``."""

    # Grams per kWh produced, the shape the legacy stored on GGOs as it came (a JSON object per gas).
    default_emissions: ClassVar[dict[str, dict[str, Any]]] = {
        "co2": {"value": 111, "unit": "g/kWh"},
        "ch4": {"value": 0.39, "unit": "g/kWh"},
        "n2o": {"value": 0.004, "unit": "g/kWh"},
        "so2": {"value": 0.03, "unit": "g/kWh"},
        "nox": {"value": 0.15, "unit": "g/kWh"},
    }

    def __init__(self, server: StandInServer, mount: str = "/energytype") -> None:
        self.server = server
        self.mount = mount.rstrip("/")
        self._lock = threading.Lock()
        self._types: dict[str, tuple[str, str]] = {}
        self._emissions: dict[str, dict[str, Any]] = {}
        self._calls: Counter[tuple[str, str | None]] = Counter()
        server.add(Route(self.energy_type_path, handler=self._energy_type))
        server.add(Route(self.emissions_path, handler=self._get_emissions))

    @property
    def energy_type_path(self) -> str:
        return self.mount + "/get-energy-type"

    @property
    def emissions_path(self) -> str:
        return self.mount + "/get-emissions"

    def env(self) -> dict[str, str]:
        return {"ENERGY_TYPE_SERVICE_URL": self.server.url(self.mount)}

    def set_type(self, gsrn: str, technology_code: str, fuel_code: str) -> None:
        with self._lock:
            self._types[gsrn] = (technology_code, fuel_code)

    def set_emissions(self, gsrn: str, emissions: dict[str, Any] | None = None) -> None:
        """``gsrn``'s emissions (``default_emissions`` when None)."""
        with self._lock:
            self._emissions[gsrn] = copy.deepcopy(self.default_emissions if emissions is None else emissions)

    def calls(self, path_suffix: str, gsrn: str | None = None) -> int:
        """Requests whose path ends with ``path_suffix`` (e.g. ``"get-emissions"``), for ``gsrn`` if given."""
        with self._lock:
            return sum(
                n
                for (path, asked), n in self._calls.items()
                if path.endswith(path_suffix) and (gsrn is None or asked == gsrn)
            )

    def _count(self, request: RecordedRequest) -> str | None:
        gsrn = request.query.get("gsrn")
        with self._lock:
            self._calls[(request.path, gsrn)] += 1
        return gsrn

    def _energy_type(self, request: RecordedRequest) -> Reply:
        gsrn = self._count(request)
        with self._lock:
            found = self._types.get(gsrn) if gsrn else None
        if found is None:
            return Reply.json({"success": False, "message": f"No energy type known for GSRN {gsrn!r}"})
        return Reply.json({"success": True, "technologyCode": found[0], "fuelCode": found[1]})

    def _get_emissions(self, request: RecordedRequest) -> Reply:
        gsrn = self._count(request)
        with self._lock:
            found = self._emissions.get(gsrn) if gsrn else None
        # An empty object, not an error: the legacy client read it as "no emissions".
        return Reply.json({} if found is None else {"success": True, "emissions": found})
