"""The measurement window and the time-series flattening (pure: no database, no server)."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ecr_pipelines.energy.measurements import Flattener, SeriesError, Window, default_begin, import_window

RECORDINGS = (
    Path(__file__).resolve().parents[2] / "ecr_pipelines" / "dev" / "standins" / "recordings" / "energy"
)
GSRN1 = "269841726498172468"
FIRST = datetime(2019, 1, 1, tzinfo=UTC)
LAST = datetime(2019, 2, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)


def recording(number: int) -> list[dict[str, Any]]:
    return json.loads((RECORDINGS / f"imported_timeseries_data_gsrn{number}.json").read_text())["result"]


def test_window_continues_after_the_last_stored_hour() -> None:
    window = import_window(datetime(2019, 1, 5, 23, tzinfo=UTC), now=NOW, first=FIRST, last=LAST)
    assert window == Window(datetime(2019, 1, 6, tzinfo=UTC), LAST)


def test_window_starts_at_first_measurement_time_then_the_previous_month() -> None:
    assert import_window(None, now=NOW, first=FIRST, last=LAST) == Window(FIRST, LAST)
    assert import_window(None, now=NOW).begin == datetime(2026, 11, 1, tzinfo=UTC)
    assert default_begin(datetime(2027, 1, 15, tzinfo=UTC)) == datetime(2026, 12, 1, tzinfo=UTC)


def test_window_ends_today_at_midnight_capped_by_last_measurement_time() -> None:
    assert import_window(None, now=NOW, first=FIRST).end == datetime(2026, 12, 2, tzinfo=UTC)
    assert import_window(None, now=NOW, first=FIRST, last=LAST).end == LAST
    # Nothing to ask for once the last hour before the end is stored.
    assert import_window(datetime(2019, 1, 31, 23, tzinfo=UTC), now=NOW, last=LAST) is None


def test_window_asks_the_api_for_one_day_more() -> None:
    window = Window(FIRST, LAST)
    assert (window.date_from.isoformat(), window.date_to.isoformat()) == ("2019-01-01", "2019-02-02")


def test_the_recording_gives_one_row_per_hour_in_the_window() -> None:
    rows, ignored = Flattener().rows(recording(1), GSRN1, Window(FIRST, LAST))
    # 31 periods of 24 hours from 2018-12-31T23:00Z; the first and the last hour fall outside.
    assert len(rows) == 743
    assert ignored == 1
    assert rows[0] == (GSRN1, "2019-01-01T00:00:00+00:00", "2019-01-01T01:00:00+00:00", "1000")
    assert rows[-1][1] == "2019-01-31T22:00:00+00:00"
    assert len({row[1] for row in rows}) == 743


def test_a_resumed_window_keeps_the_legacys_count() -> None:
    window = import_window(datetime(2019, 1, 5, 23, tzinfo=UTC), now=NOW, first=FIRST, last=LAST)
    assert window is not None
    rows, _ = Flattener().rows(recording(1), GSRN1, window)
    assert len(rows) == 623


def series(gsrn: str, start: str, quantities: list[str], unit: str = "KWH") -> dict[str, Any]:
    return {
        "MyEnergyData_MarketDocument": {
            "TimeSeries": [
                {
                    "mRID": gsrn,
                    "measurement_Unit.name": unit,
                    "Period": [
                        {
                            "resolution": "PT1H",
                            "timeInterval": {"start": start, "end": "ignored"},
                            "Point": [
                                {"position": str(n), "out_Quantity.quantity": q}
                                for n, q in enumerate(quantities, 1)
                            ],
                        }
                    ],
                }
            ]
        }
    }


def test_a_dst_day_has_23_hours_one_hour_apart() -> None:
    window = Window(datetime(2019, 3, 30, 23, tzinfo=UTC), datetime(2019, 4, 1, tzinfo=UTC))
    rows, _ = Flattener().rows([series("1", "2019-03-30T23:00:00Z", ["2.5"] * 23)], "1", window)
    assert len(rows) == 23
    assert rows[-1][1:] == ("2019-03-31T21:00:00+00:00", "2019-03-31T22:00:00+00:00", "2500")


def test_mwh_is_a_million_wh_not_a_thousand() -> None:
    window = Window(FIRST, LAST)
    rows, _ = Flattener().rows([series("1", "2019-01-01T00:00:00Z", ["0.75", "2"], unit="MWH")], "1", window)
    assert [row[3] for row in rows] == ["750000", "2000000"]


def test_null_documents_other_points_and_repeated_hours_are_left_out() -> None:
    window = Window(FIRST, LAST)
    entries = [
        {"MyEnergyData_MarketDocument": None, "success": False},
        series("other", "2019-01-01T00:00:00Z", ["1"]),
        series("1", "2019-01-01T00:00:00Z", ["1", "2"]),
        series("1", "2019-01-01T01:00:00Z", ["9"]),
    ]
    rows, ignored = Flattener().rows(entries, "1", window)
    assert [(row[1][11:16], row[3]) for row in rows] == [("00:00", "1000"), ("01:00", "2000")]
    assert ignored == 2


@pytest.mark.parametrize(
    "entry",
    [
        series("1", "2019-01-01T00:00:00Z", ["lots"]),
        series("1", "2019-01-01T00:00:00Z", ["1"], unit="GWH"),
        series("1", "not a time", ["1"]),
        {"MyEnergyData_MarketDocument": {"TimeSeries": "nope"}},
    ],
)
def test_an_unreadable_series_is_a_classified_error(entry: dict[str, Any]) -> None:
    with pytest.raises(SeriesError) as caught:
        Flattener().rows([entry], "1", Window(FIRST, LAST))
    assert caught.value.kind == "bad_series"
