"""Whole packages: stand-in CKAN on loopback → ZIP → blob store (a folder, moto's S3) or a file."""

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from ecr_pipelines.ckan.datastore import DatastoreError
from ecr_pipelines.ckan.formats import FormatError
from ecr_pipelines.ckan.package import (
    PackageReport,
    ZipStream,
    open_package,
    store_package,
    validate_request,
    write_package,
)
from ecr_pipelines.dev.standins import Fault, StandInServer
from ecr_pipelines.dev.standins.ckan import CkanStandIn, Table, rows_table, synthetic_table
from ecr_pipelines.lib.blobstore import BlobStore, LocalBlobStore
from ecr_pipelines.lib.http import FetchError, make_session
from ecr_pipelines.resources import BlobStoreResource

NESTED_ROWS = [
    {"_id": 1, "name": "a", "tags": ["x", "y"], "extra": {"k": 1, "deep": {"é": [1, None]}}},
    {"_id": 2, "name": "b, with comma", "tags": None, "extra": None},
    {"_id": 3, "name": None},  # keys missing from the record
]
NESTED_FIELDS = [
    {"id": "_id", "type": "int"},
    {"id": "name", "type": "text"},
    {"id": "tags", "type": "_text"},
    {"id": "extra", "type": "json"},
]


@pytest.fixture
def ckan(standin: StandInServer) -> CkanStandIn:
    return CkanStandIn(standin)


def session() -> Any:
    return make_session(retries=0, backoff=0)


def datastore_request(ckan: CkanStandIn, **params: Any) -> Any:
    return validate_request("datastore", {"api_url": ckan.api_url, "email": "someone@example.org", **params})


def read_member(data: bytes) -> tuple[list[zipfile.ZipInfo], bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert archive.testzip() is None
        return infos, archive.read(infos[0])


def csv_rows(content: bytes, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8"), newline=""), delimiter=delimiter))


@pytest.mark.parametrize(("fmt", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_a_delimited_package_in_the_blob_store(
    ckan: CkanStandIn, tmp_path: Path, fmt: str, delimiter: str
) -> None:
    table = ckan.add_table("res-1", synthetic_table(12_345))
    store = LocalBlobStore(tmp_path / "blobs")
    pkg = datastore_request(ckan, resource_id="res-1", format=fmt)
    report = store_package(pkg, session(), store, "ckan/p.zip", page_size=1000)
    infos, content = read_member(store.get_bytes("ckan/p.zip"))
    assert [i.filename for i in infos] == [f"resource.{fmt}"]
    assert infos[0].compress_type == zipfile.ZIP_DEFLATED
    rows = csv_rows(content, delimiter)
    assert rows[0] == table.field_ids
    assert len(rows) == 12_346
    first = table.row(0)
    assert rows[1] == ["" if v is None else str(v) for v in first.values()]
    assert rows[-1][0] == "12345" and rows[4][6] == "two\nlines"
    assert report.rows == 12_345 and report.fields == table.field_ids
    assert report.calls == 1 + 13 + 1  # description, 13 pages, the empty page
    assert report.paging == "offset" and report.zip_bytes == store.size("ckan/p.zip")
    assert report.entry == f"resource.{fmt}"


def test_nested_and_missing_values(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_table("n", rows_table(NESTED_ROWS, NESTED_FIELDS))
    pkg = datastore_request(ckan, resource_id="n")
    write_package(pkg, session(), tmp_path / "n.zip")
    _, content = read_member((tmp_path / "n.zip").read_bytes())
    assert content.decode() == (
        "_id,name,tags,extra\n"
        '1,a,"[""x"", ""y""]","{""k"": 1, ""deep"": {""é"": [1, null]}}"\n'
        '2,"b, with comma",,\n'
        "3,,,\n"
    )


def test_an_xlsx_package(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_table("n", rows_table(NESTED_ROWS * 400, NESTED_FIELDS, backend="solr"))
    pkg = datastore_request(ckan, resource_id="n", format="xlsx")
    report = write_package(pkg, session(), tmp_path / "x.zip", page_size=500)
    with zipfile.ZipFile(tmp_path / "x.zip") as archive:
        assert archive.namelist() == ["resource.xlsx"]
        (tmp_path / "resource.xlsx").write_bytes(archive.read("resource.xlsx"))
    book = openpyxl.load_workbook(tmp_path / "resource.xlsx", read_only=True)
    assert book.sheetnames == ["Data"]
    rows = [list(r) for r in book["Data"].iter_rows(values_only=True)]
    assert rows[0] == ["_id", "name", "tags", "extra"]
    assert rows[1] == ["1", "a", '["x", "y"]', '{"k": 1, "deep": {"é": [1, null]}}']
    assert rows[2] == ["2", "b, with comma", None, None]
    assert rows[3] == ["3", None, None, None]
    assert len(rows) == 1 + 1200
    assert report.paging == "cursor" and report.rows == 1200


def test_limit_offset_and_forwarded_parameters(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_table("r", synthetic_table(100))
    pkg = datastore_request(
        ckan, resource_id="r", limit=10, offset=5, fields="name,_id", q="x", filters='{"country": "Denmark"}'
    )
    report = write_package(pkg, session(), tmp_path / "p.zip")
    rows = csv_rows(read_member((tmp_path / "p.zip").read_bytes())[1])
    assert rows == [["name", "_id"]] + [[f"Specimen {n}", str(n)] for n in range(6, 16)]
    assert report.rows == 10
    assert all(s["filters"] == {"country": "Denmark"} and s["q"] == "x" for s in ckan.searches)


@pytest.mark.parametrize("background", [True, False])
def test_a_ckan_error_mid_stream_stores_nothing(ckan: CkanStandIn, tmp_path: Path, background: bool) -> None:
    ckan.add_table("r", synthetic_table(10_000, fail_at_row=7_500))
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes("ckan/old.zip", b"the previous package")
    pkg = datastore_request(ckan, resource_id="r")
    with pytest.raises(DatastoreError) as failed:
        store_package(pkg, session(), store, "ckan/new.zip", page_size=1000, background=background)
    assert failed.value.kind == "http_status" and failed.value.status == 500
    assert list(store.list()) == ["ckan/old.zip"]
    assert list((tmp_path / "blobs" / ".incoming").iterdir()) == []
    # The same into an existing key: the old object stays.
    with pytest.raises(DatastoreError):
        store_package(pkg, session(), store, "ckan/old.zip", page_size=1000, background=background)
    assert store.get_bytes("ckan/old.zip") == b"the previous package"
    # And into a file.
    target = tmp_path / "out" / "p.zip"
    target.parent.mkdir()
    with pytest.raises(DatastoreError):
        write_package(pkg, session(), target, page_size=1000, background=background)
    assert list(target.parent.iterdir()) == []


def test_a_failed_stream_keeps_failing(ckan: CkanStandIn) -> None:
    ckan.add_table("r", synthetic_table(3000, fail_at_row=2500))
    stream, _ = open_package(datastore_request(ckan, resource_id="r"), session(), page_size=1000)
    with stream:
        with pytest.raises(DatastoreError):
            stream.read()
        with pytest.raises(DatastoreError):
            stream.read(10)


def test_an_error_mid_stream_stores_nothing_on_s3(ckan: CkanStandIn, s3_blobs: BlobStoreResource) -> None:
    store: BlobStore = s3_blobs.store
    ckan.add_table("r", synthetic_table(20_000, fail_at_row=15_000))
    with pytest.raises(DatastoreError):
        store_package(
            datastore_request(ckan, resource_id="r"), session(), store, "ckan/p.zip", page_size=2000
        )
    assert list(store.list()) == []
    ckan.add_table("ok", synthetic_table(20_000))
    report = store_package(datastore_request(ckan, resource_id="ok"), session(), store, "ckan/p.zip")
    infos, content = read_member(store.get_bytes("ckan/p.zip"))
    assert report.rows == 20_000 and content.count(b"\n") > 20_000 and infos[0].filename == "resource.csv"


def test_an_xlsx_over_the_row_limit_stores_nothing(
    ckan: CkanStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecr_pipelines.ckan import formats

    monkeypatch.setattr(formats, "XLSX_MAX_ROWS", 100)
    ckan.add_table("r", synthetic_table(150))
    with pytest.raises(FormatError):
        write_package(datastore_request(ckan, resource_id="r", format="xlsx"), session(), tmp_path / "x.zip")
    assert list(tmp_path.iterdir()) == []


def test_a_url_package(ckan: CkanStandIn, tmp_path: Path) -> None:
    body = b"".join(b"line %d of the file\n" % n for n in range(50_000))
    url = ckan.add_file("/dataset/d/resource/r/download/my%20data.csv", body, "text/csv")
    pkg = validate_request("url", {"resource_id": "r", "email": "e@x", "resource_url": url + "?x=1"})
    assert pkg.speed == "fast"
    store = LocalBlobStore(tmp_path / "blobs")
    report = store_package(pkg, session(), store, "ckan/u.zip")
    infos, content = read_member(store.get_bytes("ckan/u.zip"))
    assert [i.filename for i in infos] == ["my data.csv"]
    assert content == body
    assert report.source_bytes == len(body) and report.entry == "my data.csv"


def test_a_url_package_named_after_the_resource_id(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_file("/", b"root document", "text/plain")
    pkg = validate_request(
        "url", {"resource_id": "res-9", "email": "e", "resource_url": ckan.server.url("/")}
    )
    write_package(pkg, session(), tmp_path / "u.zip")
    infos, content = read_member((tmp_path / "u.zip").read_bytes())
    assert infos[0].filename == "res-9" and content == b"root document"


def test_a_url_that_fails_stores_nothing(ckan: CkanStandIn, standin: StandInServer, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    missing = validate_request(
        "url", {"resource_id": "r", "email": "e", "resource_url": standin.url("/nope.csv")}
    )
    with pytest.raises(FetchError) as caught:
        store_package(missing, session(), store, "u.zip")
    assert caught.value.kind.value == "http_status" and caught.value.status == 404
    url = ckan.add_file("/big.bin", b"x" * 2_000_000)
    standin.inject("/big.bin", Fault(truncate=1_000_000, times=1))
    cut = validate_request("url", {"resource_id": "r", "email": "e", "resource_url": url})
    with pytest.raises(FetchError) as truncated:
        store_package(cut, session(), store, "u.zip")
    assert truncated.value.kind.value == "connection"
    with pytest.raises(FetchError) as too_large:
        store_package(cut, session(), store, "u.zip", max_bytes=1000)
    assert too_large.value.kind.value == "too_large"
    assert list(store.list()) == []


def test_nothing_is_fetched_until_the_stream_is_read(ckan: CkanStandIn) -> None:
    ckan.add_table("r", synthetic_table(5000))
    seen: list[int] = []

    def progress(report: PackageReport) -> None:
        seen.append(report.rows)

    stream, report = open_package(
        datastore_request(ckan, resource_id="r"), session(), page_size=1000, progress=progress
    )
    assert ckan.searches == []
    with stream:
        first = stream.read(10)
        assert first[:4] == b"PK\x03\x04"  # a ZIP local header
        data = first + stream.read()
    assert seen == [1000, 2000, 3000, 4000, 5000]
    infos, content = read_member(data)
    assert content.count(b"\n") >= 5001 and report.rows == 5000
    # ZIP64 with a data descriptor: written without seeking, readable by any unzip.
    assert infos[0].flag_bits & 0x08


def test_a_stream_closed_early_stops_its_threads(ckan: CkanStandIn) -> None:
    ckan.add_table("r", synthetic_table(100_000))
    stream, _ = open_package(datastore_request(ckan, resource_id="r"), session(), page_size=1000)
    stream.read(1000)
    stream.close()
    asked = len(ckan.data_searches)
    assert asked < 10
    assert len(ckan.data_searches) == asked


def test_a_zip_stream_of_several_members() -> None:
    from ecr_pipelines.ckan.package import Member

    members = [
        Member("a.txt", lambda: iter([b"one ", b"two"])),
        Member("b.txt", lambda: iter([b"three"])),
    ]
    infos, _ = read_member(ZipStream(members).read())
    with zipfile.ZipFile(io.BytesIO(ZipStream(members, background=False).read())) as archive:
        assert archive.read("a.txt") == b"one two" and archive.read("b.txt") == b"three"
    assert [i.filename for i in infos] == ["a.txt", "b.txt"]


def test_the_same_package_with_or_without_threads(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_table("r", synthetic_table(3000, backend="versioned-datastore"))
    contents = []
    for options in ({}, {"prefetch": False, "background": False}):
        path = tmp_path / f"{len(contents)}.zip"
        write_package(datastore_request(ckan, resource_id="r"), session(), path, page_size=700, **options)
        contents.append(read_member(path.read_bytes())[1])
    assert contents[0] == contents[1]


def test_an_unknown_table_fails_before_any_byte(ckan: CkanStandIn, tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="HTTP 404"):
        write_package(datastore_request(ckan, resource_id="missing"), session(), tmp_path / "p.zip")
    assert list(tmp_path.iterdir()) == []


def test_a_table_with_a_custom_row_function(ckan: CkanStandIn, tmp_path: Path) -> None:
    fields = [{"id": "_id", "type": "int"}, {"id": "square", "type": "int"}]
    ckan.add_table("sq", Table(fields=fields, total=2500, row=lambda n: {"_id": n, "square": n * n}))
    write_package(datastore_request(ckan, resource_id="sq"), session(), tmp_path / "p.zip", page_size=1000)
    rows = csv_rows(read_member((tmp_path / "p.zip").read_bytes())[1])
    assert rows[-1] == ["2499", str(2499 * 2499)] and len(rows) == 2501


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"limit": 2345},
        {"limit": 2345, "offset": 17},
        {"offset": 9000},
        {"limit": 20_000},
        {"limit": 3000},
    ],
)
def test_worker_processes_make_the_same_package_with_the_same_requests(
    ckan: CkanStandIn, tmp_path: Path, params: dict[str, int]
) -> None:
    ckan.add_table("r", synthetic_table(10_000))
    results = []
    for workers in (0, 2):
        ckan.searches.clear()
        path = tmp_path / f"{workers}.zip"
        pkg = datastore_request(ckan, resource_id="r", **params)
        report = write_package(pkg, session(), path, page_size=1000, workers=workers, parallel_min_rows=1)
        asked = sorted(json.dumps(s, sort_keys=True) for s in ckan.searches)
        results.append((read_member(path.read_bytes())[1], asked, report.rows, report.calls, report.workers))
    assert results[0][:4] == results[1][:4]
    assert (results[0][4], results[1][4]) == (0, 2)


def test_worker_processes_with_a_caller_offset_on_solr_and_a_capped_page(
    ckan: CkanStandIn, tmp_path: Path
) -> None:
    ckan.rows_max = 700
    ckan.add_table("r", synthetic_table(5000, backend="solr"))
    contents = []
    for workers in (0, 2):
        ckan.searches.clear()
        pkg = datastore_request(ckan, resource_id="r", offset=10, format="tsv")
        report = write_package(
            pkg, session(), tmp_path / f"{workers}.zip", workers=workers, parallel_min_rows=1
        )
        contents.append(
            (read_member((tmp_path / f"{workers}.zip").read_bytes())[1], report.rows, report.calls)
        )
        assert [s["offset"] for s in ckan.data_searches] == list(range(10, 5611, 700))  # the last one empty
    assert contents[0] == contents[1] and contents[1][1] == 4990


def test_worker_processes_stop_and_store_nothing_on_a_ckan_error(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_table("r", synthetic_table(10_000, fail_at_row=6500, fail_status=503))
    store = LocalBlobStore(tmp_path / "blobs")
    pkg = datastore_request(ckan, resource_id="r")
    with pytest.raises(DatastoreError) as failed:
        store_package(pkg, session(), store, "p.zip", page_size=500, workers=2, parallel_min_rows=1)
    assert (failed.value.kind, failed.value.status) == ("http_status", 503)  # raised in a worker
    assert list(store.list()) == []


def test_without_a_process_pool_the_package_is_built_here(
    ckan: CkanStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecr_pipelines.ckan import package

    # Workers whose start fails (as under a script without a __main__ guard): built in-process.
    monkeypatch.setattr(package, "session_options", lambda session: {"no_such_option": 1})
    ckan.add_table("r", synthetic_table(3000))
    report = write_package(
        datastore_request(ckan, resource_id="r"),
        session(),
        tmp_path / "p.zip",
        workers=2,
        parallel_min_rows=1,
    )
    assert report.workers == 0 and report.rows == 3000 and report.calls == 3
    assert len(csv_rows(read_member((tmp_path / "p.zip").read_bytes())[1])) == 3001
