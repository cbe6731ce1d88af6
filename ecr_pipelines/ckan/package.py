"""One CKAN package: a request validated as the legacy did, its rows or file streamed into a ZIP,
the ZIP streamed into the blob store or a file. No Dagster, no mail, no statistics.

Requests (the legacy's three schemas, ``package_datastore``, ``package_dwc_archive`` and
``package_url``): a missing required parameter is refused naming it, unknown parameters are
dropped, ``filters`` is parsed as JSON. ``validate_request`` returns the normalised parameters,
the cache key (SHA-256 of the canonical JSON of every parameter but ``email``, so neither the
order of the parameters nor the address changes it) and the speed the legacy queued it on.

Streaming: ``ZipStream`` is a readable object that builds the archive while it is read. Each
``read`` deflates encoded pieces into the entry only until enough bytes are waiting, so the
whole chain runs at the pace of whoever reads; behind it a producer thread encodes pages (at
most two pieces ahead) and the datastore reader's own thread fetches the next page (one ahead),
so at most a few pages are ever in memory, whatever the size of the resource. A large CSV or
TSV download by offset paging goes further: worker processes fetch and encode pages (two by
default, each a few pages ahead at most), and this process only deflates them in order, since
decoding and encoding rows is Python work that one process does one thread at a time (see
``datastore.encoded_pages_by_workers``). The reader is the blob store's
``put_stream`` (a local folder copies it into a temporary file that is renamed into place; S3
uploads it in parts, aborting the upload on error) or a file written beside its final name and
renamed. Nothing is seekable and nothing needs to be: entries carry ZIP64 data descriptors. A
Darwin Core Archive (``dwc``) is several entries produced one after the other (``dwc.py``). An
error anywhere (CKAN failing mid-way, a format limit) is raised from ``read``, so the store never
sees the end of the stream and keeps nothing.
"""

import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import requests

from ecr_pipelines.ckan.datastore import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_WORKERS,
    FORWARDED,
    PARALLEL_MIN_ROWS,
    DatastoreSearch,
    Page,
    encoded_pages_by_workers,
    in_background,
    parallel_rows,
    session_options,
    shown_url,
)
from ecr_pipelines.ckan.dwc import DwcArchive, DwcConfig, check_eml_template, default_dwc_config, flag
from ecr_pipelines.ckan.formats import DEFAULT_FORMAT, FORMATS, DelimitedEncoder, encode
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import ErrorKind, FetchError, classify, request
from ecr_pipelines.lib.scratch import scratch_dir

KINDS = ("datastore", "dwc", "url")
DEFAULT_SLOW_REQUEST = 50_000  # the legacy SLOW_REQUEST
ENTRY_STEM = "resource"
ZIP_CONTENT_TYPE = "application/zip"
# zlib's default and the legacy `zip` command's level, so packages are as small as the legacy's
# (on the benchmark's rows, level 1 halves the deflate CPU and makes the ZIP 1.6 times larger).
DEFAULT_COMPRESSLEVEL = 6
CHUNK = 256 * 1024

Speed = Literal["fast", "slow"]


class BadRequest(ValueError):
    """A request the legacy would have refused with its 400 BadRequestError."""


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Param:
    required: bool = False
    transform: Callable[[str, Any], Any] | None = None


def _parse_filters(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadRequest(f"Parameter {name} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise BadRequest(f"Parameter {name} must be a JSON object (field → value)")
    return dict(value)


def _whole_number(name: str, value: Any) -> int:
    # The legacy applied int() only while paging, so a bad value failed the job after queueing;
    # refusing it up front gives the requester the reason instead.
    if isinstance(value, bool):
        raise BadRequest(f"Parameter {name} must be a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"Parameter {name} must be a whole number, not {value!r}") from None
    if number < 0:
        raise BadRequest(f"Parameter {name} must not be negative")
    return number


def _format(name: str, value: Any) -> str:
    text = str(value).strip().lower()
    if text not in FORMATS:
        raise BadRequest(f"Parameter {name} must be one of {', '.join(FORMATS)}, not {value!r}")
    return text


def _eml_template(name: str, value: Any) -> str:
    # Filled in only after the whole download: a template that cannot be filled in is refused
    # here rather than failing the job at its very end.
    if not isinstance(value, str):
        raise BadRequest(f"Parameter {name} must be text (an EML XML template)")
    try:
        return check_eml_template(value)
    except ValueError as exc:
        raise BadRequest(f"Parameter {name}: {exc}") from None


_DATASTORE: dict[str, _Param] = {
    "api_url": _Param(required=True),
    "resource_id": _Param(required=True),
    "email": _Param(required=True),
    "filters": _Param(transform=_parse_filters),
    "q": _Param(),
    "plain": _Param(),
    "language": _Param(),
    "limit": _Param(transform=_whole_number),
    "offset": _Param(transform=_whole_number),
    "fields": _Param(),
    "sort": _Param(),
    "format": _Param(transform=_format),
    "doi": _Param(),
    "key": _Param(),  # the requester's CKAN API key: a header, never a body parameter
}
SCHEMAS: dict[str, dict[str, _Param]] = {
    "datastore": _DATASTORE,
    "dwc": {**_DATASTORE, "eml": _Param(transform=_eml_template), "for_gbif": _Param()},
    "url": {
        "resource_id": _Param(required=True),
        "email": _Param(required=True),
        "resource_url": _Param(required=True),
    },
}


@dataclass(frozen=True)
class PackageRequest:
    """A validated request: ``params`` normalised, ``cache_key`` and ``speed`` derived from it."""

    kind: str
    params: Mapping[str, Any] = field(repr=False)
    cache_key: str
    speed: Speed

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "key" else v) for k, v in self.params.items()}
        return f"PackageRequest(kind={self.kind!r}, params={shown!r}, cache_key={self.cache_key!r}, speed={self.speed!r})"

    @property
    def format(self) -> str:
        return str(self.params.get("format", DEFAULT_FORMAT))

    @property
    def forwarded(self) -> dict[str, Any]:
        """The parameters sent on to ``datastore_search``."""
        return {k: v for k, v in self.params.items() if k in FORWARDED}


def canonical_request(kind: str, params: Mapping[str, Any]) -> str:
    """Every parameter but ``email``, keys sorted at every level, no spaces; the API key only as
    its SHA-256 (it is part of the identity, as in the legacy's cache key, but never stored)."""
    canonical: dict[str, Any] = {"kind": kind}
    for name, value in params.items():
        if name == "email":
            continue
        if name == "key":
            canonical["key_sha256"] = hashlib.sha256(str(value).encode()).hexdigest()
        else:
            canonical[name] = value
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(kind: str, params: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_request(kind, params).encode()).hexdigest()


def request_speed(
    kind: str, params: Mapping[str, Any], *, cached: bool = False, slow_request: int = DEFAULT_SLOW_REQUEST
) -> Speed:
    """The legacy queue rule: a cached package or a file is fast; rows are slow without a limit or
    when ``limit - offset`` exceeds ``slow_request`` (the legacy subtracted the offset; kept)."""
    if cached or kind == "url":
        return "fast"
    limit = params.get("limit")
    if limit is None:
        return "slow"
    return "slow" if int(limit) - int(params.get("offset") or 0) > slow_request else "fast"


def validate_request(
    kind: str,
    raw: Mapping[str, Any],
    *,
    cached: bool = False,
    slow_request: int = DEFAULT_SLOW_REQUEST,
    require_email: bool = True,
) -> PackageRequest:
    """Check ``raw`` against the schema of ``kind`` and normalise it.

    Normalisation beyond the legacy, so that equal requests share one cache entry: ``None`` and
    empty values count as absent, ``limit`` and ``offset`` become integers (``0`` is dropped: the
    legacy read a zero limit as "no limit" and a zero offset is the start), ``format`` defaults
    to ``csv``. ``require_email=False`` is for the command line, which mails nobody.
    """
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise BadRequest(f"Unknown kind {kind!r}: one of {', '.join(KINDS)}")
    params: dict[str, Any] = {}
    missing = []
    for name, spec in schema.items():
        value = raw.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if spec.required and (name != "email" or require_email):
                missing.append(name)
            continue
        params[name] = spec.transform(name, value) if spec.transform else value
    if missing:
        names = ", ".join(missing)
        raise BadRequest(
            f"Parameter{'s' if len(missing) > 1 else ''} {names} {'are' if len(missing) > 1 else 'is'} required"
        )
    for name in ("limit", "offset"):
        if params.get(name) == 0:
            del params[name]
    if kind != "url":
        params.setdefault("format", DEFAULT_FORMAT)
    return PackageRequest(
        kind=kind,
        params=params,
        cache_key=cache_key(kind, params),
        speed=request_speed(kind, params, cached=cached, slow_request=slow_request),
    )


def url_entry_name(resource_url: str, resource_id: str) -> str:
    """The legacy file name of a resource file: the last non-empty path segment of its URL (no
    query), else the resource id. Decoded, and kept flat: no folder can come out of it."""
    segments = [s for s in urlsplit(resource_url).path.split("/") if s]
    name = unquote(segments[-1]) if segments else ""
    name = name.replace("/", "_").replace("\\", "_").strip()
    if name in ("", ".", ".."):
        name = str(resource_id).replace("/", "_").replace("\\", "_")
    return name


# -- the ZIP stream ---------------------------------------------------------------------------------
@dataclass
class Member:
    """One file of the package: its name and its content in pieces (produced as they are asked for)."""

    name: str
    content: Callable[[], Iterator[bytes]]


class _Sink:
    """Where zipfile writes: a growing buffer that ZipStream drains. It can tell but not seek, which
    makes zipfile write data descriptors instead of going back to patch headers."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass


class ZipStream:
    """A ZIP archive of ``members``, produced while it is read (``read(size)``).

    ``members`` is iterated lazily, one member after the previous one is written, so a member
    may depend on what the ones before it produced (a Darwin Core Archive's ``meta.xml`` and the
    CSVs it lists are known only once the rows went through). Each member's content is produced
    in a thread of its own, a couple of pieces ahead of the reader: fetching and encoding (Python
    work) overlap with deflating and storing (which zlib and the file or socket do without the
    GIL) instead of taking turns.
    """

    def __init__(
        self,
        members: Iterable[Member],
        *,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
        background: bool = True,
    ) -> None:
        self._sink = _Sink()
        self._background = background
        self._steps = self._produce(members, compresslevel)
        self._done = False
        self._failure: BaseException | None = None
        self.size = 0

    def _produce(self, members: Iterable[Member], compresslevel: int) -> Iterator[None]:
        archive = zipfile.ZipFile(
            self._sink,  # type: ignore[arg-type]
            "w",
            compression=zipfile.ZIP_DEFLATED,
            compresslevel=compresslevel,
            allowZip64=True,
        )
        members = iter(members)
        try:
            for member in members:
                pieces = member.content()
                if self._background:
                    pieces = in_background(pieces, depth=2, name=f"ckan-package-{member.name}")
                try:
                    # force_zip64: the size is unknown until the end and may pass 4 GiB.
                    with archive.open(member.name, "w", force_zip64=True) as entry:
                        for piece in pieces:
                            entry.write(piece)
                            yield
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()
        finally:
            # A lazy source of members (a generator holding a scratch folder) ends with the
            # archive, also when it fails or is closed early.
            close = getattr(members, "close", None)
            if close is not None:
                close()
        archive.close()

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._failure is not None:
            # A reader that carries on after an error must not get the rest as a clean end.
            raise self._failure
        buffer = self._sink.buffer
        while not self._done and (size is None or size < 0 or len(buffer) < size):
            try:
                next(self._steps)
            except StopIteration:
                self._done = True
            except BaseException as exc:
                self._failure = exc
                buffer.clear()
                raise
        if size is None or size < 0 or size >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:size])
            del buffer[:size]
        self.size += len(data)
        return data

    def close(self) -> None:
        # Closing the producer stops and waits for whatever it runs (threads, an HTTP response).
        self._steps.close()

    def __enter__(self) -> "ZipStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- members ----------------------------------------------------------------------------------------
@dataclass
class PackageReport:
    """What one build did, for logs and run metadata (no secrets, no email)."""

    kind: str
    entry: str
    format: str | None = None
    fields: list[str] = field(default_factory=list)
    rows: int = 0
    source_bytes: int = 0
    zip_bytes: int = 0
    calls: int = 0
    paging: str | None = None
    workers: int = 0  # processes that fetched and encoded pages (0: this process)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


Progress = Callable[[PackageReport], None]


def _datastore_member(
    search: DatastoreSearch,
    fmt: str,
    report: PackageReport,
    progress: Progress | None,
    parallel: tuple[int, int, dict[str, Any]] | None,
) -> Member:
    def counted(pages: Iterator[Page]) -> Iterator[Page]:
        for page in pages:
            report.rows += len(page)
            report.calls = search.calls
            if progress is not None:
                progress(report)
            yield page

    def by_workers(workers: int, options: dict[str, Any]) -> Iterator[bytes] | None:
        """The pieces from worker processes, or None when no process pool can run here (a script
        without a ``__main__`` guard, say, which "spawn" would run again in each worker)."""
        description = search.describe()
        delimiter = "," if fmt == "csv" else "\t"
        pages = encoded_pages_by_workers(search, delimiter, workers=workers, options=options)
        calls = search.calls
        try:
            first = next(pages, None)
        except BrokenProcessPool:
            search.calls = calls
            return None
        report.workers = workers

        def pieces() -> Iterator[bytes]:
            yield DelimitedEncoder(description.fields, description.types, delimiter).header()
            for data, rows in chain([first] if first is not None else [], pages):
                report.rows += rows
                report.calls = search.calls
                if progress is not None:
                    progress(report)
                yield data
            report.calls = search.calls

        return pieces()

    def content() -> Iterator[bytes]:
        description = search.describe()
        report.fields = list(description.fields)
        report.paging = search.paging()
        if parallel is not None and fmt in ("csv", "tsv"):
            workers, min_rows, options = parallel
            rows = parallel_rows(search)
            if workers >= 2 and rows is not None and rows >= min_rows:
                pieces = by_workers(workers, options)
                if pieces is not None:
                    yield from pieces
                    return
        with ExitStack() as stack:
            tmpdir = stack.enter_context(scratch_dir("ckan-xlsx-")) if fmt == "xlsx" else None
            pages = search.pages()
            stack.callback(getattr(pages, "close", lambda: None))
            yield from encode(fmt, description.fields, counted(pages), types=description.types, tmpdir=tmpdir)
        report.calls = search.calls

    return Member(f"{ENTRY_STEM}.{fmt}", content)


def _dwc_members(
    search: DatastoreSearch,
    params: Mapping[str, Any],
    config: DwcConfig,
    report: PackageReport,
    progress: Progress | None,
) -> Iterator[Member]:
    def counted(rows: int) -> None:
        report.rows += rows
        report.calls = search.calls
        if progress is not None:
            progress(report)

    archive = DwcArchive(
        search, config, eml=params.get("eml"), for_gbif=flag(params.get("for_gbif")), on_page=counted
    )
    for name, content in archive.entries():
        if archive.plan is not None and not report.fields:
            report.fields = list(archive.plan.fields)
            report.paging = search.paging()
        report.calls = search.calls
        yield Member(name, content)
    report.calls = search.calls


def _url_member(
    session: requests.Session,
    resource_url: str,
    name: str,
    report: PackageReport,
    max_bytes: int | None,
    progress: Progress | None,
) -> Member:
    shown = shown_url(resource_url)

    def content() -> Iterator[bytes]:
        report.calls += 1
        response = request(session, "GET", resource_url, stream=True)
        with response:
            declared = response.headers.get("Content-Length", "")
            if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(ErrorKind.TOO_LARGE, f"Content-Length {declared} > {max_bytes} bytes", shown)
            chunks = response.iter_content(CHUNK)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except requests.exceptions.RequestException as exc:
                    raise classify(exc, shown) from exc
                report.source_bytes += len(chunk)
                if max_bytes is not None and report.source_bytes > max_bytes:
                    raise FetchError(ErrorKind.TOO_LARGE, f"larger than {max_bytes} bytes", shown)
                if progress is not None:
                    progress(report)
                yield chunk

    return Member(name, content)


def open_package(
    pkg: PackageRequest,
    session: requests.Session,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
    max_bytes: int | None = None,
    prefetch: bool = True,
    background: bool = True,
    workers: int = DEFAULT_WORKERS,
    parallel_min_rows: int = PARALLEL_MIN_ROWS,
    progress: Progress | None = None,
    dwc_config: DwcConfig | None = None,
) -> tuple[ZipStream, PackageReport]:
    """The package of ``pkg`` as a ZIP stream (nothing is fetched until it is read) and the report
    that fills in while it is read. ``max_bytes`` caps a resource file (``url`` kind);
    ``dwc_config`` drives the ``dwc`` kind (``None``: the bundled default, see ``dwc.py``);
    ``prefetch`` and ``background`` switch off the page prefetch and the producer thread (the
    package is the same; tests use it to show that). A CSV or TSV download by offset paging of at
    least ``parallel_min_rows`` rows is fetched and encoded by ``workers`` processes (``0`` keeps
    it in this process). ``progress`` is called after each page (or piece of a file) with the
    report so far, from the producer thread.

    Failures are raised from the stream's ``read``: ``DatastoreError`` (CKAN), ``FetchError`` (a
    resource file), ``FormatError`` (more rows than an XLSX sheet holds); each has a ``kind``."""
    params = pkg.params
    if pkg.kind == "dwc":
        config = dwc_config if dwc_config is not None else default_dwc_config()
        search = DatastoreSearch(
            session,
            params["api_url"],
            pkg.forwarded,
            api_key=params.get("key"),
            page_size=page_size,
            prefetch=prefetch,
        )
        report = PackageReport(kind="dwc", entry=config.core.file_name)
        members = _dwc_members(search, params, config, report, progress)
        return ZipStream(members, compresslevel=compresslevel, background=background), report
    if pkg.kind == "url":
        name = url_entry_name(params["resource_url"], params["resource_id"])
        report = PackageReport(kind="url", entry=name)
        member = _url_member(session, params["resource_url"], name, report, max_bytes, progress)
    elif pkg.kind == "datastore":
        search = DatastoreSearch(
            session,
            params["api_url"],
            pkg.forwarded,
            api_key=params.get("key"),
            page_size=page_size,
            prefetch=prefetch,
        )
        report = PackageReport(kind="datastore", entry=f"{ENTRY_STEM}.{pkg.format}", format=pkg.format)
        parallel = (workers, parallel_min_rows, session_options(session)) if workers >= 2 else None
        member = _datastore_member(search, pkg.format, report, progress, parallel)
    else:
        raise BadRequest(f"Unknown kind {pkg.kind!r}: one of {', '.join(KINDS)}")
    return ZipStream([member], compresslevel=compresslevel, background=background), report


def store_package(
    pkg: PackageRequest, session: requests.Session, store: BlobStore, key: str, **options: Any
) -> PackageReport:
    """Build the package into ``store`` under ``key``; on any error nothing is stored (and an
    object already under ``key`` stays as it was)."""
    started = time.perf_counter()
    stream, report = open_package(pkg, session, **options)
    with stream:
        report.zip_bytes = store.put_stream(key, stream, ZIP_CONTENT_TYPE)  # type: ignore[arg-type]
    report.seconds = time.perf_counter() - started
    return report


def write_package(
    pkg: PackageRequest, session: requests.Session, path: str | Path, **options: Any
) -> PackageReport:
    """Build the package into the file ``path``: written beside it under a temporary name and
    renamed when complete, so ``path`` is either the whole package or untouched."""
    target = Path(path)
    started = time.perf_counter()
    stream, report = open_package(pkg, session, **options)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with stream, os.fdopen(fd, "wb") as out:
            while data := stream.read(1024 * 1024):
                out.write(data)
            report.zip_bytes = out.tell()
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    report.seconds = time.perf_counter() - started
    return report
