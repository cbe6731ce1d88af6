"""Which source file is new: the legacy downloaders' rules (B2), without the HTTP.

For a downloaded source (``LISTINGS``), the caller fetches ``listing_url`` and lists the stored
blob names under the source's prefix; then:

1. ``online_files``: the files the listing offers, each with its date. From an HTML page (read
   tag by tag with the standard library's tolerant ``html.parser``): every ``<a href>`` whose
   href ``re.match``-es ``link_regex``, dated by its ``date`` group read with
   ``link_date_format``, made absolute with ``urljoin(page URL, href)``. Nothing offered →
   ``ListingError("no_links")`` (the legacy's "No valid links found.").
2. ``latest_stored``: the newest date among the stored names that ``re.search``
   ``storage_file_regex`` (None when none does).
3. ``is_new``: nothing stored yet, or the newest online file is at least ``refresh_delay`` (one
   day) newer than the newest stored one. Only that newest online file is fetched: gaps are not
   back-filled, as in the legacy.
4. ``stored_name``: the name to store it under (``Accounts_Bulk_Data-2017-06-20.zip``,
   ``exporters1703.zip``, ``ONSPD_AUG_2020_UK.zip``). ``new_file`` does 1-4 at once.

ONS Postcode Directory, a listing without a browser (decided here, unverified: no network from
where this was written). The legacy drove headless Chromium through the geoportal's search page
and then each item page, because that page is a JavaScript application. The geoportal is an
ArcGIS Hub site, and Hub sites serve their catalogue as JSON through the Hub Search API, which
follows OGC API - Records (``/api/search/v1``; the older ``/api/v3/datasets`` is deprecated):

    GET https://geoportal.statistics.gov.uk/api/search/v1/collections/dataset/items
        ?q=ONS%20Postcode%20Directory&sortBy=-properties.created&limit=100

answers a GeoJSON ``FeatureCollection`` whose ``features`` are catalogue items: ``id`` is the
ArcGIS item id, ``properties.title`` the title (``ONS Postcode Directory (May 2024)``). The item
id gives the file without visiting the item page: ArcGIS Online serves an item's file at
``https://www.arcgis.com/sharing/rest/content/items/<id>/data`` (the URL the legacy's download
button led to, as its tests record); ``item_data_url`` lets a caller put another template with
``{id}`` in its place (a stand-in, or a mirror). Titles must match ``link_regex`` whole, which
leaves out the user guides and the centroid layers of the same search. The parser also reads the
two other shapes an ArcGIS search can answer in, should the endpoint have to change: ArcGIS
Online's ``/sharing/rest/search?f=json`` (``results[].id``/``.title``) and Hub v3
(``data[].id``, ``data[].attributes.name``).
"""

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import urljoin

REFRESH_DELAY = timedelta(days=1)
ARCGIS_ITEM_DATA_URL = "https://www.arcgis.com/sharing/rest/content/items/{id}/data"
_ITEM_ID = re.compile(r"[0-9a-f]{32}")


class ListingError(ValueError):
    """The listing offers nothing usable: ``no_links``, ``bad_date``, ``bad_listing``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"{message} [{kind}]")


@dataclass(frozen=True)
class ListingSettings:
    source_id: str
    listing_url: str
    listing_format: Literal["html", "arcgis_json"]
    # re.match on an href (html) or on a whole item title (arcgis_json); names a group "date".
    link_regex: str
    link_date_format: str
    # re.search on a stored blob name; names a group "date".
    storage_file_regex: str
    storage_date_format: str
    # "{date}" is the date written with storage_date_format.
    storage_file_format: str
    upper_case_date: bool = False


@dataclass(frozen=True)
class OnlineFile:
    url: str
    date: date


@dataclass(frozen=True)
class NewFile:
    url: str
    date: date
    stored_name: str


COMPANIES_HOUSE = ListingSettings(
    source_id="companies_house.accounts_legacy",
    listing_url="http://download.companieshouse.gov.uk/en_accountsdata.html",
    listing_format="html",
    link_regex=r"Accounts_Bulk_Data-(?P<date>\d{4}-\d{2}-\d{2})\.zip$",
    link_date_format="%Y-%m-%d",
    storage_file_regex=r"Accounts_Bulk_Data-(?P<date>\d{4}-\d{2}-\d{2})",
    storage_date_format="%Y-%m-%d",
    storage_file_format="Accounts_Bulk_Data-{date}.zip",
)
HMRC_EXPORTERS = ListingSettings(
    source_id="hmrc.exporters",
    listing_url="https://www.uktradeinfo.com/Statistics/Pages/DataDownloads.aspx",
    listing_format="html",
    link_regex=r"(.*?)/exporters(?P<date>\d{4})\.zip$",
    link_date_format="%y%m",
    storage_file_regex=r"exporters(?P<date>\d{4})",
    storage_date_format="%y%m",
    storage_file_format="exporters{date}.zip",
)
ONS_POSTCODE_DIRECTORY = ListingSettings(
    source_id="ons.postcode_directory",
    listing_url=(
        "https://geoportal.statistics.gov.uk/api/search/v1/collections/dataset/items"
        "?q=ONS%20Postcode%20Directory&sortBy=-properties.created&limit=100"
    ),
    listing_format="arcgis_json",
    link_regex=r"ONS Postcode Directory \((?P<date>[A-Za-z]+ \d{4})\)$",
    link_date_format="%B %Y",
    storage_file_regex=r"ONSPD_(?P<date>\w{3}_\d{4})_UK\.zip$",
    storage_date_format="%b_%Y",
    storage_file_format="ONSPD_{date}_UK.zip",
    upper_case_date=True,
)
LISTINGS: dict[str, ListingSettings] = {
    settings.source_id: settings for settings in (COMPANIES_HOUSE, HMRC_EXPORTERS, ONS_POSTCODE_DIRECTORY)
}


def _parse_date(text: str, date_format: str, what: str) -> date:
    try:
        return datetime.strptime(text, date_format).date()
    except ValueError as error:
        raise ListingError("bad_date", f"{what}: {text!r} is not a date as {date_format!r}") from error


class _Hrefs(HTMLParser):
    """Every ``<a href>`` of a page, tag by tag: the legacy's BeautifulSoup found links in pages
    that a tree builder drops (its own test page opens with ``<html/>``), so no tree is built."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href.strip())


def links_in_html(html: bytes, page_url: str, link_regex: str, date_format: str) -> list[OnlineFile]:
    """The page's links that match, dated and absolute, in page order."""
    pattern = re.compile(link_regex)
    parser = _Hrefs()
    # Links are ASCII (percent-encoded); a page in another encoding only garbles its text.
    parser.feed(html.decode("utf-8", errors="replace"))
    parser.close()
    found = []
    for href in parser.hrefs:
        match = pattern.match(href)
        if match is not None:
            found.append(OnlineFile(urljoin(page_url, href), _parse_date(match["date"], date_format, href)))
    return found


def arcgis_items(payload: Any) -> Iterator[tuple[str, str]]:
    """(title, item id) of each item of an ArcGIS search answer, whichever of the three shapes."""
    if not isinstance(payload, dict):
        return
    if isinstance(payload.get("features"), list):  # Hub Search API (OGC API - Records)
        for feature in payload["features"]:
            if isinstance(feature, dict):
                properties = feature.get("properties") or {}
                yield properties.get("title"), feature.get("id") or properties.get("id")
    elif isinstance(payload.get("results"), list):  # ArcGIS Online /sharing/rest/search
        for result in payload["results"]:
            if isinstance(result, dict):
                yield result.get("title"), result.get("id")
    elif isinstance(payload.get("data"), list):  # Hub v3 (JSON:API)
        for item in payload["data"]:
            if isinstance(item, dict):
                attributes = item.get("attributes") or {}
                yield attributes.get("name") or attributes.get("title"), item.get("id")


def files_in_arcgis_search(
    body: bytes, link_regex: str, date_format: str, *, item_data_url: str = ARCGIS_ITEM_DATA_URL
) -> list[OnlineFile]:
    """The items whose whole title matches, dated from it, as item data URLs (``item_data_url``
    with the item id for ``{id}``)."""
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise ListingError("bad_listing", f"the search answer is not JSON ({error})") from error
    pattern = re.compile(link_regex)
    found = []
    for title, item_id in arcgis_items(payload):
        if not isinstance(title, str) or not isinstance(item_id, str):
            continue
        match = pattern.match(title.strip())
        # Hub v3 suffixes layer ids (``<item>_0``); the item id is what serves the file.
        item = item_id.split("_", 1)[0].lower()
        if match is None or not _ITEM_ID.fullmatch(item):
            continue
        found.append(
            OnlineFile(item_data_url.format(id=item), _parse_date(match["date"], date_format, title))
        )
    return found


def online_files(
    body: bytes, page_url: str, settings: ListingSettings, *, item_data_url: str = ARCGIS_ITEM_DATA_URL
) -> list[OnlineFile]:
    if settings.listing_format == "arcgis_json":
        files = files_in_arcgis_search(
            body, settings.link_regex, settings.link_date_format, item_data_url=item_data_url
        )
    else:
        files = links_in_html(body, page_url, settings.link_regex, settings.link_date_format)
    if not files:
        raise ListingError("no_links", f"{page_url} offers no file matching {settings.link_regex}")
    return files


def latest_online(files: Iterable[OnlineFile]) -> OnlineFile:
    # The first listed wins a tie, as max() kept it in the legacy.
    return max(files, key=lambda file: file.date)


def stored_dates(names: Iterable[str], settings: ListingSettings) -> list[date]:
    pattern = re.compile(settings.storage_file_regex)
    dates = []
    for name in names:
        match = pattern.search(name)
        if match is not None:
            dates.append(_parse_date(match["date"], settings.storage_date_format, name))
    return dates


def latest_stored(names: Iterable[str], settings: ListingSettings) -> date | None:
    return max(stored_dates(names, settings), default=None)


def is_new(online_latest: date, stored_latest: date | None, refresh_delay: timedelta = REFRESH_DELAY) -> bool:
    return stored_latest is None or online_latest - stored_latest >= refresh_delay


def stored_name(settings: ListingSettings, day: date) -> str:
    text = day.strftime(settings.storage_date_format)
    return settings.storage_file_format.format(date=text.upper() if settings.upper_case_date else text)


def new_file(
    body: bytes,
    page_url: str,
    stored_names: Iterable[str],
    settings: ListingSettings,
    refresh_delay: timedelta = REFRESH_DELAY,
    *,
    item_data_url: str = ARCGIS_ITEM_DATA_URL,
) -> NewFile | None:
    """The file to download and the name to store it under, or None when nothing is new."""
    latest = latest_online(online_files(body, page_url, settings, item_data_url=item_data_url))
    if not is_new(latest.date, latest_stored(stored_names, settings), refresh_delay):
        return None
    return NewFile(latest.url, latest.date, stored_name(settings, latest.date))
