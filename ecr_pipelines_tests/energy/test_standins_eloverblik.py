"""The ElOverblik and EnergyTypeService stand-ins answer as the real APIs do (research C2).

The energy clients' tests, the demo and the benchmark rely on them, so their shapes are checked
against the recorded answers here, with plain ``requests`` over the socket.
"""

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
import requests

from ecr_pipelines.dev.standins.eloverblik import (
    DENIED_CODE,
    RECORDINGS,
    TIMESERIES_RECORDINGS,
    EloverblikStandIn,
    EnergyTypeStandIn,
    meteringpoint,
    recorded_meteringpoints,
    recording_gsrn,
)
from ecr_pipelines.dev.standins.server import Fault, StandInServer

GSRN1, GSRN2 = "269841726498172468", "198498465435784984"
SYNTHETIC = "571313000000000001"
OTHER = "571313000000000002"


@pytest.fixture
def eloverblik(standin: StandInServer) -> EloverblikStandIn:
    return EloverblikStandIn(standin)


def _url(el: EloverblikStandIn, path: str) -> str:
    return el.env()["ELOVERBLIK_SERVICE_URL"] + path


def _access_token(el: EloverblikStandIn) -> str:
    answer = requests.get(
        _url(el, "/api/Token"), headers={"Authorization": f"Bearer {el.refresh_token}"}, timeout=5
    )
    assert answer.status_code == 200
    return answer.json()["result"]


def _timeseries(
    el: EloverblikStandIn, date_from: str, date_to: str, gsrns: list[str], token: str | None = None
) -> requests.Response:
    return requests.post(
        _url(el, f"/api/MeterData/GetTimeSeries/{date_from}/{date_to}/Hour"),
        json={"meteringPoints": {"meteringPoint": gsrns}},
        headers={"Authorization": f"Bearer {token or _access_token(el)}"},
        timeout=5,
    )


def _recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDINGS / name).read_bytes())


def _same_keys(built: dict[str, Any], recorded: dict[str, Any]) -> None:
    """``built`` has the recorded structure: the same keys, level by level, down to one Point."""
    assert list(built) == list(recorded)
    for key, value in recorded.items():
        if isinstance(value, dict) and value:
            _same_keys(built[key], value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            _same_keys(built[key][0], value[0])


def test_env_points_at_the_mount(standin: StandInServer, eloverblik: EloverblikStandIn) -> None:
    assert eloverblik.env() == {
        "ELOVERBLIK_SERVICE_URL": standin.url("/eloverblik"),
        "ELOVERBLIK_TOKEN": "demo-refresh-token",
    }
    assert EnergyTypeStandIn(standin).env() == {"ENERGY_TYPE_SERVICE_URL": standin.url("/energytype")}


def test_the_refresh_token_buys_a_new_access_token_each_call(eloverblik: EloverblikStandIn) -> None:
    token_url = _url(eloverblik, "/api/Token")
    assert requests.get(token_url, timeout=5).status_code == 401
    wrong = requests.get(token_url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    first, second = _access_token(eloverblik), _access_token(eloverblik)
    assert first != second
    assert eloverblik.token_calls == 4

    points_url = _url(eloverblik, "/api/Authorization/Authorization/MeteringPoints/customerKey/someone")
    for token in (first, second):
        answer = requests.get(points_url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert answer.status_code == 200
    for headers in (
        {},
        {"Authorization": f"Bearer {eloverblik.refresh_token}"},
        {"Authorization": "Bearer x"},
    ):
        assert requests.get(points_url, headers=headers, timeout=5).status_code == 401
    assert _timeseries(eloverblik, "2019-01-01", "2019-01-02", [SYNTHETIC], "x").status_code == 401

    eloverblik.revoke_access_tokens()
    answer = requests.get(points_url, headers={"Authorization": f"Bearer {first}"}, timeout=5)
    assert answer.status_code == 401


def test_a_fault_on_the_token_route(standin: StandInServer, eloverblik: EloverblikStandIn) -> None:
    standin.inject(eloverblik.token_path, Fault(status=503, times=1))
    headers = {"Authorization": f"Bearer {eloverblik.refresh_token}"}
    assert requests.get(_url(eloverblik, "/api/Token"), headers=headers, timeout=5).status_code == 503
    _access_token(eloverblik)


def test_metering_points_per_customer(standin: StandInServer, eloverblik: EloverblikStandIn) -> None:
    recorded = recorded_meteringpoints()
    assert recorded == _recorded("imported_meteringpoint_data.json")["result"]
    assert [p["meteringPointId"] for p in recorded] == ["571313180400240049", "571313180400240612"]
    own = [
        meteringpoint("571313000000000010", "E18", "4000", streetName="Vindvej"),
        meteringpoint("571313000000000011"),
    ]
    for point in own:
        assert list(point) == list(recorded[0])
    assert own[0]["typeOfMP"] == "E18" and own[0]["postcode"] == "4000" and own[0]["streetName"] == "Vindvej"
    with pytest.raises(TypeError, match="streetname"):
        meteringpoint("571313000000000012", streetname="typo")

    eloverblik.add_customer("sub-1", recorded)
    eloverblik.add_customer("sub 2", own)
    headers = {"Authorization": f"Bearer {_access_token(eloverblik)}"}

    def listed(sub: str) -> list[dict[str, Any]]:
        answer = requests.get(standin.url(eloverblik.meteringpoints_path(sub)), headers=headers, timeout=5)
        assert answer.status_code == 200
        return answer.json()["result"]

    assert listed("sub-1") == recorded
    assert listed("sub%202") == own
    assert listed("nobody") == []


def test_the_recordings_are_served_as_recorded(eloverblik: EloverblikStandIn) -> None:
    assert [recording_gsrn(name) for name in TIMESERIES_RECORDINGS] == [GSRN1, GSRN2]
    assert [eloverblik.serve_recording(name) for name in TIMESERIES_RECORDINGS] == [GSRN1, GSRN2]
    token = _access_token(eloverblik)

    alone = _timeseries(eloverblik, "2030-05-01", "2030-05-02", [GSRN1], token)
    assert alone.status_code == 200
    assert alone.content == (RECORDINGS / TIMESERIES_RECORDINGS[0]).read_bytes()

    both = _timeseries(eloverblik, "2019-01-01", "2019-02-01", [GSRN2, GSRN1], token).json()
    expected = [
        _recorded(TIMESERIES_RECORDINGS[1])["result"][0],
        _recorded(TIMESERIES_RECORDINGS[0])["result"][0],
    ]
    assert both["result"] == expected
    assert eloverblik.requests_for_timeseries() == [
        (date(2030, 5, 1), date(2030, 5, 2), [GSRN1]),
        (date(2019, 1, 1), date(2019, 2, 1), [GSRN2, GSRN1]),
    ]
    with pytest.raises(ValueError, match="no time-series recording"):
        eloverblik.serve_recording("other.json")


def _periods(entry: dict[str, Any]) -> list[dict[str, Any]]:
    (series,) = entry["MyEnergyData_MarketDocument"]["TimeSeries"]
    return series["Period"]


def test_a_synthetic_series_over_the_spring_change(eloverblik: EloverblikStandIn) -> None:
    eloverblik.serve_synthetic(SYNTHETIC)
    answer = _timeseries(eloverblik, "2019-03-30", "2019-04-01", [SYNTHETIC])
    assert answer.status_code == 200
    (entry,) = answer.json()["result"]
    _same_keys(entry, _recorded(TIMESERIES_RECORDINGS[0])["result"][0])
    assert entry["id"] == SYNTHETIC and entry["success"] is True and entry["errorCode"] == "10000"
    document = entry["MyEnergyData_MarketDocument"]
    assert document["period.timeInterval"] == {"start": "2019-03-29T23:00:00Z", "end": "2019-03-31T22:00:00Z"}
    (series,) = document["TimeSeries"]
    assert series["mRID"] == SYNTHETIC and series["MarketEvaluationPoint"]["mRID"]["name"] == SYNTHETIC
    assert series["measurement_Unit.name"] == "KWH"
    periods = series["Period"]
    # The to-date is left out: 30 and 31 March (Danish days), the second one 23 hours long.
    assert [p["timeInterval"] for p in periods] == [
        {"start": "2019-03-29T23:00:00Z", "end": "2019-03-30T23:00:00Z"},
        {"start": "2019-03-30T23:00:00Z", "end": "2019-03-31T22:00:00Z"},
    ]
    assert [len(p["Point"]) for p in periods] == [24, 23]
    assert {p["resolution"] for p in periods} == {"PT1H"}
    assert [pt["position"] for pt in periods[1]["Point"]] == [str(i) for i in range(1, 24)]
    assert {pt["out_Quantity.quantity"] for p in periods for pt in p["Point"]} == {"1.0"}
    assert {pt["out_Quantity.quality"] for p in periods for pt in p["Point"]} == {"A04"}


def test_a_synthetic_series_over_the_autumn_change_in_mwh(eloverblik: EloverblikStandIn) -> None:
    hours: list[datetime] = []

    def quantity(gsrn: str, hour: datetime) -> str:
        assert gsrn == SYNTHETIC
        hours.append(hour)
        return "0" if hour.hour % 2 == 0 else "0.25"

    eloverblik.serve_synthetic(SYNTHETIC, quantity=quantity, unit="MWH")
    (entry,) = _timeseries(eloverblik, "2019-10-27", "2019-10-28", [SYNTHETIC]).json()["result"]
    (series,) = entry["MyEnergyData_MarketDocument"]["TimeSeries"]
    assert series["measurement_Unit.name"] == "MWH"
    (period,) = series["Period"]
    assert period["timeInterval"] == {"start": "2019-10-26T22:00:00Z", "end": "2019-10-27T23:00:00Z"}
    assert [pt["position"] for pt in period["Point"]] == [str(i) for i in range(1, 26)]
    assert hours[0] == datetime(2019, 10, 26, 22, tzinfo=UTC) and hours[-1] == datetime(
        2019, 10, 27, 22, tzinfo=UTC
    )
    assert [pt["out_Quantity.quantity"] for pt in period["Point"]] == [
        "0" if h.hour % 2 == 0 else "0.25" for h in hours
    ]
    with pytest.raises(ValueError, match="unit"):
        eloverblik.serve_synthetic(SYNTHETIC, unit="WH")


def test_null_documents_and_points_without_access(eloverblik: EloverblikStandIn) -> None:
    eloverblik.serve_null(SYNTHETIC)
    eloverblik.serve_synthetic(OTHER)
    unknown = "571313000000000099"
    answer = _timeseries(eloverblik, "2019-01-01", "2019-01-02", [SYNTHETIC, unknown, OTHER])
    assert answer.status_code == 200
    null, denied, served = answer.json()["result"]
    assert null == {
        "MyEnergyData_MarketDocument": None,
        "success": True,
        "errorCode": "10000",
        "errorText": "NoError",
        "id": SYNTHETIC,
        "stackTrace": None,
    }
    assert denied["MyEnergyData_MarketDocument"] is None and denied["success"] is False
    assert denied["errorCode"] == DENIED_CODE and denied["id"] == unknown
    assert served["id"] == OTHER and len(_periods(served)) == 1


def test_one_metering_point_fails_while_the_others_succeed(eloverblik: EloverblikStandIn) -> None:
    eloverblik.serve_synthetic(SYNTHETIC)
    eloverblik.serve_synthetic(OTHER)
    eloverblik.fail_gsrn(SYNTHETIC, status=500, times=1)
    token = _access_token(eloverblik)
    assert _timeseries(eloverblik, "2019-01-01", "2019-01-02", [OTHER], token).status_code == 200
    assert _timeseries(eloverblik, "2019-01-01", "2019-01-02", [SYNTHETIC], token).status_code == 500
    assert _timeseries(eloverblik, "2019-01-01", "2019-01-02", [SYNTHETIC], token).status_code == 200

    eloverblik.fail_gsrn(OTHER, status=503, times=None)
    for _ in range(2):
        assert (
            _timeseries(eloverblik, "2019-01-01", "2019-01-02", [SYNTHETIC, OTHER], token).status_code == 503
        )
    eloverblik.clear_faults()
    assert _timeseries(eloverblik, "2019-01-01", "2019-01-02", [OTHER], token).status_code == 200
    assert len(eloverblik.requests_for_timeseries()) == 6


def test_malformed_time_series_requests_are_refused(eloverblik: EloverblikStandIn) -> None:
    eloverblik.serve_synthetic(SYNTHETIC)
    token = _access_token(eloverblik)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"meteringPoints": {"meteringPoint": [SYNTHETIC]}}
    base = _url(eloverblik, "/api/MeterData/GetTimeSeries/")
    for path in ("2019-01-01/2019-01-02/Day", "2019-1-1/2019-01-02/Hour", "2019-01-02/2019-01-02/Hour"):
        assert requests.post(base + path, json=body, headers=headers, timeout=5).status_code == 400, path
    bad_body = requests.post(
        base + "2019-01-01/2019-01-02/Hour", json={"gsrn": [SYNTHETIC]}, headers=headers, timeout=5
    )
    assert bad_body.status_code == 400
    assert eloverblik.requests_for_timeseries() == []


def test_energy_types_and_emissions(standin: StandInServer) -> None:
    service = EnergyTypeStandIn(standin)
    service.set_type(GSRN1, "T020000", "F01050100")
    service.set_emissions(GSRN1)
    service.set_emissions(GSRN2, {"co2": {"value": 5, "unit": "g/kWh"}})
    base = service.env()["ENERGY_TYPE_SERVICE_URL"]

    def get(path: str, gsrn: str) -> dict[str, Any]:
        answer = requests.get(f"{base}/{path}", params={"gsrn": gsrn}, timeout=5)
        assert answer.status_code == 200
        return answer.json()

    assert get("get-energy-type", GSRN1) == {
        "success": True,
        "technologyCode": "T020000",
        "fuelCode": "F01050100",
    }
    unknown = get("get-energy-type", GSRN2)
    assert unknown["success"] is False and unknown["message"]
    assert get("get-emissions", GSRN1) == {"success": True, "emissions": EnergyTypeStandIn.default_emissions}
    assert get("get-emissions", GSRN2) == {
        "success": True,
        "emissions": {"co2": {"value": 5, "unit": "g/kWh"}},
    }
    assert get("get-emissions", SYNTHETIC) == {}
    get("get-emissions", GSRN1)

    assert service.calls("get-emissions") == 4
    assert service.calls("get-emissions", GSRN1) == 2
    assert service.calls("get-energy-type") == 2
    assert service.calls("get-energy-type", SYNTHETIC) == 0
