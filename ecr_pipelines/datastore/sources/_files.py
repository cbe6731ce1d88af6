"""Streaming helpers shared by the readers: lines of bytes, decoding with the line named, CSV
records checked against the expected header, and ZIP archives (as data or as a wrapper)."""

import csv
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import BinaryIO

from ecr_pipelines.datastore.sources.spec import Problem, Row, SourceFileError

# What a reader takes from the stream at a time: its lines are split and decoded together.
BLOCK = 1 << 20
# A "line" longer than this is not text of these sources (or a CSV field gone wild).
MAX_LINE = 64 << 20
UTF8_BOM = b"\xef\xbb\xbf"
ZIP_MAGIC = b"PK\x03\x04"

# What a damaged, encrypted or exotic archive member raises while it is read.
ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


class Where:
    """The file (and archive member) being read, to name it in problems."""

    def __init__(self, file_name: str, member: str | None = None) -> None:
        self.file_name = file_name
        self.member = member

    def problem(self, kind: str, message: str, line: int | None = None) -> Problem:
        return Problem(kind=kind, file_name=self.file_name, message=message, member=self.member, line=line)

    def error(self, kind: str, message: str, line: int | None = None) -> SourceFileError:
        return SourceFileError(self.problem(kind, message, line))


def _line_blocks(stream: BinaryIO, where: Where, prefix: bytes = b"") -> Iterator[list[bytes]]:
    """The lines (with their endings: ``\\n``, ``\\r\\n`` or a lone ``\\r``) in lists of
    consecutive ones, one list per block read. Splitting a whole block with ``bytes.splitlines``
    (which knows exactly these three endings) costs a fraction of finding the lines one by one;
    a line cut by the block's end waits for the next block, so its pieces are joined once and a
    long line costs its length, not its length squared."""
    parts: list[bytes] = []  # the unfinished line so far: no line end, but maybe a final CR
    held = 0
    lines = 0
    chunk = prefix + stream.read(BLOCK)
    while chunk:
        # The last line end of the chunk, leaving out a CR that closes it: maybe the first
        # half of a CRLF, decided with the next chunk.
        end = len(chunk) - 1 if chunk.endswith(b"\r") else len(chunk)
        cut = max(chunk.rfind(b"\n", 0, end), chunk.rfind(b"\r", 0, end))
        if cut < 0:
            parts.append(chunk)
            held += len(chunk)
            if held > MAX_LINE:
                raise where.error("bad_row", f"line longer than {MAX_LINE} bytes", lines + 1)
        else:
            parts.append(chunk[: cut + 1])
            block = b"".join(parts).splitlines(keepends=True)
            lines += len(block)
            yield block
            rest = chunk[cut + 1 :]
            parts, held = ([rest], len(rest)) if rest else ([], 0)
        chunk = stream.read(BLOCK)
    if parts:
        yield b"".join(parts).splitlines(keepends=True)


def raw_lines(stream: BinaryIO, where: Where, prefix: bytes = b"") -> Iterator[bytes]:
    """Lines with their endings (``\\n``, ``\\r\\n`` or a lone ``\\r``, which old Mac exports
    such as the Comtrade list use); ``prefix`` is read before the stream."""
    # chain, not a generator: the consumer's next() stays in C between blocks.
    return chain.from_iterable(_line_blocks(stream, where, prefix))


def text_lines(
    stream: BinaryIO, encoding: str, where: Where, *, utf8_if_bom: bool = False, prefix: bytes = b""
) -> Iterator[str]:
    """Decoded lines, each on its own, so that a byte the encoding lacks is reported with its line.

    A UTF-8 byte order mark is dropped; with ``utf8_if_bom`` it also switches the file to UTF-8
    (a file that starts with it was written as UTF-8, whatever encoding it was announced in)."""
    return chain.from_iterable(_decoded_blocks(stream, encoding, where, utf8_if_bom, prefix))


def _decoded_blocks(
    stream: BinaryIO, encoding: str, where: Where, utf8_if_bom: bool, prefix: bytes
) -> Iterator[list[str]]:
    number = 0  # the lines decoded so far
    for block in _line_blocks(stream, where, prefix):
        if number == 0 and block[0].startswith(UTF8_BOM):
            block[0] = block[0][len(UTF8_BOM) :]
            if utf8_if_bom:
                encoding = "utf-8"
        try:
            # A block's lines in one go; a failure is found again line by line below.
            decoded = [raw.decode(encoding) for raw in block]
        except UnicodeDecodeError:
            pass
        else:
            number += len(decoded)
            yield decoded
            continue
        # The lines before the one that fails are read as they would have been.
        for raw in block:
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise where.error(
                    "bad_encoding",
                    f"byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line is not {encoding}",
                    number + 1,
                ) from error
            number += 1
            yield [text]


def normalised_name(name: str) -> str:
    """Header names compare without case or punctuation: ``Local authority district code``,
    ``local_authority_district_code`` and ``ctyCode``/``cty_code`` are the same."""
    return _NOT_ALNUM.sub("", name.lower())


def check_header(header: Sequence[str], expected: Sequence[str], where: Where, line: int) -> None:
    got = [normalised_name(name) for name in header]
    want = [normalised_name(name) for name in expected]
    if got == want:
        return
    detail = f"expected {len(want)} columns, found {len(got)}"
    for position, (found, wanted) in enumerate(zip(header, expected, strict=False), 1):
        if normalised_name(found) != normalised_name(wanted):
            detail += f"; column {position} is {found!r}, expected {wanted!r}"
            break
    raise where.error("bad_header", f"unexpected header ({detail})", line)


def csv_records(lines: Iterable[str], where: Where, **dialect: object) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the line each starts on (a quoted field may span lines); blank lines are
    skipped, as they carry no row."""
    reader = csv.reader(lines, **dialect)  # type: ignore[call-overload]
    last = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise where.error("bad_row", f"not valid CSV ({error})", last + 1) from error
        start, last = last + 1, reader.line_num
        if record:
            yield start, record


def csv_rows(
    lines: Iterable[str], where: Where, *, header: Sequence[str], skipinitialspace: bool = False
) -> Iterator[Row]:
    """The data rows of a CSV with the expected header, empty fields as None (what ``COPY ..
    CSV`` made of the legacy's unquoted empty fields and of its ``""`` removed beforehand).

    ``csv_records``' rules (blank lines skipped, errors named by the line a record starts on) in
    a loop of its own: every row of a file of millions passes here, so it does the least per row."""
    reader = csv.reader(lines, skipinitialspace=skipinitialspace)
    last = 0  # the line the previous record ended on
    try:
        for record in reader:
            if record:
                break
            last = reader.line_num
        else:
            raise where.error("bad_header", "the file is empty, a header row was expected")
        check_header(record, header, where, last + 1)
        last = reader.line_num
        width = len(header)
        for record in reader:
            if len(record) != width:
                if record:
                    raise where.error("bad_row", f"{len(record)} fields, expected {width}", last + 1)
            elif "" in record:
                yield tuple([value or None for value in record])
            else:
                yield tuple(record)
            last = reader.line_num
    except csv.Error as error:
        raise where.error("bad_row", f"not valid CSV ({error})", last + 1) from error


# Archive entries that are never data: folders, macOS resource forks and Office metadata.
def is_data_member(info: zipfile.ZipInfo) -> bool:
    name = info.filename
    base = name.rsplit("/", 1)[-1]
    return not (
        info.is_dir()
        or name.startswith("__MACOSX/")
        or base.startswith("._")
        or base in {".DS_Store", "[Content_Types].xml"}
    )


def open_zip(stream: BinaryIO, where: Where) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise where.error("bad_archive", f"not a readable ZIP archive ({error})") from error


@contextmanager
def archive_errors(where: Where) -> Iterator[None]:
    """Reading a member that turns out damaged fails the file as ``bad_archive``."""
    try:
        yield
    except ARCHIVE_ERRORS as error:
        raise where.error("bad_archive", f"the archive is damaged or unreadable ({error})") from error


def data_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [info for info in archive.infolist() if is_data_member(info)]


def peek_head(stream: BinaryIO) -> tuple[bytes, bool]:
    """The first bytes (to tell a ZIP from text) and whether the stream is seekable; a seekable
    stream is rewound, else the caller puts them back in front (``prefix`` of ``raw_lines``)."""
    seekable = getattr(stream, "seekable", lambda: False)()
    if not seekable:
        return stream.read(len(ZIP_MAGIC)), False
    position = stream.tell()
    head = stream.read(len(ZIP_MAGIC))
    stream.seek(position)
    return head, True


@contextmanager
def source_text(
    stream: BinaryIO, file_name: str, *, encoding: str = "utf-8", utf8_if_bom: bool = False
) -> Iterator[tuple[Where, Iterator[str]]]:
    """The lines of a text source's file: the file itself or, as the legacy's manager unpacked
    them, the first data member of a ZIP."""
    where = Where(file_name)
    head, seekable = peek_head(stream)
    if head != ZIP_MAGIC:
        prefix = b"" if seekable else head
        yield where, text_lines(stream, encoding, where, utf8_if_bom=utf8_if_bom, prefix=prefix)
        return
    if not seekable:
        raise where.error("bad_archive", "a ZIP archive can only be read from a seekable stream")
    with open_zip(stream, where) as archive:
        members = data_members(archive)
        if not members:
            raise where.error("bad_archive", "the archive holds no data file")
        member_where = Where(file_name, members[0].filename)
        with archive_errors(member_where), archive.open(members[0]) as member:
            yield member_where, text_lines(member, encoding, member_where, utf8_if_bom=utf8_if_bom)


def csv_source_rows(
    stream: BinaryIO,
    file_name: str,
    *,
    header: Sequence[str],
    encoding: str = "utf-8",
    utf8_if_bom: bool = False,
    skipinitialspace: bool = False,
) -> Iterator[Row]:
    with source_text(stream, file_name, encoding=encoding, utf8_if_bom=utf8_if_bom) as (where, lines):
        yield from csv_rows(lines, where, header=header, skipinitialspace=skipinitialspace)
