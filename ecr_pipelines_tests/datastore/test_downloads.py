"""The data store's downloaders (B2) against the stand-in sites over loopback: real HTTP, real
blob stores (a folder, and moto's S3 server), faults injected by the stand-in server."""

from datetime import date
from pathlib import Path

import pytest
import requests

from ecr_pipelines.datastore.downloads import (
    DEFAULT_MAX_BYTES,
    DOWNLOADED_SOURCES,
    DownloadReport,
    DownloadSettings,
    download_source,
    download_sources,
)
from ecr_pipelines.datastore.sources import SOURCES, listing
from ecr_pipelines.dev.standins import Fault, StandInServer
from ecr_pipelines.dev.standins.datastore import (
    ARCGIS_ITEMS,
    COMPANIES_HOUSE_ID,
    DEMO_FILES,
    DEMO_OFFER,
    HMRC_EXPORTERS_ID,
    ONS_POSTCODE_DIRECTORY_ID,
    ONS_SEARCH,
    DatastoreStandIn,
    OfferedFile,
    item_id,
)
from ecr_pipelines.lib.blobstore import BlobStore, S3BlobStore
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.resources import BlobStoreResource

DATA = Path(__file__).parent / "data" / "sources"
CH_ZIP = (DATA / "companies_house_accounts_test_datafile_1.zip").read_bytes()
HMRC_ZIP = (DATA / "hmrc_exporters_2016_mock.zip").read_bytes()
ONS_MAY_ZIP = (DATA / "ons_postcode_directory_ONSPD_MAY_2019_UK.zip").read_bytes()
ONS_JUL_ZIP = (DATA / "ons_postcode_directory_ONSPD_JUL_2019_UK.zip").read_bytes()
CH_PREFIX = SOURCES[COMPANIES_HOUSE_ID].blob_prefix or ""
HMRC_PREFIX = SOURCES[HMRC_EXPORTERS_ID].blob_prefix or ""
ONS_PREFIX = SOURCES[ONS_POSTCODE_DIRECTORY_ID].blob_prefix or ""
# Above boto3's 8 MiB multipart threshold: the S3 upload is then made of parts, and a failure
# must abort it rather than leave a partial object (or an open upload) behind.
BIG = bytes(range(256)) * (12 * 1024 * 4)


@pytest.fixture
def site(standin: StandInServer) -> DatastoreStandIn:
    return DatastoreStandIn(standin, defaults=False)


@pytest.fixture
def settings(site: DatastoreStandIn) -> DownloadSettings:
    return DownloadSettings(listing_urls=site.listing_urls, ons_item_data_url=site.ons_item_data_url)


@pytest.fixture
def session() -> requests.Session:
    # One quick retry: a fault injected for every request must not cost seconds of backoff.
    return make_session(retries=1, backoff=0.01, connect_timeout=5, read_timeout=10)


@pytest.fixture
def store(local_blobs: BlobStoreResource) -> BlobStore:
    return local_blobs.store


def stored(store: BlobStore, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix) :]: store.get_bytes(key) for key in store.list(prefix)}


def file_requests(standin: StandInServer, site: DatastoreStandIn, source_id: str, day: date) -> int:
    return len(standin.requests_to(site.file_path(source_id, day)))


# --- a new file ------------------------------------------------------------------------------------


def test_a_new_file_is_streamed_in_under_its_stored_name(
    site: DatastoreStandIn, settings: DownloadSettings, session: requests.Session, store: BlobStore
) -> None:
    site.offer(COMPANIES_HOUSE_ID, OfferedFile(date(2020, 4, 1), CH_ZIP))

    report = download_source(session, store, COMPANIES_HOUSE_ID, settings)

    assert report.status == "downloaded", report
    assert report.listing_url == site.companies_house_url
    assert report.url == site.file_url(COMPANIES_HOUSE_ID, date(2020, 4, 1))
    assert report.url.endswith("/companieshouse/Accounts_Bulk_Data-2020-04-01.zip")
    assert report.stored_name == "Accounts_Bulk_Data-2020-04-01.zip"
    assert report.key == CH_PREFIX + "Accounts_Bulk_Data-2020-04-01.zip"
    assert report.bytes == len(CH_ZIP)
    assert report.error_kind is None and report.error is None
    assert stored(store, CH_PREFIX) == {"Accounts_Bulk_Data-2020-04-01.zip": CH_ZIP}
    assert report.as_dict()["status"] == "downloaded"


def test_a_new_file_into_s3(
    site: DatastoreStandIn, settings: DownloadSettings, session: requests.Session, s3_blobs: BlobStoreResource
) -> None:
    store = s3_blobs.store
    store.put_bytes(HMRC_PREFIX + "exporters1601.zip", b"january")
    site.offer(HMRC_EXPORTERS_ID, OfferedFile(date(2016, 2, 1), HMRC_ZIP))

    report = download_source(session, store, HMRC_EXPORTERS_ID, settings)

    assert report.status == "downloaded", report
    assert report.key == HMRC_PREFIX + "exporters1602.zip"
    assert stored(store, HMRC_PREFIX) == {"exporters1601.zip": b"january", "exporters1602.zip": HMRC_ZIP}


def test_ons_is_listed_by_the_search_api_and_fetched_by_the_item_template(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
) -> None:
    store.put_bytes(ONS_PREFIX + "ONSPD_MAY_2019_UK.zip", ONS_MAY_ZIP)
    site.offer(
        ONS_POSTCODE_DIRECTORY_ID,
        OfferedFile(date(2019, 7, 1), ONS_JUL_ZIP),
        OfferedFile(date(2019, 5, 1), ONS_MAY_ZIP),
    )

    report = download_source(session, store, ONS_POSTCODE_DIRECTORY_ID, settings)

    july = item_id("ONS Postcode Directory (July 2019)")
    assert report.status == "downloaded", report
    assert (
        report.url == settings.ons_item_data_url.format(id=july) == standin.url(f"{ARCGIS_ITEMS}{july}/data")
    )
    assert report.stored_name == "ONSPD_JUL_2019_UK.zip"
    assert stored(store, ONS_PREFIX) == {
        "ONSPD_MAY_2019_UK.zip": ONS_MAY_ZIP,
        "ONSPD_JUL_2019_UK.zip": ONS_JUL_ZIP,
    }
    # The search was asked as the real one is, and the May item (not new) never fetched.
    (search,) = standin.requests_to(ONS_SEARCH)
    assert search.query["q"] == "ONS Postcode Directory"
    assert file_requests(standin, site, ONS_POSTCODE_DIRECTORY_ID, date(2019, 5, 1)) == 0


# --- nothing new, no back-fill -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored_name", "offered"),
    [
        ("Accounts_Bulk_Data-2020-04-01.zip", date(2020, 4, 1)),  # the same day
        ("Accounts_Bulk_Data-2020-04-02.zip", date(2020, 4, 1)),  # the store is ahead
    ],
)
def test_nothing_new_is_up_to_date_and_the_file_is_not_requested(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
    stored_name: str,
    offered: date,
) -> None:
    store.put_bytes(CH_PREFIX + stored_name, b"stored before")
    site.offer(COMPANIES_HOUSE_ID, OfferedFile(offered, CH_ZIP))

    report = download_source(session, store, COMPANIES_HOUSE_ID, settings)

    assert report.status == "up_to_date", report
    assert report.url is None and report.key is None and report.bytes == 0
    assert file_requests(standin, site, COMPANIES_HOUSE_ID, offered) == 0
    assert stored(store, CH_PREFIX) == {stored_name: b"stored before"}


def test_one_day_newer_is_new(
    site: DatastoreStandIn, settings: DownloadSettings, session: requests.Session, store: BlobStore
) -> None:
    store.put_bytes(CH_PREFIX + "Accounts_Bulk_Data-2020-03-31.zip", b"the day before")
    site.offer(COMPANIES_HOUSE_ID, OfferedFile(date(2020, 4, 1), CH_ZIP))

    report = download_source(session, store, COMPANIES_HOUSE_ID, settings)

    assert report.status == "downloaded", report
    assert report.stored_name == "Accounts_Bulk_Data-2020-04-01.zip"


def test_only_the_newest_online_file_is_fetched(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
) -> None:
    store.put_bytes(CH_PREFIX + "Accounts_Bulk_Data-2020-03-27.zip", b"old")
    days = [date(2020, 3, 31), date(2020, 4, 2), date(2020, 3, 30), date(2020, 4, 1)]
    site.offer(COMPANIES_HOUSE_ID, *(OfferedFile(day, day.isoformat().encode()) for day in days))

    report = download_source(session, store, COMPANIES_HOUSE_ID, settings)

    assert report.status == "downloaded", report
    assert stored(store, CH_PREFIX) == {
        "Accounts_Bulk_Data-2020-03-27.zip": b"old",
        "Accounts_Bulk_Data-2020-04-02.zip": b"2020-04-02",
    }
    # The days in between are not back-filled.
    assert {day: file_requests(standin, site, COMPANIES_HOUSE_ID, day) for day in days} == {
        date(2020, 3, 31): 0,
        date(2020, 4, 2): 1,
        date(2020, 3, 30): 0,
        date(2020, 4, 1): 0,
    }


# --- the legacy's own cases ----------------------------------------------------------------------------


def test_legacy_hmrc_case(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
) -> None:
    # The legacy's page: /Statistics/Documents/Data%20Downloads/exporters1703.zip, exporters1702.zip stored.
    store.put_bytes(HMRC_PREFIX + "exporters1702.zip", b"february")
    (path,) = site.offer(HMRC_EXPORTERS_ID, OfferedFile(date(2017, 3, 1), HMRC_ZIP))
    assert path == "/Statistics/Documents/Data%20Downloads/exporters1703.zip"
    page = requests.get(site.hmrc_exporters_url, timeout=10).text
    assert 'href="/Statistics/Documents/Data%20Downloads/exporters1703.zip"' in page

    report = download_source(session, store, HMRC_EXPORTERS_ID, settings)

    assert report.status == "downloaded", report
    assert report.url == standin.url("/Statistics/Documents/Data%20Downloads/exporters1703.zip")
    assert report.key == HMRC_PREFIX + "exporters1703.zip"
    assert stored(store, HMRC_PREFIX) == {"exporters1702.zip": b"february", "exporters1703.zip": HMRC_ZIP}
    assert len(standin.requests_to(path)) == 1

    # exporters1703.zip present: nothing downloaded, nothing written.
    again = download_source(session, store, HMRC_EXPORTERS_ID, settings)

    assert again.status == "up_to_date", again
    assert len(standin.requests_to(path)) == 1
    assert stored(store, HMRC_PREFIX) == {"exporters1702.zip": b"february", "exporters1703.zip": HMRC_ZIP}


# --- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source_id", [COMPANIES_HOUSE_ID, HMRC_EXPORTERS_ID, ONS_POSTCODE_DIRECTORY_ID])
def test_a_listing_without_matching_links_fails_no_links(
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
    source_id: str,
) -> None:
    # The pages keep their links that are not data (ONS: the user guide), but offer no file.
    report = download_source(session, store, source_id, settings)

    assert report.status == "failed", report
    assert report.error_kind == "no_links"
    assert report.error is not None and report.error.startswith("listing: ")
    assert list(store.list(SOURCES[source_id].blob_prefix or "")) == []


def test_a_search_answer_that_is_not_json_fails_bad_listing(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
) -> None:
    standin.route(ONS_SEARCH, body=b"<html>maintenance</html>", headers={"Content-Type": "text/html"})

    report = download_source(session, store, ONS_POSTCODE_DIRECTORY_ID, settings)

    assert (report.status, report.error_kind) == ("failed", "bad_listing")


def test_a_listing_answering_500_fails_and_the_store_is_untouched(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
) -> None:
    store.put_bytes(HMRC_PREFIX + "exporters1702.zip", b"february")
    site.offer(HMRC_EXPORTERS_ID, OfferedFile(date(2017, 3, 1), HMRC_ZIP))
    standin.inject("/Statistics/Pages/DataDownloads.aspx", Fault(status=500))

    report = download_source(session, store, HMRC_EXPORTERS_ID, settings)

    assert report.status == "failed", report
    assert report.error_kind == "http_status"
    assert report.error is not None and "HTTP 500" in report.error
    assert report.url is None
    assert file_requests(standin, site, HMRC_EXPORTERS_ID, date(2017, 3, 1)) == 0
    assert stored(store, HMRC_PREFIX) == {"exporters1702.zip": b"february"}


@pytest.mark.parametrize(
    ("blobs", "body", "fault"),
    [
        ("local_blobs", HMRC_ZIP, Fault(reset=True)),
        ("local_blobs", HMRC_ZIP, Fault(truncate=len(HMRC_ZIP) // 2)),
        ("local_blobs", BIG, Fault(truncate=10 * 1024 * 1024)),
        ("s3_blobs", HMRC_ZIP, Fault(reset=True)),
        ("s3_blobs", HMRC_ZIP, Fault(truncate=len(HMRC_ZIP) // 2)),
        ("s3_blobs", BIG, Fault(truncate=10 * 1024 * 1024)),
    ],
    ids=[
        "local-reset",
        "local-truncated",
        "local-big-truncated",
        "s3-reset",
        "s3-truncated",
        "s3-big-truncated",
    ],
)
def test_a_file_that_breaks_off_leaves_nothing_under_its_name(
    request: pytest.FixtureRequest,
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    blobs: str,
    body: bytes,
    fault: Fault,
) -> None:
    store: BlobStore = request.getfixturevalue(blobs).store
    store.put_bytes(HMRC_PREFIX + "exporters1702.zip", b"february")
    (path,) = site.offer(HMRC_EXPORTERS_ID, OfferedFile(date(2017, 3, 1), body))
    standin.inject(path, fault)

    report = download_source(session, store, HMRC_EXPORTERS_ID, settings)

    assert report.status == "failed", report
    assert report.error_kind == "connection"
    assert report.error is not None and report.error.startswith("download: ")
    assert report.key == HMRC_PREFIX + "exporters1703.zip"
    assert not store.exists(HMRC_PREFIX + "exporters1703.zip")
    assert stored(store, HMRC_PREFIX) == {"exporters1702.zip": b"february"}
    if isinstance(store, S3BlobStore):
        # The multipart upload was aborted, not left open (invisible, but billed).
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket)  # type: ignore[attr-defined]
        assert uploads.get("Uploads", []) == []

    # The next run, with the site healthy again, fetches the file whole.
    standin.clear_faults()
    retried = download_source(session, store, HMRC_EXPORTERS_ID, settings)
    assert retried.status == "downloaded", retried
    assert store.get_bytes(HMRC_PREFIX + "exporters1703.zip") == body


def test_a_file_over_max_bytes_fails_too_large(
    site: DatastoreStandIn, settings: DownloadSettings, session: requests.Session, store: BlobStore
) -> None:
    site.offer(COMPANIES_HOUSE_ID, OfferedFile(date(2020, 4, 1), CH_ZIP))
    small = DownloadSettings(
        listing_urls=settings.listing_urls,
        ons_item_data_url=settings.ons_item_data_url,
        max_bytes=len(CH_ZIP) - 1,
    )

    report = download_source(session, store, COMPANIES_HOUSE_ID, small)

    assert (report.status, report.error_kind) == ("failed", "too_large")
    assert list(store.list(CH_PREFIX)) == []


def test_one_failing_source_does_not_stop_the_others(
    standin: StandInServer,
    site: DatastoreStandIn,
    settings: DownloadSettings,
    session: requests.Session,
    store: BlobStore,
) -> None:
    site.offer(COMPANIES_HOUSE_ID, OfferedFile(date(2020, 4, 1), CH_ZIP))
    site.offer(HMRC_EXPORTERS_ID, OfferedFile(date(2016, 2, 1), HMRC_ZIP))
    site.offer(ONS_POSTCODE_DIRECTORY_ID, OfferedFile(date(2019, 5, 1), ONS_MAY_ZIP))
    standin.inject("/companieshouse/en_accountsdata.html", Fault(status=500))

    reports = download_sources(session, store, settings)

    assert [(r.source, r.status, r.error_kind) for r in reports] == [
        (COMPANIES_HOUSE_ID, "failed", "http_status"),
        (HMRC_EXPORTERS_ID, "downloaded", None),
        (ONS_POSTCODE_DIRECTORY_ID, "downloaded", None),
    ]
    assert sorted(store.list("datastore/")) == [
        HMRC_PREFIX + "exporters1602.zip",
        ONS_PREFIX + "ONSPD_MAY_2019_UK.zip",
    ]
    assert [r.source for r in download_sources(session, store, settings, [HMRC_EXPORTERS_ID])] == [
        HMRC_EXPORTERS_ID
    ]


def test_an_unreachable_site_fails_connection(session: requests.Session, store: BlobStore) -> None:
    with StandInServer() as gone:
        url = gone.url("/companieshouse/en_accountsdata.html")
    settings = DownloadSettings(listing_urls={COMPANIES_HOUSE_ID: url})

    report = download_source(session, store, COMPANIES_HOUSE_ID, settings)

    assert (report.status, report.error_kind) == ("failed", "connection")


def test_an_unknown_source_is_refused_before_any_download(
    standin: StandInServer, settings: DownloadSettings, session: requests.Session, store: BlobStore
) -> None:
    with pytest.raises(ValueError, match="dit.baci"):
        download_sources(session, store, settings, [HMRC_EXPORTERS_ID, "dit.baci"])
    assert standin.requests == []
    with pytest.raises(ValueError, match="dit.baci"):
        download_source(session, store, "dit.baci", settings)


# --- settings ------------------------------------------------------------------------------------------


def test_default_settings_are_the_real_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "DSS_COMPANIES_HOUSE_ACCOUNTS_URL",
        "DSS_HMRC_EXPORTERS_URL",
        "DSS_ONS_POSTCODE_DIRECTORY_URL",
        "DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL",
        "DATASTORE_MAX_DOWNLOAD_BYTES",
    ):
        monkeypatch.delenv(variable, raising=False)
    settings = DownloadSettings.from_env()
    assert settings == DownloadSettings()
    assert {source_id: settings.listing_url(source_id) for source_id in DOWNLOADED_SOURCES} == {
        source_id: listing.LISTINGS[source_id].listing_url for source_id in DOWNLOADED_SOURCES
    }
    assert settings.ons_item_data_url == "https://www.arcgis.com/sharing/rest/content/items/{id}/data"
    assert settings.max_bytes == DEFAULT_MAX_BYTES == 21474836480
    assert DOWNLOADED_SOURCES == (COMPANIES_HOUSE_ID, HMRC_EXPORTERS_ID, ONS_POSTCODE_DIRECTORY_ID)


def test_settings_from_the_stand_in_environment(
    site: DatastoreStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = site.env()
    assert set(env) == {
        "DSS_COMPANIES_HOUSE_ACCOUNTS_URL",
        "DSS_HMRC_EXPORTERS_URL",
        "DSS_ONS_POSTCODE_DIRECTORY_URL",
        "DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATASTORE_MAX_DOWNLOAD_BYTES", " 1048576 ")

    settings = DownloadSettings.from_env()

    assert dict(settings.listing_urls) == site.listing_urls
    assert settings.ons_item_data_url == site.ons_item_data_url
    assert settings.max_bytes == 1048576


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATASTORE_MAX_DOWNLOAD_BYTES", "20GB"),
        ("DATASTORE_MAX_DOWNLOAD_BYTES", "0"),
        ("DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL", "https://www.arcgis.com/items/data"),
        ("DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL", "https://example.org/{id}/{format}"),
        ("DSS_HMRC_EXPORTERS_URL", "ftp://www.uktradeinfo.com/page"),
    ],
)
def test_settings_that_cannot_work_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        DownloadSettings.from_env()


def test_settings_refuse_an_unknown_source() -> None:
    with pytest.raises(ValueError, match="dit.baci"):
        DownloadSettings(listing_urls={"dit.baci": "https://example.org/"})


# --- the stand-in as the demo uses it ------------------------------------------------------------------


def test_the_demo_offer_downloads_one_file_of_each_source(
    standin: StandInServer, session: requests.Session, store: BlobStore
) -> None:
    site = DatastoreStandIn(standin, mount="/datastore")
    settings = DownloadSettings(listing_urls=site.listing_urls, ons_item_data_url=site.ons_item_data_url)

    reports = download_sources(session, store, settings)

    assert [r.status for r in reports] == ["downloaded"] * 3, [r.as_dict() for r in reports]
    assert all(
        isinstance(r, DownloadReport) and r.url and r.url.startswith(site.server.url("/datastore/"))
        for r in reports
    )
    demo = {
        source_id: (DEMO_FILES / file_name).read_bytes() for source_id, (_, file_name) in DEMO_OFFER.items()
    }
    assert stored(store, "datastore/datasets/") == {
        "companies_house/accounts_legacy/Accounts_Bulk_Data-2020-04-01.zip": demo[COMPANIES_HOUSE_ID],
        "hmrc/exporters/exporters1602.zip": demo[HMRC_EXPORTERS_ID],
        "ons/postcode_directory/ONSPD_MAY_2019_UK.zip": demo[ONS_POSTCODE_DIRECTORY_ID],
    }
    # The demo's copies are the test fixtures, unchanged.
    assert demo == {
        COMPANIES_HOUSE_ID: CH_ZIP,
        HMRC_EXPORTERS_ID: HMRC_ZIP,
        ONS_POSTCODE_DIRECTORY_ID: ONS_MAY_ZIP,
    }


def test_a_stand_in_of_its_own() -> None:
    with DatastoreStandIn() as site:
        page = requests.get(site.companies_house_url, timeout=10)
        assert page.ok and 'href="Accounts_Bulk_Data-2020-04-01.zip"' in page.text
        search = requests.get(site.ons_postcode_directory_url, timeout=10).json()
        titles = [feature["properties"]["title"] for feature in search["features"]]
        assert titles == ["ONS Postcode Directory (May 2019)", "ONS Postcode Directory (May 2019) User Guide"]
        assert all(len(feature["id"]) == 32 for feature in search["features"])
