"""The data store's downloaders (B2), without Dagster: the newest file of each public source into
the blob store.

For each source of ``DOWNLOADED_SOURCES``, ``download_source`` does what the legacy's
``WebScrapingDataSource.update()`` did: GET the listing (an HTML page, or the ONS Hub search
answer), list the stored names under the source's blob folder, and let ``listing.new_file``
decide; when a file is new (nothing stored, or the newest online one is at least a day newer
than the newest stored), only that newest file is fetched, as the legacy did (gaps are not
back-filled), and stored as ``<spec.blob_prefix><stored name>``.

Differences from the legacy, on purpose:

* the file is streamed into the blob store (``http.download_to_blob``), never held in memory,
  and capped at ``DownloadSettings.max_bytes``; ``BlobStore.put_stream`` writes an object whole
  or not at all (a local store renames a finished temporary file into place; S3's managed upload
  sends one PUT or aborts its multipart upload), so a download that breaks off leaves nothing
  under the name, and the next run tries again;
* TLS certificates are checked (the legacy switched verification off);
* nothing raises for a source's trouble: the report says ``failed`` with a kind
  (``http_status``, ``connection``, ``timeout``, ``too_large``, ``no_links``, ``bad_date``,
  ``bad_listing``, or the exception's class) and the message, and ``download_sources`` goes on
  with the next source.
"""

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlparse

import requests

from ecr_pipelines.datastore.load import stored_files
from ecr_pipelines.datastore.sources import SOURCES, SourceSpec, listing
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import FetchError, download_to_blob, get_bytes
from ecr_pipelines.lib.settings import env_str

log = logging.getLogger(__name__)

DOWNLOADED_SOURCES: tuple[str, ...] = (
    listing.COMPANIES_HOUSE.source_id,
    listing.HMRC_EXPORTERS.source_id,
    listing.ONS_POSTCODE_DIRECTORY.source_id,
)
LISTING_URL_VARIABLES: dict[str, str] = {
    listing.COMPANIES_HOUSE.source_id: "DSS_COMPANIES_HOUSE_ACCOUNTS_URL",
    listing.HMRC_EXPORTERS.source_id: "DSS_HMRC_EXPORTERS_URL",
    listing.ONS_POSTCODE_DIRECTORY.source_id: "DSS_ONS_POSTCODE_DIRECTORY_URL",
}
ITEM_DATA_URL_VARIABLE = "DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL"
MAX_BYTES_VARIABLE = "DATASTORE_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_BYTES = 20 * 1024**3
# A listing is a page or a search answer of a few hundred kB; anything far bigger is not one, and
# it is read into memory to be parsed, so it is capped on its own.
MAX_LISTING_BYTES = 32 * 1024**2

Status = Literal["downloaded", "up_to_date", "failed"]


@dataclass
class DownloadReport:
    """What one source's download did. ``url``/``stored_name``/``key`` name the file that was
    (or was to be) fetched; they stay None when nothing was new or the listing failed."""

    source: str
    status: Status = "failed"
    listing_url: str = ""
    url: str | None = None
    stored_name: str | None = None
    key: str | None = None
    bytes: int = 0
    error_kind: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _default_listing_urls() -> dict[str, str]:
    return {source_id: listing.LISTINGS[source_id].listing_url for source_id in DOWNLOADED_SOURCES}


def _check_url(url: str, what: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{what} must be an http(s) URL, not {url!r}")


def _check_item_data_url(template: str, what: str) -> None:
    if "{id}" not in template:
        raise ValueError(f"{what} must hold {{id}} (the ArcGIS item id), not {template!r}")
    try:
        example = template.format(id="0" * 32)
    except (KeyError, IndexError, ValueError) as error:
        # Any other brace would make every ONS download fail at run time; better at start-up.
        raise ValueError(f"{what}: {template!r} is not a template with only {{id}} ({error!r})") from None
    _check_url(example, what)


@dataclass(frozen=True)
class DownloadSettings:
    """Where the listings are, where an ONS item's file is, and the largest file stored.

    ``listing_urls`` maps a source id to its listing URL; sources left out keep the real one
    (``listing.LISTINGS``). ``ons_item_data_url`` has ``{id}`` for the ArcGIS item id."""

    # Left out of the hash: a mapping has none (the settings are compared, never hashed).
    listing_urls: Mapping[str, str] = field(default_factory=_default_listing_urls, hash=False)
    ons_item_data_url: str = listing.ARCGIS_ITEM_DATA_URL
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.listing_urls) - set(DOWNLOADED_SOURCES))
        if unknown:
            raise ValueError(
                f"no downloader for {', '.join(unknown)} (known: {', '.join(DOWNLOADED_SOURCES)})"
            )
        for source_id, url in self.listing_urls.items():
            _check_url(url, f"the listing URL of {source_id}")
        _check_item_data_url(self.ons_item_data_url, "ons_item_data_url")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {self.max_bytes}")
        # A read-only copy: the settings are shared by every source's run and must not drift.
        merged = {**_default_listing_urls(), **self.listing_urls}
        object.__setattr__(self, "listing_urls", MappingProxyType(merged))

    def listing_url(self, source_id: str) -> str:
        return self.listing_urls[source_id]

    @classmethod
    def from_env(cls) -> "DownloadSettings":
        """From ``DSS_*_URL``, ``DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL`` and
        ``DATASTORE_MAX_DOWNLOAD_BYTES``; unset or empty ones keep their defaults. A value that
        cannot work raises ``ValueError`` naming its variable."""
        urls: dict[str, str] = {}
        for source_id, variable in LISTING_URL_VARIABLES.items():
            value = env_str(variable)
            if value is not None:
                _check_url(value.strip(), variable)
                urls[source_id] = value.strip()
        template = (env_str(ITEM_DATA_URL_VARIABLE) or listing.ARCGIS_ITEM_DATA_URL).strip()
        _check_item_data_url(template, ITEM_DATA_URL_VARIABLE)
        raw = env_str(MAX_BYTES_VARIABLE)
        max_bytes = DEFAULT_MAX_BYTES
        if raw is not None:
            try:
                max_bytes = int(raw.strip())
            except ValueError:
                raise ValueError(
                    f"{MAX_BYTES_VARIABLE} must be a whole number of bytes, not {raw!r}"
                ) from None
            if max_bytes <= 0:
                raise ValueError(f"{MAX_BYTES_VARIABLE} must be positive, not {raw!r}")
        return cls(listing_urls=urls, ons_item_data_url=template, max_bytes=max_bytes)


def _source(source_id: str) -> tuple[SourceSpec, listing.ListingSettings]:
    if source_id not in DOWNLOADED_SOURCES:
        raise ValueError(f"{source_id!r} is not downloaded (known: {', '.join(DOWNLOADED_SOURCES)})")
    spec = SOURCES[source_id]
    if not spec.blob_prefix:
        raise ValueError(f"{source_id} has no blob folder")
    return spec, listing.LISTINGS[source_id]


def describe_error(error: BaseException) -> tuple[str, str]:
    """(kind, message) for the report."""
    if isinstance(error, FetchError):
        return error.kind.value, str(error)
    if isinstance(error, listing.ListingError):
        return error.kind, str(error)
    return type(error).__name__, str(error) or repr(error)


def download_source(
    session: requests.Session, store: BlobStore, source_id: str, settings: DownloadSettings
) -> DownloadReport:
    """Fetch ``source_id``'s newest file into ``store`` when it is new (module docstring).

    Never raises for the source's trouble (the listing, the file, the store): the report says
    ``failed`` and why. ``ValueError`` only for a source id that is not downloaded."""
    spec, rules = _source(source_id)
    prefix = spec.blob_prefix or ""
    listing_url = settings.listing_url(source_id)
    report = DownloadReport(source=source_id, listing_url=listing_url)
    started = time.monotonic()
    step = "listing"
    try:
        body = get_bytes(session, listing_url, max_bytes=MAX_LISTING_BYTES)
        step = "stored files"
        names = stored_files(store, spec)
        step = "listing"
        new = listing.new_file(body, listing_url, names, rules, item_data_url=settings.ons_item_data_url)
        if new is None:
            report.status = "up_to_date"
            log.info(
                "%s: nothing new at %s (stored: %s)", source_id, listing_url, names[-1] if names else "-"
            )
        else:
            report.url, report.stored_name, report.key = new.url, new.stored_name, prefix + new.stored_name
            step = "download"
            log.info("%s: downloading %s as %s", source_id, new.url, report.key)
            result = download_to_blob(session, new.url, store, report.key, max_bytes=settings.max_bytes)
            report.bytes = result.size
            report.status = "downloaded"
    except Exception as error:  # a source's own trouble, whatever it is, must not stop the others
        report.status = "failed"
        kind, message = describe_error(error)
        report.error_kind, report.error = kind, f"{step}: {message}"
        expected = isinstance(error, FetchError | listing.ListingError)
        # The upstream's trouble needs no traceback; anything else may be a bug and gets one.
        log.warning("%s failed: %s", source_id, report.error, exc_info=not expected)
    finally:
        report.seconds = time.monotonic() - started
    if report.status == "downloaded":
        log.info("%s: stored %s, %d bytes in %.1f s", source_id, report.key, report.bytes, report.seconds)
    return report


def download_sources(
    session: requests.Session,
    store: BlobStore,
    settings: DownloadSettings,
    sources: Iterable[str] | None = None,
) -> list[DownloadReport]:
    """``download_source`` for each of ``sources`` (default ``DOWNLOADED_SOURCES``) in turn; one
    failing never stops the others. ``ValueError`` before any download for an unknown id."""
    source_ids = DOWNLOADED_SOURCES if sources is None else tuple(sources)
    for source_id in source_ids:
        _source(source_id)
    reports = [download_source(session, store, source_id, settings) for source_id in source_ids]
    counts: dict[str, int] = {}
    for report in reports:
        counts[report.status] = counts.get(report.status, 0) + 1
    log.info(
        "downloads: %s", ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "none"
    )
    return reports
