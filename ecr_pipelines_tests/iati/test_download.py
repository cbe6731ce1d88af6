"""Downloads of due documents: error codes, charset detection, retry mode, crash and resume,
against a stand-in cache over loopback and the embedded Postgres."""

import codecs
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.iati_demo import RECORDINGS
from ecr_pipelines.dev.standins import Fault, RecordedRequest, Reply, StandInServer
from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.iati.index import Document, Publisher, finish_snapshot
from ecr_pipelines.iati.stages.download import (
    CHARSET_ERROR,
    CONNECTION_ERROR,
    NO_SOURCE,
    SCHEME_ERROR,
    SSL_ERROR,
    STAGE,
    TOO_LARGE,
    DownloadOutcome,
    detect_encoding,
    download_due,
    error_code,
    record_outcomes,
)
from ecr_pipelines.iati.stages.sync import sync_index
from ecr_pipelines.lib.blobstore import BlobStore, LocalBlobStore
from ecr_pipelines.lib.http import HEAD_BYTES, ErrorKind, FetchError, make_session
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines_tests.iati.claims import claim_for_dead_run, claim_for_live_run, claims

CACHE = RECORDINGS / "cache"
SAMPLE = (CACHE / "3fi-activity.xml").read_bytes()
LATIN1 = '<?xml version="1.0" encoding="ISO-8859-1"?>\n<iati-activities><n>Café</n></iati-activities>'.encode(
    "latin-1"
)


def h(n: int) -> str:
    return f"{n:040x}"


def seed(db: DatabaseResource, docs: list[tuple[str, str | None, str]]) -> None:
    """Documents ``(id, cached URL, hash)`` of one publisher, written by the real sync."""
    documents = [
        Document(i, i, doc_hash, f"http://publisher.test/{i}", url, "org-1") for i, url, doc_hash in docs
    ]
    snap = finish_snapshot("bds", [Publisher("org-1", "one", "One")], documents, [], None)
    with db.begin() as conn:
        sync_index(Sql(conn), snap, ignore_safety_valve=True)


def state(db: DatabaseResource) -> dict[str, tuple[Any, ...]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, downloaded IS NOT NULL, download_error, download_encoding, download_size, "
                "download_attempts, download_error_message FROM iati.document ORDER BY id"
            )
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def session() -> Any:
    return make_session(retries=1, backoff=0.01, connect_timeout=2, read_timeout=5)


@pytest.fixture
def cache(standin: StandInServer) -> StandInServer:
    standin.route("/cache/*", dir=CACHE)
    standin.route("/cache/latin1.xml", body=LATIN1, headers={"Content-Type": "text/xml"})
    standin.route("/cache/broken.xml", status=500, body=b"oops")
    standin.route("/cache/reset.xml", body=SAMPLE)
    standin.inject("/cache/reset.xml", Fault(reset=True))
    return standin


def test_every_outcome_gets_the_refresher_code(
    iati_db: DatabaseResource, cache: StandInServer, local_blobs: BlobStoreResource
) -> None:
    url = cache.url
    seed(
        iati_db,
        [
            ("ok", url("/cache/3fi-activity.xml"), h(1)),
            ("latin1", url("/cache/latin1.xml"), h(2)),
            ("missing", url("/cache/withdrawn.xml"), h(3)),
            ("broken", url("/cache/broken.xml"), h(4)),
            ("reset", url("/cache/reset.xml"), h(5)),
            ("tls", url("/cache/fcdo-activity.xml").replace("http://", "https://"), h(6)),
            ("pdf", url("/cache/gdihub-annual-report.pdf"), h(7)),
            ("ftp", "ftp://ftp.publisher.test/a.xml", h(8)),
            ("no-url", None, h(9)),
            ("no-hash", url("/cache/fcdo-activity.xml"), ""),
        ],
    )
    store = local_blobs.store
    report, without_source = download_due(iati_db.engine, session(), store, workers=4)
    got = state(iati_db)
    assert got["ok"][:5] == (True, None, "utf-8", len(SAMPLE), 1)
    assert store.get_bytes(source_key(h(1))) == SAMPLE
    assert got["latin1"][:3] == (True, None, "iso-8859-1")
    codes = {doc_id: row[1] for doc_id, row in got.items()}
    assert codes == {
        "ok": None,
        "latin1": None,
        "missing": 404,
        "broken": 500,
        "reset": CONNECTION_ERROR,
        "tls": SSL_ERROR,
        "pdf": CHARSET_ERROR,
        "ftp": SCHEME_ERROR,
        "no-url": NO_SOURCE,
        "no-hash": NO_SOURCE,
    }
    assert "character encoding undetectable" in got["pdf"][5] and "application/pdf" in got["pdf"][5]
    assert not store.exists(source_key(h(7)))  # the PDF is not kept as a source file
    assert sorted(store.list("iati/")) == sorted([source_key(h(1)), source_key(h(2))])
    # Code 4 is given before the stage runs: those documents are counted, never due.
    assert (report.due, report.kinds["downloaded"], report.counts["no_source"]) == (8, 2, 2)
    assert report.counts["bytes"] == len(SAMPLE) + len(LATIN1)
    assert report.errors_by_class == Counter(connection=1, ssl=1, charset=1, scheme=1, http_404=1, http_500=1)
    assert (report.kinds["error"], report.errors) == (6, 6)
    assert sorted(key for key, _, _ in report.error_rows) == [
        "broken",
        "ftp",
        "missing",
        "pdf",
        "reset",
        "tls",
    ]
    assert sorted(doc_id for doc_id, _ in without_source) == ["no-hash", "no-url"]
    assert claims(iati_db) == []  # every claim was released with its batch
    # Nothing is due any more: a second run has no work and sends no request.
    before = len(cache.requests)
    again, _ = download_due(iati_db.engine, session(), store)
    assert (again.due, again.processed, again.counts["no_source"], len(cache.requests)) == (0, 0, 0, before)


def test_retry_mode_retries_every_error_but_four(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    standin.route("/cache/flaky.xml", status=503, body=b"")
    seed(
        iati_db,
        [("flaky", standin.url("/cache/flaky.xml"), h(1)), ("nothing", None, h(2))],
    )
    download_due(iati_db.engine, session(), local_blobs.store)
    assert {k: v[1] for k, v in state(iati_db).items()} == {"flaky": 503, "nothing": NO_SOURCE}
    standin.route("/cache/flaky.xml", body=SAMPLE)  # the cache recovered
    normal, _ = download_due(iati_db.engine, session(), local_blobs.store)
    assert normal.due == 0
    retried, without_source = download_due(iati_db.engine, session(), local_blobs.store, retry_errors=True)
    assert (retried.due, retried.kinds["downloaded"], without_source) == (1, 1, [])
    final = state(iati_db)
    assert final["flaky"][:2] == (True, None) and final["flaky"][4] == 2  # two attempts recorded
    assert final["nothing"][1] == NO_SOURCE


def test_a_crash_mid_download_resumes_without_duplicates(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    standin.route("/cache/*", dir=CACHE)
    names = [
        "3fi-activity.xml",
        "fcdo-activity.xml",
        "gdihub-activity.xml",
        "activity-standard-example-annotated.xml",
    ]
    docs = [(f"doc-{i}", standin.url(f"/cache/{names[i % 4]}"), h(i)) for i in range(9)]
    seed(iati_db, docs)

    def crash(message: str) -> None:
        if ": batch 2 of " in message:
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        download_due(iati_db.engine, session(), local_blobs.store, workers=2, batch_size=2, progress=crash)
    # Batches 1 and 2 were committed before the crash; the rest is still due.
    halfway = state(iati_db)
    done = [k for k, v in halfway.items() if v[0]]
    assert len(done) == 4 and all(v[1] is None for v in halfway.values())
    assert claims(iati_db) == []
    report, _ = download_due(iati_db.engine, session(), local_blobs.store, workers=3, batch_size=2)
    assert (report.due, report.kinds["downloaded"], report.recovered) == (5, 5, 0)
    final = state(iati_db)
    assert all(v[0] and v[4] == 1 for v in final.values()), final
    keys = list(local_blobs.store.list("iati/"))
    assert sorted(keys) == sorted(source_key(h(i)) for i in range(9))
    assert not [
        p for p in Path(local_blobs.store.uri()[len("file://") :]).rglob("*") if p.name.startswith(".tmp-")
    ]


class FailingStore(LocalBlobStore):
    """A store whose writes fail for some keys (a full disk, an S3 outage)."""

    def __init__(self, root: Path, failing: set[str]) -> None:
        super().__init__(root)
        self.failing = failing

    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> int:
        if key in self.failing or "*" in self.failing:
            raise OSError("No space left on device")
        return super().put_stream(key, stream, content_type)

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        with super().open(key) as fh:
            yield fh


def test_a_store_failure_leaves_the_document_due(
    iati_db: DatabaseResource, standin: StandInServer, tmp_path: Path
) -> None:
    standin.route("/cache/*", dir=CACHE)
    seed(
        iati_db,
        [
            ("a", standin.url("/cache/3fi-activity.xml"), h(1)),
            ("b", standin.url("/cache/fcdo-activity.xml"), h(2)),
        ],
    )
    store: BlobStore = FailingStore(tmp_path / "blobs", {source_key(h(2))})
    report, _ = download_due(iati_db.engine, session(), store)
    assert (report.kinds["downloaded"], report.kinds["left_due"]) == (1, 1)
    [(key, error_class, message)] = report.error_rows
    assert (key, error_class) == ("b", "unexpected") and "No space left" in message
    assert state(iati_db)["b"][:2] == (False, None)  # still due, no error code
    assert claims(iati_db) == []


def test_oversized_files_get_code_five(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    standin.route("/cache/*", dir=CACHE)
    seed(iati_db, [("big", standin.url("/cache/gdihub-activity.xml"), h(1))])
    download_due(iati_db.engine, session(), local_blobs.store, max_bytes=1000)
    assert state(iati_db)["big"][1] == TOO_LARGE
    assert not local_blobs.store.exists(source_key(h(1)))


class Overlap:
    """A cache route that counts how many requests it is answering at the same time.

    Each request waits (at most a few seconds) until ``wanted`` requests are in flight together,
    so concurrent downloads are seen overlapping whatever the machine's speed, and downloads in a
    row would show a peak of one.
    """

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.together = threading.Event()

    def __call__(self, request: RecordedRequest) -> Reply:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.wanted:
                self.together.set()
        try:
            self.together.wait(timeout=5)
            return Reply(200, SAMPLE, {"Content-Type": "application/xml"})
        finally:
            with self.lock:
                self.active -= 1


def test_downloads_run_concurrently(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    overlap = Overlap(wanted=3)
    standin.route("/slow/*", handler=overlap)
    seed(iati_db, [(f"d{i}", standin.url(f"/slow/{i}.xml"), h(i)) for i in range(6)])
    report, _ = download_due(iati_db.engine, session(), local_blobs.store, workers=6)
    assert report.kinds["downloaded"] == 6
    assert overlap.peak >= 3  # the stand-in answered several downloads at once


def test_a_claim_of_a_dead_run_is_taken_back_and_a_live_one_is_left_alone(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    standin.route("/cache/*", dir=CACHE)
    seed(iati_db, [(name, standin.url("/cache/3fi-activity.xml"), h(n)) for n, name in enumerate("abc")])
    claim_for_dead_run(iati_db, STAGE.name, "a")  # its process was killed mid-download
    with claim_for_live_run(iati_db, STAGE.name, "b"):  # another run is downloading it right now
        report, _ = download_due(iati_db.engine, session(), local_blobs.store)
        assert (report.recovered, report.due, report.kinds["downloaded"]) == (1, 2, 2)
        assert {k: v[0] for k, v in state(iati_db).items()} == {"a": True, "b": False, "c": True}
        assert [(stage, item) for stage, item, _ in claims(iati_db)] == [(STAGE.name, "b")]
        assert len(standin.requests_to("/cache/3fi-activity.xml", "GET")) == 2
    # That run died without finishing "b": the next run takes its claim back and downloads it.
    report, _ = download_due(iati_db.engine, session(), local_blobs.store)
    assert (report.recovered, report.due, report.kinds["downloaded"]) == (1, 1, 1)
    assert all(v[0] and v[4] == 1 for v in state(iati_db).values())
    assert claims(iati_db) == []


def test_a_document_another_run_claims_after_selection_is_skipped(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    standin.route("/cache/*", dir=CACHE)
    seed(iati_db, [(name, standin.url("/cache/3fi-activity.xml"), h(n)) for n, name in enumerate("abc")])
    other_run = ExitStack()

    def progress(message: str) -> None:
        if "items due" in message:  # selected, not claimed yet: another run claims "c" now
            other_run.enter_context(claim_for_live_run(iati_db, STAGE.name, "c"))

    with other_run:
        report, _ = download_due(
            iati_db.engine, session(), local_blobs.store, batch_size=2, progress=progress
        )
        assert (report.due, report.claimed, report.skipped, report.kinds["downloaded"]) == (3, 2, 1, 2)
        assert {k: v[0] for k, v in state(iati_db).items()} == {"a": True, "b": True, "c": False}


def test_an_outcome_for_an_outdated_hash_is_ignored(iati_db: DatabaseResource) -> None:
    seed(iati_db, [("a", "http://cache.test/a.xml", h(2))])
    with iati_db.begin() as conn:
        record_outcomes(
            Sql(conn),
            [
                DownloadOutcome("a", h(1), None, size=3, encoding="utf-8"),
                DownloadOutcome("a", h(1), None, 404, "x"),
            ],
        )
    assert state(iati_db)["a"][:2] == (False, None)


def test_limit_downloads_part_of_the_due_documents(
    iati_db: DatabaseResource, standin: StandInServer, local_blobs: BlobStoreResource
) -> None:
    standin.route("/cache/*", dir=CACHE)
    seed(iati_db, [(f"d{i}", standin.url("/cache/3fi-activity.xml"), h(i)) for i in range(5)])
    report, _ = download_due(iati_db.engine, session(), local_blobs.store, limit=2)
    assert (report.due, report.kinds["downloaded"]) == (2, 2)
    assert sum(1 for v in state(iati_db).values() if v[0]) == 2


@pytest.mark.parametrize(
    ("head", "complete", "expected"),
    [
        (codecs.BOM_UTF8 + b"<a/>", True, "utf-8-sig"),
        (codecs.BOM_UTF16_LE + "<a/>".encode("utf-16-le"), True, "utf-16"),
        (codecs.BOM_UTF32_LE + "<a/>".encode("utf-32-le"), True, "utf-32"),
        (b'<?xml version="1.0" encoding="windows-1252"?><a>\x80</a>', True, "windows-1252"),
        (b"<?xml version='1.0' encoding='UTF-8'?><a/>", True, "utf-8"),
        (b'<?xml version="1.0" encoding="x-unknown-charset"?><a>caf\xc3\xa9</a>', True, "utf-8"),
        ("<a>café</a>".encode(), True, "utf-8"),
        # A head cut inside a two-byte character is still UTF-8.
        (("<a>" + "é" * 10).encode()[:-1], False, "utf-8"),
        (b"", True, None),
        ((CACHE / "gdihub-annual-report.pdf").read_bytes()[:HEAD_BYTES], True, None),
    ],
)
def test_detect_encoding(head: bytes, complete: bool, expected: str | None) -> None:
    assert detect_encoding(head, complete) == expected


def test_detect_encoding_falls_back_to_charset_normalizer() -> None:
    text = (
        "<iati-activities><narrative>Café à Montréal, développement économique</narrative></iati-activities>"
    )
    found = detect_encoding(text.encode("latin-1"), complete=True)
    assert found is not None and text.encode("latin-1").decode(found) == text


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (FetchError(ErrorKind.HTTP_STATUS, "HTTP 404", status=404), 404),
        (FetchError(ErrorKind.HTTP_STATUS, "HTTP 500", status=500), 500),
        (FetchError(ErrorKind.CONNECTION, "reset"), CONNECTION_ERROR),
        (FetchError(ErrorKind.TIMEOUT, "slow"), CONNECTION_ERROR),
        (FetchError(ErrorKind.SSL, "tls"), SSL_ERROR),
        (FetchError(ErrorKind.UNSUPPORTED_SCHEME, "ftp"), SCHEME_ERROR),
        (FetchError(ErrorKind.TOO_LARGE, "big"), TOO_LARGE),
    ],
)
def test_error_codes(error: FetchError, code: int) -> None:
    assert error_code(error) == code
