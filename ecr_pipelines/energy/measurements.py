"""Which hours a metering point's import asks for, and ElOverblik time series flattened into
measurement rows (no Dagster).

The legacy rules (research notes C4): an import runs from the point's last stored hour + 1 h (or
``FIRST_MEASUREMENT_TIME``, or the first of the previous month) up to today 00:00 UTC, capped by
``LAST_MEASUREMENT_TIME``; the API call's to-date is one day later because the API leaves the
to-date out; of what comes back only ``begin <= hour < end`` is kept. Each Period of a TimeSeries
starts at its ``timeInterval.start`` and its Point ``position`` n is the hour starting n - 1 hours
later (23 or 25 positions on DST days), whatever ``resolution`` says; the amount is in Wh.

One difference from the legacy: its unit enum gave MWH the same value as KWH (1000), so MWh
series were stored a thousand times too small; here MWH is 10^6 Wh.

Speed: a year of one point is 8,760 points, and the benchmark imports a thousand points. The
rows are produced as COPY-ready text: the hour's text and a quantity's amount are looked up in
small caches (every point of a run covers the same hours, and quantities repeat), so a point
costs a few dictionary lookups instead of datetime and Decimal arithmetic.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

HOUR = timedelta(hours=1)
HOUR_SECONDS = 3600
WH_PER_UNIT = {"KWH": 1000, "MWH": 1_000_000}


class SeriesError(ValueError):
    """A time series entry that cannot be read (kind ``bad_series``)."""

    kind = "bad_series"


@dataclass(frozen=True)
class Window:
    begin: datetime  # first hour wanted (UTC)
    end: datetime  # first hour not wanted (UTC)

    @property
    def date_from(self) -> date:
        return self.begin.astimezone(UTC).date()

    @property
    def date_to(self) -> date:
        # The API leaves the to-date out, so ask for the day after the end's date.
        return self.end.astimezone(UTC).date() + timedelta(days=1)

    @property
    def hours(self) -> int:
        return max(0, int((self.end - self.begin).total_seconds()) // HOUR_SECONDS)


def default_begin(now: datetime) -> datetime:
    """The first of the month before ``now``, 00:00 UTC."""
    now = now.astimezone(UTC)
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return datetime(year, month, 1, tzinfo=UTC)


def import_window(
    last_begin: datetime | None, *, now: datetime, first: datetime | None = None, last: datetime | None = None
) -> Window | None:
    """The hours to ask for, or None when there is nothing new to ask for."""
    if last_begin is not None:
        begin = last_begin.astimezone(UTC) + HOUR
    else:
        begin = first.astimezone(UTC) if first is not None else default_begin(now)
    now = now.astimezone(UTC)
    end = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if last is not None:
        end = min(end, last.astimezone(UTC))
    return Window(begin, end) if begin < end else None


def parse_time(value: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC (the settings' rule)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class Flattener:
    """Turns time-series answers into ``(gsrn, begin, end, amount)`` text rows for COPY.

    Keep one per run: its caches (hour texts, amounts per quantity) are shared by every point.
    """

    def __init__(self) -> None:
        self._hour_text: dict[int, str] = {}
        self._amounts: dict[tuple[str, int], str] = {}

    def _hour(self, epoch: int) -> str:
        text = self._hour_text.get(epoch)
        if text is None:
            text = datetime.fromtimestamp(epoch, UTC).isoformat()
            self._hour_text[epoch] = text
        return text

    def _amount(self, quantity: str, factor: int) -> str:
        key = (quantity, factor)
        text = self._amounts.get(key)
        if text is None:
            try:
                text = str(int(Decimal(quantity) * factor))
            except (InvalidOperation, TypeError, ValueError) as exc:
                raise SeriesError(f"quantity {quantity!r} is not a number") from exc
            if len(self._amounts) < 100_000:
                self._amounts[key] = text
        return text

    def rows(
        self, entries: list[Mapping[str, Any]], gsrn: str, window: Window
    ) -> tuple[list[tuple[str, ...]], int]:
        """The new hours of ``gsrn`` in ``window`` (one row per hour, the first answer of an hour
        kept), and how many hours the answer gave outside the window or for another point."""
        begin, end = int(window.begin.timestamp()), int(window.end.timestamp())
        seen: set[int] = set()
        rows: list[tuple[str, ...]] = []
        ignored = 0
        hour = self._hour
        amount = self._amount
        for entry in entries:
            document = entry.get("MyEnergyData_MarketDocument") if isinstance(entry, Mapping) else None
            if document is None:
                continue  # the API's empty answer for a point (the legacy crashed on it once)
            for series in _list(document, "TimeSeries"):
                series_gsrn = str(series.get("mRID", ""))
                unit = str(series.get("measurement_Unit.name", "")).upper()
                factor = WH_PER_UNIT.get(unit)
                if factor is None:
                    raise SeriesError(f"unknown unit {unit!r} in the series of {series_gsrn}")
                for period in _list(series, "Period"):
                    try:
                        start = int(parse_time(period["timeInterval"]["start"]).timestamp())
                    except (KeyError, TypeError, ValueError) as exc:
                        raise SeriesError(f"a period of {series_gsrn} has no readable start") from exc
                    for point in _list(period, "Point"):
                        try:
                            at = start + (int(point["position"]) - 1) * HOUR_SECONDS
                            quantity = point["out_Quantity.quantity"]
                        except (KeyError, TypeError, ValueError) as exc:
                            raise SeriesError(
                                f"a point of {series_gsrn} has no position or quantity"
                            ) from exc
                        if series_gsrn != gsrn or not begin <= at < end or at in seen:
                            ignored += 1
                            continue
                        seen.add(at)
                        rows.append((gsrn, hour(at), hour(at + HOUR_SECONDS), amount(quantity, factor)))
        return rows, ignored


def _list(parent: Mapping[str, Any], key: str) -> list[Any]:
    value = parent.get(key) if isinstance(parent, Mapping) else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise SeriesError(f"`{key}` is not a list")
    return value
