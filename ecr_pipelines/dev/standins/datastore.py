"""A stand-in for the three public sites the data store downloads from (B2), on a ``StandInServer``.

* Companies House: an HTML page like ``en_accountsdata.html``, with one relative link
  ``Accounts_Bulk_Data-YYYY-MM-DD.zip`` per offered file (served beside the page) among links
  that are not data;
* HMRC (uktradeinfo): an HTML page like ``DataDownloads.aspx``, with absolute-path links
  ``/Statistics/Documents/Data%20Downloads/exportersYYMM.zip``;
* ONS: the geoportal's Hub Search API answer, a GeoJSON ``FeatureCollection`` whose features are
  catalogue items (``id``: a 32-hex item id, ``properties.title``: ``ONS Postcode Directory
  (May 2019)``), with a user guide that is not data, and each item's file at an ArcGIS-like
  ``.../content/items/<id>/data``.

``offer(source_id, *files)`` sets what a listing offers (replacing the previous offer); a file is
an ``OfferedFile`` (its bytes and day, and optionally a name other than the one the real site
would give it). The listing pages are built from the current offer on every request, and every
offered file has an exact route of its own, so a test can inject a fault into one file
(``server.inject(standin.file_path(...), Fault(...))``) and count the requests for it.

``env()`` gives the ``DSS_*`` variables that point the downloaders at the stand-in. With
``defaults=True`` it offers the demo's files (``ecr_pipelines/dev/datastore/``, see SOURCES.md
there): one of each source. Used by the tests and the demo: no pytest here.
"""

import hashlib
from dataclasses import dataclass
from datetime import date
from html import escape
from pathlib import Path
from typing import Any

from ecr_pipelines.datastore.sources.listing import COMPANIES_HOUSE, HMRC_EXPORTERS, ONS_POSTCODE_DIRECTORY
from ecr_pipelines.dev.standins.server import RecordedRequest, Reply, Route, StandInServer

DEMO_FILES = Path(__file__).resolve().parents[1] / "datastore"
COMPANIES_HOUSE_ID = COMPANIES_HOUSE.source_id
HMRC_EXPORTERS_ID = HMRC_EXPORTERS.source_id
ONS_POSTCODE_DIRECTORY_ID = ONS_POSTCODE_DIRECTORY.source_id
SOURCE_IDS = (COMPANIES_HOUSE_ID, HMRC_EXPORTERS_ID, ONS_POSTCODE_DIRECTORY_ID)

# Paths as on the real sites, under the stand-in's mount.
CH_FOLDER = "/companieshouse/"
CH_PAGE = CH_FOLDER + "en_accountsdata.html"
HMRC_PAGE = "/Statistics/Pages/DataDownloads.aspx"
HMRC_FOLDER = "/Statistics/Documents/Data%20Downloads/"
ONS_SEARCH = "/geoportal/api/search/v1/collections/dataset/items"
ONS_QUERY = "?q=ONS%20Postcode%20Directory&sortBy=-properties.created&limit=100"
ARCGIS_ITEMS = "/arcgis/sharing/rest/content/items/"

# (day, file in DEMO_FILES) per source: dates that agree with the files' contents (SOURCES.md).
DEMO_OFFER: dict[str, tuple[date, str]] = {
    COMPANIES_HOUSE_ID: (date(2020, 4, 1), "companies_house_accounts_test_datafile_1.zip"),
    HMRC_EXPORTERS_ID: (date(2016, 2, 1), "hmrc_exporters_2016_mock.zip"),
    ONS_POSTCODE_DIRECTORY_ID: (date(2019, 5, 1), "ons_postcode_directory_ONSPD_MAY_2019_UK.zip"),
}
# English whatever the locale: the titles are the site's, not the machine's.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_USER_GUIDE_ID = "5e1f0c2a9b8d4e6f8a7b6c5d4e3f2a1b"
_ZIP = "application/zip"


@dataclass(frozen=True)
class OfferedFile:
    """One file a listing offers. ``name``: the link's file name (Companies House, HMRC) or the
    item's title (ONS); None gives the name the real site uses for a file of ``day``."""

    day: date
    data: bytes
    name: str | None = None


def default_name(source_id: str, day: date) -> str:
    if source_id == COMPANIES_HOUSE_ID:
        return f"Accounts_Bulk_Data-{day:%Y-%m-%d}.zip"
    if source_id == HMRC_EXPORTERS_ID:
        return f"exporters{day:%y%m}.zip"
    if source_id == ONS_POSTCODE_DIRECTORY_ID:
        return f"ONS Postcode Directory ({_MONTHS[day.month - 1]} {day.year})"
    raise ValueError(f"the stand-in does not serve {source_id!r} (it serves {', '.join(SOURCE_IDS)})")


def item_id(title: str) -> str:
    """A stable 32-hex ArcGIS-like item id for an ONS item title."""
    return hashlib.sha256(title.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Listed:
    name: str
    day: date
    path: str  # where the file is served, under the mount


class DatastoreStandIn:
    """The three listings and their files on a ``StandInServer``, under ``mount``.

    Pass a running server (a test's ``standin``, the demo's shared server) or let the stand-in
    start its own (``start()``/``stop()`` or a ``with`` block; they leave a given server alone).
    """

    def __init__(
        self,
        server: StandInServer | None = None,
        *,
        mount: str = "",
        files_dir: Path | None = None,
        defaults: bool = True,
    ) -> None:
        self._own = server is None
        self.server = server if server is not None else StandInServer()
        self.mount = mount.rstrip("/")
        self.files_dir = files_dir if files_dir is not None else DEMO_FILES
        self._listed: dict[str, list[_Listed]] = {source_id: [] for source_id in SOURCE_IDS}
        self._files: dict[str, Route] = {}
        self.server.add(Route(self.mount + CH_PAGE, handler=self._companies_house_page))
        self.server.add(Route(self.mount + HMRC_PAGE, handler=self._hmrc_page))
        self.server.add(Route(self.mount + ONS_SEARCH, handler=self._ons_search))
        if defaults:
            for source_id, (day, file_name) in DEMO_OFFER.items():
                self.offer(source_id, OfferedFile(day, (self.files_dir / file_name).read_bytes()))

    # -- life cycle (only for a server of its own) ------------------------------------------------
    def start(self) -> "DatastoreStandIn":
        if self._own:
            self.server.start()
        return self

    def stop(self) -> None:
        if self._own:
            self.server.stop()

    def __enter__(self) -> "DatastoreStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content ------------------------------------------------------------------------------------
    def offer(self, source_id: str, *files: OfferedFile) -> list[str]:
        """Make ``source_id``'s listing offer ``files`` (in that order; the real pages list the
        newest first), replacing what it offered; returns the files' paths on the server. Files
        offered before stay served (sites keep old files), just no longer listed."""
        listed = []
        for file in files:
            name = file.name if file.name is not None else default_name(source_id, file.day)
            path = self._file_path(source_id, name)
            route = self._files.get(path)
            if route is None:
                self._files[path] = self.server.add(
                    Route(path, body=file.data, headers={"Content-Type": _ZIP})
                )
            else:
                # The same route keeps the faults a test attached to it.
                route.body = file.data
            listed.append(_Listed(name, file.day, path))
        self._listed[source_id] = listed
        return [entry.path for entry in listed]

    def clear(self, source_id: str | None = None) -> None:
        """List nothing (for one source, or all): the pages keep only their links that are not data."""
        for key in SOURCE_IDS if source_id is None else (source_id,):
            self._listed[key] = []

    def file_path(self, source_id: str, day: date, name: str | None = None) -> str:
        """Where the file of ``day`` (named ``name``, default the real site's) is served."""
        return self._file_path(source_id, name if name is not None else default_name(source_id, day))

    def file_url(self, source_id: str, day: date, name: str | None = None) -> str:
        return self.server.url(self.file_path(source_id, day, name))

    def _file_path(self, source_id: str, name: str) -> str:
        if source_id == COMPANIES_HOUSE_ID:
            return self.mount + CH_FOLDER + name
        if source_id == HMRC_EXPORTERS_ID:
            return self.mount + HMRC_FOLDER + name
        if source_id == ONS_POSTCODE_DIRECTORY_ID:
            return f"{self.mount}{ARCGIS_ITEMS}{item_id(name)}/data"
        raise ValueError(f"the stand-in does not serve {source_id!r} (it serves {', '.join(SOURCE_IDS)})")

    # -- where it is --------------------------------------------------------------------------------
    @property
    def companies_house_url(self) -> str:
        return self.server.url(self.mount + CH_PAGE)

    @property
    def hmrc_exporters_url(self) -> str:
        return self.server.url(self.mount + HMRC_PAGE)

    @property
    def ons_postcode_directory_url(self) -> str:
        return self.server.url(self.mount + ONS_SEARCH + ONS_QUERY)

    @property
    def ons_item_data_url(self) -> str:
        """The item-data URL template (``{id}``), as ``DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL``."""
        return self.server.url(self.mount + ARCGIS_ITEMS) + "{id}/data"

    def listing_url(self, source_id: str) -> str:
        urls = {
            COMPANIES_HOUSE_ID: self.companies_house_url,
            HMRC_EXPORTERS_ID: self.hmrc_exporters_url,
            ONS_POSTCODE_DIRECTORY_ID: self.ons_postcode_directory_url,
        }
        if source_id not in urls:
            raise ValueError(f"the stand-in does not serve {source_id!r} (it serves {', '.join(SOURCE_IDS)})")
        return urls[source_id]

    @property
    def listing_urls(self) -> dict[str, str]:
        return {source_id: self.listing_url(source_id) for source_id in SOURCE_IDS}

    def env(self) -> dict[str, str]:
        """The variables that point the downloaders here (the server must be running)."""
        return {
            "DSS_COMPANIES_HOUSE_ACCOUNTS_URL": self.companies_house_url,
            "DSS_HMRC_EXPORTERS_URL": self.hmrc_exporters_url,
            "DSS_ONS_POSTCODE_DIRECTORY_URL": self.ons_postcode_directory_url,
            "DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL": self.ons_item_data_url,
        }

    # -- the listings -------------------------------------------------------------------------------
    def _size(self, entry: _Listed) -> int:
        route = self._files.get(entry.path)
        return len(route.body or b"") if route is not None else 0

    def _companies_house_page(self, request: RecordedRequest) -> Reply:
        # Relative links, resolved against the page's folder as on the real site.
        links = "\n".join(
            f'<li><a href="{escape(e.name)}">{escape(e.name)}  ({max(1, self._size(e) // 1024)}Kb)</a></li>'
            for e in self._listed[COMPANIES_HOUSE_ID]
        )
        return _html(
            "Companies House Data Products",
            f"""<h1>Accounts Data Product</h1>
<p>Each file holds the accounts filed on one business day. See the
<a href="accountsdataproduct.pdf">product guide</a>.</p>
<ul>
{links}
</ul>
<p>Monthly archive: <a href="Accounts_Monthly_Data-March2020.zip">Accounts_Monthly_Data-March2020.zip</a></p>
<p><a href="/">Home</a></p>""",
        )

    def _hmrc_page(self, request: RecordedRequest) -> Reply:
        rows = "\n".join(
            f"<tr><td>Exporters {_MONTHS[e.day.month - 1]} {e.day.year}</td>"
            f'<td><a href="{escape(e.path)}">{escape(e.name)}</a></td></tr>'
            for e in self._listed[HMRC_EXPORTERS_ID]
        )
        guide = self.mount + HMRC_FOLDER + "Exporters%20Data%20Guide.pdf"
        importers = self.mount + HMRC_FOLDER + "importers1703.zip"
        return _html(
            "Data Downloads - uktradeinfo",
            f"""<h1>Data Downloads</h1>
<table>
{rows}
<tr><td>Importers</td><td><a href="{importers}">importers1703.zip</a></td></tr>
</table>
<p><a href="{guide}">Exporters data guide</a></p>""",
        )

    def _ons_search(self, request: RecordedRequest) -> Reply:
        entries = self._listed[ONS_POSTCODE_DIRECTORY_ID]
        features: list[dict[str, Any]] = [
            {
                "type": "Feature",
                "id": item_id(e.name),
                "geometry": None,
                "properties": {
                    "title": e.name,
                    "type": "CSV Collection",
                    "owner": "ONSGeography_data",
                    "created": _epoch_ms(e.day),
                },
            }
            for e in entries
        ]
        # Found by the same search, never data: the title does not match whole.
        features.append(
            {
                "type": "Feature",
                "id": _USER_GUIDE_ID,
                "geometry": None,
                "properties": {"title": "ONS Postcode Directory (May 2019) User Guide", "type": "PDF"},
            }
        )
        return Reply.json(
            {
                "type": "FeatureCollection",
                "features": features,
                "numberMatched": len(features),
                "numberReturned": len(features),
                "timeStamp": "2024-01-01T00:00:00Z",
                "links": [],
            }
        )


def _html(title: str, body: str) -> Reply:
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{escape(title)}</title></head>
<body>
{body}
</body>
</html>
"""
    return Reply(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})


def _epoch_ms(day: date) -> int:
    return (day - date(1970, 1, 1)).days * 86_400_000
