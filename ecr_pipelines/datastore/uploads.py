"""The check of an uploaded CSV (the legacy's verify step) and its normalised copy for the load.

``check_csv`` streams the file once: it decodes it as UTF-8 (a leading BOM is dropped), applies
the legacy's header rules, checks that every row has the header's length, replaces the null
tokens and infers each column's type from the first rows; it returns an ``UploadCheck`` whose
``errors`` lists every problem found (kind + message). ``normalised_csv`` streams the same file
again as a comma-separated, double-quoted UTF-8 CSV with the checked header, for ``COPY ... CSV
HEADER``: in it an empty value (a null token included) is unquoted, which COPY reads as NULL.
``csv_reader`` is the reading both use (and the load stage's): the file checked as UTF-8 in blocks
of whole lines, then the csv module's strict reader.

Departures from the legacy, on purpose (the issue overrides the notes): an empty header cell
drops its column (and its values) instead of refusing the file; null tokens are replaced only as
whole values (the legacy replaced them inside values: ``NULLABLE`` became ``ABLE``); quoted values
keep their content (the legacy stripped ``""`` pairs before the load, corrupting escaped quotes).
Also on purpose: a malformed quote (``"ab"c``, or a quote never closed) is an error naming the
line instead of being silently repaired, blank lines are skipped, and a column name longer than
Postgres keeps (63 bytes) is an error rather than a silent truncation.

Speed (``benchmarks/datastore_load.py``, 1,000,000 rows x 20 columns, 280 MB): the csv module
alone takes some 4 s to split such a file into values, and Python code per row or per value as
long again, so ``check_csv`` works on blocks of lines (about 64 KiB) where it can. The csv module
reads the header, the rows up to the sample's last one, and any block that is not plainly
regular; ``_FastRead`` takes the others. In a block where every line without a quote character
holds exactly ``width - 1`` delimiters, and every line with one is, read alone by the csv module,
a whole record of ``width`` values, each line is one such record whichever way it is read: its
rows are counted from its structure, and while the types are inferred its lines without a quote
are split with ``str.split``. Anything else (a blank line, a row of another length, a value
spanning lines, a quoting error, a lone ``\\r`` line end) sends the block to the csv module,
which reports what it always did, on the same lines. Types are inferred a few thousand rows at a
time: one regular expression per column and type, over the column's values joined by \\n.
"""

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Protocol

from ecr_pipelines.lib.settings import env_str

DEFAULT_INFER_LINES = 100_000
SAMPLE_ROWS = 4
# The legacy's values meaning "no value"; they become NULL in the table.
NULL_TOKENS = frozenset({"NULL", "None", "N/A", ""})
# The columns the loading pipeline adds to every upload table.
RESERVED_NAMES = ("id", "datafile_created", "data_source_row_id")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
# Postgres truncates longer identifiers, which could merge two columns without a word.
MAX_NAME_BYTES = 63

# The type names of an upload's columns (the verification job's run config) and their Postgres
# types. ``integer`` is bigint: the legacy's 32-bit integer refused ordinary values such as
# 10-digit phone numbers or ids only after the user had confirmed the types; larger integers
# are inferred as numeric.
COLUMN_TYPES: dict[str, str] = {
    "integer": "bigint",
    "numeric": "numeric",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamp",
    "text": "text",
}

# Problem kinds (UploadCheck.errors)
ENCODING = "encoding"  # not UTF-8, UTF-16, or a NUL character
SYNTAX = "syntax"  # the csv module cannot read a record (bad quoting)
NO_HEADER = "no_header"  # an empty file, or a first line of empty cells
INVALID_NAME = "invalid_name"  # a column name outside ^[a-z][a-z0-9_]*$
RESERVED_NAME = "reserved_name"  # id, datafile_created, data_source_row_id
LONG_NAME = "long_name"  # over 63 bytes (after the duplicates' suffixes)
ROW_LENGTH = "row_length"  # a row without the header's number of values
NO_DATA = "no_data"  # a header and no row
CHANGED = "changed"  # normalised_csv: the file is not the one checked
# Note kinds (UploadCheck.notes): not errors, but what the user should see before confirming.
DROPPED_COLUMN = "dropped_column"
RENAMED_COLUMN = "renamed_column"

_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1
_MAX_LISTED_LINES = 10
_CHUNK = 1 << 16
# Rows whose types are inferred together: enough for the per-batch work to be small beside the
# regular expressions' own, few enough to keep in memory.
_INFER_BATCH = 4096
# A null token maps to "", any other value to itself (``map(_NULLS.get, values, values)``).
_NULLS = dict.fromkeys(NULL_TOKENS, "")
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Readable(Protocol):
    """A binary stream: a file, ``io.BytesIO``, a botocore ``StreamingBody``..."""

    def read(self, size: int = -1, /) -> bytes: ...


class Records(Protocol):
    """What ``csv_reader`` returns: the csv module's reader (its rows, and ``line_num``, the
    number of lines read so far)."""

    @property
    def line_num(self) -> int: ...

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str


class UploadError(ValueError):
    """The file cannot be read (``normalised_csv``) or was refused; ``problems`` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.message for p in self.problems))


@dataclass
class UploadCheck:
    """What ``check_csv`` found. ``columns``/``types`` are the table's columns (the file's order,
    dropped columns left out); ``sample`` is the first rows of the right length as the table
    would get them (null tokens as ""); ``rows`` counts every data row of the file, ``inferred_rows`` those the types
    come from. ``source_columns`` (the header as written) and ``kept`` (positions in it of the
    kept columns) let ``normalised_csv`` apply the same fixes."""

    columns: list[str]
    types: list[str]
    sample: list[list[str]]
    rows: int
    errors: list[Problem]
    notes: list[Problem] = field(default_factory=list)
    delimiter: str = ","
    quote: str = '"'
    source_columns: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    inferred_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def describe(self) -> list[dict[str, object]]:
        """Per column: name, type and its values in the sample rows (the command's JSON)."""
        return [
            {"name": name, "type": kind, "sample": [row[index] for row in self.sample]}
            for index, (name, kind) in enumerate(zip(self.columns, self.types, strict=True))
        ]


def infer_lines_setting() -> int:
    """``CSV_SAMPLE_INFER_LINES`` (the legacy's setting of the same name), else 100000."""
    raw = env_str("CSV_SAMPLE_INFER_LINES")
    if raw is None:
        return DEFAULT_INFER_LINES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"CSV_SAMPLE_INFER_LINES must be a whole number >= 0, not {raw!r}")
    return value


def check_csv(
    stream: Readable,
    *,
    delimiter: str = ",",
    quote: str = '"',
    infer_lines: int = DEFAULT_INFER_LINES,
) -> UploadCheck:
    """Read the whole file once (a block of lines at a time) and report every problem found.

    An encoding or quoting error stops the reading (what follows cannot be trusted), so the
    row count and the types then cover the rows before it only."""
    _check_dialect(delimiter, quote)
    if infer_lines < 0:
        raise ValueError(f"infer_lines must be >= 0, not {infer_lines}")
    scan = _Scan(delimiter, quote, infer_lines)
    scan.run(stream)
    return scan.result()


def normalised_csv(stream: Readable, check: UploadCheck, *, header: bool = True) -> Iterator[bytes]:
    """The checked file again, as UTF-8 CSV (``,`` and ``"``, ``\\n`` line ends) with the
    checked header, the dropped columns left out and null tokens as unquoted empty values (NULL
    for COPY); chunks of about 64 KiB. ``stream`` must be the file that ``check`` describes:
    a different header or row length raises ``UploadError`` (kind ``changed``)."""
    if not check.ok:
        raise UploadError(check.errors)
    lines: list[str] = []
    size = 0
    if header:
        lines.append(_csv_line(check.columns))
    records = _records(csv_reader(stream, check.delimiter, check.quote), check.delimiter, check.quote)
    first = next(records, None)
    if first is None or first[1] != check.source_columns:
        raise UploadError([Problem(CHANGED, "the file's header is not the one checked")])
    width = len(check.source_columns)
    kept = None if check.kept == list(range(width)) else check.kept
    commas = len(check.kept) - 1
    for line, row in records:
        if len(row) != width:
            message = f"line {line} has {len(row)} values, not {width}: the file is not the one checked"
            raise UploadError([Problem(CHANGED, message)])
        values = row if kept is None else [row[index] for index in kept]
        text = ",".join(map(_NULLS.get, values, values))
        # Values rarely need quotes: the joined line is looked at once, and only a line where
        # one might is written value by value (a value holding a comma adds one to the count).
        if '"' in text or "\n" in text or "\r" in text or "\\." in text or text.count(",") != commas:
            text = _csv_line(list(map(_NULLS.get, values, values)))
        else:
            text += "\n"
        lines.append(text)
        size += len(text)
        if size >= _CHUNK:
            yield "".join(lines).encode("utf-8")
            lines, size = [], 0
    if lines:
        yield "".join(lines).encode("utf-8")


def csv_reader(stream: Readable, delimiter: str, quote: str) -> Records:
    """The file's records as ``check_csv`` reads them (the load stage's too): the lines of
    ``_blocks`` (UTF-8, a BOM dropped, no NUL; an encoding problem raises ``UploadError`` naming
    its line), read by the csv module's strict reader (``"ab"c`` and a quote never closed are
    errors: the non-strict reader silently glues or swallows the rest of the file, which COPY
    would then load). A blank line gives ``[]``; ``line_num`` counts lines as ``check_csv`` does."""
    reader: Records | None = None
    blocks = _blocks(stream, lambda: reader.line_num if reader is not None else 0)
    reader = _csv_reader(_lines(blocks), delimiter, quote)
    return reader


# ---------------------------------------------------------------------------------------------
# Reading


def _check_dialect(delimiter: str, quote: str) -> None:
    for label, char in (("delimiter", delimiter), ("quote", quote)):
        if len(char) != 1 or char in "\r\n":
            raise ValueError(f"the {label} must be one character other than a line break, not {char!r}")
    if delimiter == quote:
        raise ValueError(f"the delimiter and the quote must differ (both are {delimiter!r})")


def _csv_reader(lines: Iterable[str], delimiter: str, quote: str) -> Records:
    return csv.reader(lines, delimiter=delimiter, quotechar=quote, strict=True)


def _lines(blocks: Iterable[bytes]) -> Iterator[str]:
    """The lines of checked blocks, with their ends, for the csv module. ``bytes.splitlines``
    splits at \\n, \\r\\n and \\r only (``str.splitlines`` also at \\x0b, \\x1c, \\u2028...), and a
    checked block decodes line by line, its lines ending in ASCII."""
    return map(bytes.decode, chain.from_iterable(map(bytes.splitlines, blocks, repeat(True))))


def _blocks(stream: Readable, lines_before: Callable[[], int]) -> Iterator[bytes]:
    """The file's bytes in blocks of whole lines (about 64 KiB, more for a longer line), checked:
    UTF-8 (a leading BOM dropped, a UTF-16 one refused) without NUL. Lines end in \\n, \\r\\n or a
    lone \\r, as editors count them; a block never ends between the \\r and the \\n of a \\r\\n,
    so each block's lines are the file's. The stream is only ``read``: ``for line in stream`` is
    not usable, a botocore body iterates fixed-size chunks.

    At a problem, the block's lines before it are given out, then ``UploadError`` naming the line
    is raised when the next block is asked for, so the caller has read every line before the
    problem's: ``lines_before()`` is their count (the caller counts lines anyway; counting them
    here too would be another pass over every byte)."""
    head = b""
    while len(head) < len(_UTF8_BOM) and (piece := stream.read(_CHUNK)):
        head += piece
    if head.startswith(_UTF16_BOMS):
        message = "the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"
        raise UploadError([Problem(ENCODING, message)])
    held = [head.removeprefix(_UTF8_BOM)]  # the start of a line not ended yet
    while True:
        chunk = stream.read(_CHUNK)
        if chunk:
            end = len(chunk) - 1 if chunk.endswith(b"\r") else len(chunk)  # maybe half of \r\n
            cut = max(chunk.rfind(b"\n", 0, end), chunk.rfind(b"\r", 0, end)) + 1
            if not cut:
                held.append(chunk)
                continue
            held.append(chunk[:cut])
            block = b"".join(held)
            held = [chunk[cut:]]
        else:
            block = b"".join(held)
        if block:
            yield from _checked(block, lines_before)
        if not chunk:
            return


def _checked(block: bytes, lines_before: Callable[[], int]) -> Iterator[bytes]:
    """``block``; or its lines before the first line that is not UTF-8 or holds a NUL, then
    ``UploadError``. The block is decoded whole only if it is not ASCII: its lines end in ASCII,
    so the first undecodable byte is the one decoding the line alone finds."""
    undecodable = -1
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as exc:
            undecodable = exc.start
    nul = block.find(b"\x00")
    if undecodable < 0 and nul < 0:
        yield block
        return
    # As the line-by-line reading did: a line is decoded before it is looked at for NUL.
    if undecodable >= 0 and (nul < 0 or _line_start(block, undecodable) <= _line_start(block, nul)):
        start = _line_start(block, undecodable)
        if start:
            yield block[:start]
        message = (
            f"line {lines_before() + 1} is not UTF-8 (byte 0x{block[undecodable]:02x} at byte "
            f"{undecodable - start + 1} of the line): save the file as UTF-8"
        )
    else:
        start = _line_start(block, nul)
        if start:
            yield block[:start]
        message = (
            f"line {lines_before() + 1} holds a NUL character, which Postgres cannot store: is the file text?"
        )
    raise UploadError([Problem(ENCODING, message)])


def _line_start(block: bytes, at: int) -> int:
    return max(block.rfind(b"\n", 0, at), block.rfind(b"\r", 0, at)) + 1


def _syntax_error(error: csv.Error, start: int, line: int, delimiter: str, quote: str) -> UploadError:
    """The csv module's error in the record starting on line ``start``, read up to line ``line``."""
    if str(error) == "unexpected end of data":
        message = f"line {start}: a quoted value starting on this line is never closed"
    else:
        message = (
            f"line {line}: the CSV cannot be read ({error}); a value holding the delimiter "
            f"{delimiter!r} or a line break must be quoted with {quote!r}, and a {quote!r} "
            f"inside a quoted value doubled"
        )
    return UploadError([Problem(SYNTAX, message)])


def _records(reader: Records, delimiter: str, quote: str) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, values) of every non-blank record."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _syntax_error(exc, start, reader.line_num, delimiter, quote) from None
        if row:  # csv gives [] for a blank line; a value "" gives [""]
            yield start, row


class _Scan:
    """``check_csv``'s reading of one file. The csv module reads the header, the records up to
    the sample's last one, and any block ``_FastRead`` does not take; from a record ending where
    a block ends, ``_FastRead`` takes the blocks that follow (counting their rows, and giving
    their values to the types while rows are inferred) as long as they are plainly regular."""

    def __init__(self, delimiter: str, quote: str, infer_lines: int) -> None:
        self.delimiter, self.quote, self.infer_lines = delimiter, quote, infer_lines
        self.errors: list[Problem] = []
        self.notes: list[Problem] = []
        self.layout: _Layout | None = None
        self.guess: _TypeGuess | None = None
        self.fast: _FastRead | None = None
        self.sample: list[list[str]] = []
        self.rows = self.inferred = 0
        self.bad_rows: list[tuple[int, int]] = []
        self.bad_count = 0
        self.blocks: Iterator[bytes] = iter(())
        self.reader: Records | None = None  # the csv module's, while it reads
        self.base = 0  # lines read before the csv reader's first line, or by _FastRead
        self.fed = 0  # lines given to the csv reader so far

    def lines_read(self) -> int:
        return self.base + (self.reader.line_num if self.reader is not None else 0)

    def run(self, stream: Readable) -> None:
        self.blocks = _blocks(stream, self.lines_read)
        try:
            block = None
            while self._read_records(block):
                block = self._read_blocks()
                if block is None:
                    break
        except UploadError as exc:
            self.errors.extend(exc.problems)

    def _line_lists(self, blocks: Iterable[bytes]) -> Iterator[list[bytes]]:
        for block in blocks:
            lines = block.splitlines(True)
            self.fed += len(lines)
            yield lines

    def _read_records(self, first: bytes | None) -> bool:
        """Read records with the csv module, from ``first`` (a block) and the blocks after it:
        to the end of the file (False), or, once the sample is taken, to a record ending where a
        block ends, if ``_FastRead`` can take the blocks after it (True)."""
        blocks = self.blocks if first is None else chain((first,), self.blocks)
        lines = map(bytes.decode, chain.from_iterable(self._line_lists(blocks)))
        reader = _csv_reader(lines, self.delimiter, self.quote)
        self.reader, self.fed, last = reader, 0, 0
        try:
            if self.layout is None:
                for row in reader:
                    last = reader.line_num
                    if row:
                        self._header(row)
                        break
                else:
                    return False
            assert self.layout is not None
            width, fast = self.layout.width, self.fast
            for row in reader:
                if len(row) == width:
                    self.rows += 1
                    if self.inferred < self.infer_lines or len(self.sample) < SAMPLE_ROWS:
                        self._collect(row)
                elif row:
                    self.rows += 1
                    self._bad_row(self.base + last + 1, len(row))
                last = reader.line_num
                if last == self.fed and fast is not None and len(self.sample) == SAMPLE_ROWS:
                    self.base += last
                    self.reader = None
                    return True
        except csv.Error as exc:
            start = self.base + last + 1
            raise _syntax_error(exc, start, self.base + reader.line_num, self.delimiter, self.quote) from None
        return False

    def _read_blocks(self) -> bytes | None:
        """Take the next blocks with ``_FastRead`` while they are plainly regular; returns the
        first block that is not, for the csv module, or None at the end of the file."""
        assert self.fast is not None
        for block in self.blocks:
            room = self.infer_lines - self.inferred
            # A block holding the last inferred row goes to the csv module, which stops there.
            rows = self.fast.rows(block, self.guess, room) if room else self.fast.rows(block)
            if rows is None:
                return block
            if room:
                self.inferred += rows
            self.rows += rows
            self.base += rows  # one line per row
        return None

    def _header(self, row: list[str]) -> None:
        self.layout = _Layout.from_header(row, self.errors, self.notes)
        self.guess = _TypeGuess(self.layout.kept, self.layout.width)
        self.fast = _FastRead.create(self.delimiter, self.quote, self.layout.width)

    def _collect(self, row: list[str]) -> None:
        """Take a row of the header's length for the sample and the types."""
        assert self.layout is not None and self.guess is not None
        if len(self.sample) < SAMPLE_ROWS:
            self.sample.append(self.layout.clean(row))
        if self.inferred < self.infer_lines:
            self.guess.add(row)
            self.inferred += 1

    def _bad_row(self, line: int, length: int) -> None:
        self.bad_count += 1
        if len(self.bad_rows) < _MAX_LISTED_LINES:
            self.bad_rows.append((line, length))

    def result(self) -> UploadCheck:
        errors, layout = self.errors, self.layout
        if layout is None:
            if not errors:
                errors.append(
                    Problem(NO_HEADER, "the file is empty: its first line must hold the column names")
                )
            return UploadCheck([], [], [], 0, errors, self.notes, self.delimiter, self.quote)
        if self.bad_count:
            errors.append(
                Problem(ROW_LENGTH, _row_length_message(layout.width, self.bad_count, self.bad_rows))
            )
        if self.rows == 0 and not any(p.kind in (ENCODING, SYNTAX, NO_HEADER) for p in errors):
            errors.append(Problem(NO_DATA, "no data: the file has a header line and no row"))
        assert self.guess is not None
        return UploadCheck(
            columns=list(layout.names),
            types=self.guess.types(),
            sample=self.sample,
            rows=self.rows,
            errors=errors,
            notes=self.notes,
            delimiter=self.delimiter,
            quote=self.quote,
            source_columns=list(layout.source),
            kept=list(layout.kept),
            inferred_rows=self.inferred,
        )


class _FastRead:
    """A block of whole lines read without the csv module, if it is plainly regular: no blank
    line, no lone \\r line end, every line without a quote character holds exactly ``width - 1``
    delimiters, and every line with one, read by the csv module on its own, is a whole record of
    ``width`` values. Read from the start of a record, such a block is then one record of
    ``width`` values per line for the csv module too, without an error: it splits a line without
    a quote at its delimiters only (``str.split`` gives the same values), and, the lines with a
    quote being read in a row, one that opened a value spanning lines would have taken the next
    one in (or raised at the end). ``rows`` returns None for any other block."""

    def __init__(self, delimiter: str, quote: str, width: int) -> None:
        self._delimiter, self._quote, self._width = delimiter, quote, width
        self._quote_byte = quote.encode()
        self._plain = delimiter.encode() * (width - 1)
        # What translate() deletes: all but the delimiter, the quote and \n, which leaves each
        # line's structure (a \r can only be part of \r\n here).
        self._noise = bytes(sorted(set(range(256)) - set(f"{delimiter}{quote}\n".encode())))
        # No value in a block this long can be longer than the csv module allows (the limit
        # counts characters, which are no more than bytes).
        self._limit = csv.field_size_limit()

    @classmethod
    def create(cls, delimiter: str, quote: str, width: int) -> "_FastRead | None":
        # A multi-byte delimiter or quote is not one byte of the structure; with one column, a
        # blank line and a row look the same.
        if width < 2 or not (delimiter.isascii() and quote.isascii()):
            return None
        return cls(delimiter, quote, width)

    def rows(self, block: bytes, guess: "_TypeGuess | None" = None, room: int = 0) -> int | None:
        """The block's number of rows, None if it is not plainly regular. With ``guess``, the
        rows' values are added to it (row after row, the lines with a quote last: the order of
        the rows does not change a type), unless the block has more than ``room`` rows (then
        None too)."""
        if len(block) > self._limit:
            return None
        if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
            return None
        lines = block.translate(None, self._noise).split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()  # the nothing after the last line end
        count = len(lines)
        plain = lines.count(self._plain)
        spans = [] if plain == count else _spans_holding(block, self._quote_byte)
        # The other lines must all hold a quote (a plain line never does).
        if plain + len(spans) != count:
            return None
        quoted: list[list[str]] = []
        if spans:
            lines_quoted = (block[start:end].decode() for start, end in spans)
            try:
                quoted = list(_csv_reader(lines_quoted, self._delimiter, self._quote))
            except csv.Error:
                return None
            if len(quoted) != len(spans) or list(map(len, quoted)).count(self._width) != len(spans):
                return None
        if guess is not None:
            if count > room:
                return None
            values = _split_lines(_without(block, spans).decode(), self._delimiter)
            # Always so in a plainly regular block; misplaced values would go unseen in the types.
            if len(values) != (count - len(spans)) * self._width:
                return None
            guess.add(values)
            guess.add(chain.from_iterable(quoted))
        return count


def _spans_holding(block: bytes, char: bytes) -> list[tuple[int, int]]:
    """Where the lines of ``block`` that hold ``char`` start and end; its lines end in \\n."""
    found = []
    at = block.find(char)
    while at >= 0:
        start = block.rfind(b"\n", 0, at) + 1
        end = block.find(b"\n", at) + 1 or len(block)
        found.append((start, end))
        at = block.find(char, end)
    return found


def _without(block: bytes, spans: list[tuple[int, int]]) -> bytes:
    if not spans:
        return block
    pieces, at = [], 0
    for start, end in spans:
        pieces.append(block[at:start])
        at = end
    pieces.append(block[at:])
    return b"".join(pieces)


def _split_lines(text: str, delimiter: str) -> list[str]:
    """The values of lines without a quote, row after row: each line split at the delimiter."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    text = text.removesuffix("\n")
    return text.replace("\n", delimiter).split(delimiter) if text else []


# ---------------------------------------------------------------------------------------------
# Header


@dataclass(frozen=True)
class _Layout:
    source: list[str]  # the header as written
    kept: list[int]  # positions of the columns kept (those with a name)
    names: list[str]  # their names, duplicates renamed

    @property
    def width(self) -> int:
        return len(self.source)

    @classmethod
    def from_header(cls, header: list[str], errors: list[Problem], notes: list[Problem]) -> "_Layout":
        kept = [i for i, name in enumerate(header) if name != ""]
        dropped = [i + 1 for i, name in enumerate(header) if name == ""]
        if dropped:
            positions = ", ".join(map(str, dropped))
            noun = "column" if len(dropped) == 1 else "columns"
            notes.append(
                Problem(DROPPED_COLUMN, f"{noun} {positions} without a name left out (with their values)")
            )
        original = [header[i] for i in kept]
        if not original:
            errors.append(Problem(NO_HEADER, "the first line holds no column name"))
            return cls(list(header), [], [])
        invalid = _unique(n for n in original if not NAME_PATTERN.fullmatch(n))
        if invalid:
            errors.append(
                Problem(
                    INVALID_NAME,
                    "column names must start with a lower-case letter and hold only lower-case letters, "
                    f"digits and underscores; invalid: {_quoted(invalid)}",
                )
            )
        reserved = [n for n in RESERVED_NAMES if n in original]
        if reserved:
            errors.append(
                Problem(
                    RESERVED_NAME,
                    f"reserved column {'name' if len(reserved) == 1 else 'names'} {_quoted(reserved)}: "
                    f"the data store adds the columns {', '.join(RESERVED_NAMES)} itself; rename them",
                )
            )
        names = unique_names(original)
        renamed = [f'"{a}" → "{b}"' for a, b in zip(original, names, strict=True) if a != b]
        if renamed:
            notes.append(Problem(RENAMED_COLUMN, f"repeated column names renamed: {', '.join(renamed)}"))
        long = _unique(n for n in names if len(n.encode("utf-8")) > MAX_NAME_BYTES)
        if long:
            errors.append(
                Problem(
                    LONG_NAME,
                    f"column names longer than Postgres keeps ({MAX_NAME_BYTES} bytes): {_quoted(long)}",
                )
            )
        return cls(list(header), kept, names)

    def clean(self, row: list[str]) -> list[str]:
        values = [row[i] for i in self.kept]
        return list(map(_NULLS.get, values, values))


def unique_names(names: Sequence[str]) -> list[str]:
    """The legacy's renaming of repeated names, as we read it from the notes ("duplicates renamed
    h_1, h_2"): EVERY occurrence of a repeated name gets a suffix, the first ``_1``, the second
    ``_2`` (left to right), the first one is not kept as it is. A new name can collide with
    another column (``a, a, a_1`` → ``a_1, a_2, a_1``), so the renaming is repeated until the
    names are distinct (→ ``a_1_1, a_2, a_1_2``)."""
    current = list(names)
    while len(set(current)) != len(current):
        totals: dict[str, int] = {}
        for name in current:
            totals[name] = totals.get(name, 0) + 1
        seen: dict[str, int] = {}
        renamed = []
        for name in current:
            if totals[name] > 1:
                seen[name] = seen.get(name, 0) + 1
                renamed.append(f"{name}_{seen[name]}")
            else:
                renamed.append(name)
        current = renamed
    return current


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _row_length_message(width: int, count: int, listed: list[tuple[int, int]]) -> str:
    where = ", ".join(f"line {line} has {length}" for line, length in listed)
    more = f" (the first {len(listed)} listed)" if count > len(listed) else ""
    rows = "1 row does" if count == 1 else f"{count} rows do"
    return f"{rows} not have the header's {width} values{more}: {where}"


# ---------------------------------------------------------------------------------------------
# Type inference
#
# The legacy used tableschema's ``Schema.infer(confidence=1)``: a column gets the first type, in
# the order datetime, time, date, integer, number, boolean, that EVERY non-empty value of it can
# be read as, else string; its mapping made time (and all other types) text. tableschema is
# unmaintained (replaced by frictionless, a large framework) and its readers are looser than
# Postgres (int() takes "1_000" and "٣", Decimal takes "NaN" and drops inner spaces), so this is
# a small rewrite of that rule with each type's values restricted to what the Postgres type
# reads back unchanged. Accepted spellings (no surrounding spaces):
#   timestamp  YYYY-MM-DDTHH:MM:SS, also with a space for T, .f to .ffffff and a final Z
#              (tableschema's default is exactly YYYY-MM-DDTHH:MM:SSZ); a real date and time
#   date       YYYY-MM-DD (tableschema's default), a real date
#   integer    [+-]digits within bigint; leading zeros allowed (as tableschema)
#   numeric    [+-]digits[.digits][e[+-]digits], also "1." and ".5"; no NaN or Infinity
#   boolean    true True TRUE 1 false False FALSE 0 (tableschema's trueValues/falseValues), so a
#              column of 0 and 1 is integer (first in the order) and one of 0, 1, true is boolean
#
# A column keeps the types all its values so far can be read as. The values are looked at a
# batch of rows at a time: each type's test is one regular expression over a column's values
# joined by \n (which no type's spelling holds), a null token passing as any type (it does not
# decide). So the "real date" is in the pattern itself rather than asked of ``datetime.date``
# value by value: the days each month has, and 29 February in leap years (divisible by 4,
# centuries by 400; there is no year 0 for Python's date either).

_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_DATE = rf"(?:(?!0000)[0-9]{{4}}-{_DAY}|{_LEAP_YEAR}-02-29)"
_TIMESTAMP = rf"{_DATE}[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{{1,6}})?Z?"
_INTEGER = r"[+-]?[0-9]+"
_SHORT_INTEGER = r"[+-]?[0-9]{1,18}"  # within bigint whatever its digits
_NUMERIC = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_BOOLEAN = "true|True|TRUE|1|false|False|FALSE|0"
_NULL = "|".join(sorted(map(re.escape, NULL_TOKENS), reverse=True))  # "" last


def _lines_of(pattern: str) -> "re.Pattern[str]":
    """Lines (joined by \\n) each of which is ``pattern`` or a null token."""
    line = f"(?:{pattern}|{_NULL})"
    return re.compile(rf"{line}(?:\n{line})*")


_ONLY_NULLS = re.compile(rf"(?:{_NULL})(?:\n(?:{_NULL}))*")
_TIMESTAMPS = _lines_of(_TIMESTAMP)
_DATES = _lines_of(_DATE)
_SHORT_INTEGERS = _lines_of(_SHORT_INTEGER)
_INTEGER_VALUE = re.compile(_INTEGER)
_NUMERICS = _lines_of(_NUMERIC)
_BOOLEANS = _lines_of(_BOOLEAN)


def _are_timestamps(values: list[str], joined: str) -> bool:
    return _TIMESTAMPS.fullmatch(joined) is not None


def _are_dates(values: list[str], joined: str) -> bool:
    return _DATES.fullmatch(joined) is not None


def _are_integers(values: list[str], joined: str) -> bool:
    if _SHORT_INTEGERS.fullmatch(joined) is not None:
        return True
    # Longer ones (or leading zeros) are read to see if they fit; the rest fails at once.
    return all(
        value in NULL_TOKENS
        or (_INTEGER_VALUE.fullmatch(value) is not None and _BIGINT_MIN <= int(value) <= _BIGINT_MAX)
        for value in values
    )


def _are_numerics(values: list[str], joined: str) -> bool:
    return _NUMERICS.fullmatch(joined) is not None


def _are_booleans(values: list[str], joined: str) -> bool:
    return _BOOLEANS.fullmatch(joined) is not None


_Test = tuple[str, Callable[[list[str], str], bool]]
_TESTS: tuple[_Test, ...] = (
    ("timestamp", _are_timestamps),
    ("date", _are_dates),
    ("integer", _are_integers),
    ("numeric", _are_numerics),
    ("boolean", _are_booleans),
)


class _TypeGuess:
    def __init__(self, kept: list[int], width: int) -> None:
        self._kept, self._width = kept, width
        self._candidates = [list(_TESTS) for _ in kept]
        self._decided = [False] * len(kept)  # a null token does not decide
        self._waiting: list[str] = []  # values of rows not looked at yet, row after row

    def add(self, values: Iterable[str]) -> None:
        """The values of rows of the file (all its columns, row after row)."""
        self._waiting += values
        if len(self._waiting) >= _INFER_BATCH * self._width:
            self._look()

    def _look(self) -> None:
        if not self._waiting:
            return
        values, self._waiting = self._waiting, []
        for position, index in enumerate(self._kept):
            candidates = self._candidates[position]
            if not candidates and self._decided[position]:
                continue  # text whatever follows
            # A column is a slice: zip(*rows) would make an iterator per row (the garbage
            # collector's runs then cost more than the rest), a set of the distinct values
            # would hash each of them.
            column = values[index :: self._width]
            joined = "\n".join(column)
            if joined.count("\n") != len(column) - 1:
                # A value holding a line break is not a null token, nor any type's spelling.
                self._decided[position] = True
                self._candidates[position] = []
                continue
            if not self._decided[position]:
                if _ONLY_NULLS.fullmatch(joined) is not None:
                    continue
                self._decided[position] = True
            self._candidates[position] = _passing(candidates, column, joined)

    def types(self) -> list[str]:
        self._look()
        return [
            candidates[0][0] if decided and candidates else "text"
            for candidates, decided in zip(self._candidates, self._decided, strict=True)
        ]


def _passing(candidates: list[_Test], column: list[str], joined: str) -> list[_Test]:
    """The candidates every value of ``column`` (``joined`` by \\n) can be read as."""
    passing: list[_Test] = []
    for candidate in candidates:
        # Every integer is a numeric: no need to look again.
        implied = candidate[0] == "numeric" and bool(passing) and passing[-1][0] == "integer"
        if implied or candidate[1](column, joined):
            passing.append(candidate)
    return passing


# ---------------------------------------------------------------------------------------------
# Writing

_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def _csv_line(values: Sequence[str]) -> str:
    return ",".join(_csv_field(v) for v in values) + "\n"


def _csv_field(value: str) -> str:
    # An empty value stays unquoted (NULL for COPY); "\." alone is COPY's end-of-data marker.
    if _NEEDS_QUOTES.search(value) or value == "\\.":
        return '"' + value.replace('"', '""') + '"'
    return value
