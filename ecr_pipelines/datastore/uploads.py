"""The check of an uploaded CSV (the legacy's verify step) and its normalised copy for the load.

``check_csv`` streams the file once: it decodes it as UTF-8 (a leading BOM is dropped), applies
the legacy's header rules, checks that every row has the header's length, replaces the null
tokens and infers each column's type from the first rows; it returns an ``UploadCheck`` whose
``errors`` lists every problem found (kind + message). ``normalised_csv`` streams the same file
again as a comma-separated, double-quoted UTF-8 CSV with the checked header, for ``COPY ... CSV
HEADER``: in it an empty value (a null token included) is unquoted, which COPY reads as NULL.

Departures from the legacy, on purpose (the issue overrides the notes): an empty header cell
drops its column (and its values) instead of refusing the file; null tokens are replaced only as
whole values (the legacy replaced them inside values: ``NULLABLE`` became ``ABLE``); quoted values
keep their content (the legacy stripped ``""`` pairs before the load, corrupting escaped quotes).
Also on purpose: a malformed quote (``"ab"c``, or a quote never closed) is an error naming the
line instead of being silently repaired, blank lines are skipped, and a column name longer than
Postgres keeps (63 bytes) is an error rather than a silent truncation.
"""

import csv
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
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
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMERIC = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z?"
)
_BOOLEANS = frozenset({"true", "True", "TRUE", "1", "false", "False", "FALSE", "0"})
_LINE_END = re.compile(rb"\r\n?|\n")
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
_MAX_LISTED_LINES = 10
_CHUNK = 1 << 16


class Readable(Protocol):
    """A binary stream: a file, ``io.BytesIO``, a botocore ``StreamingBody``..."""

    def read(self, size: int = -1, /) -> bytes: ...


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
    """Read the whole file once (a record at a time) and report every problem found.

    An encoding or quoting error stops the reading (what follows cannot be trusted), so the
    row count and the types then cover the rows before it only."""
    _check_dialect(delimiter, quote)
    if infer_lines < 0:
        raise ValueError(f"infer_lines must be >= 0, not {infer_lines}")
    errors: list[Problem] = []
    notes: list[Problem] = []
    layout: _Layout | None = None
    sample: list[list[str]] = []
    guess: _TypeGuess | None = None
    rows = inferred = 0
    bad_rows: list[tuple[int, int]] = []
    bad_count = 0
    try:
        for line, row in _records(stream, delimiter, quote):
            if layout is None:
                layout = _Layout.from_header(row, errors, notes)
                guess = _TypeGuess(len(layout.kept))
                continue
            rows += 1
            if len(row) != layout.width:
                bad_count += 1
                if len(bad_rows) < _MAX_LISTED_LINES:
                    bad_rows.append((line, len(row)))
                continue
            cleaned = layout.clean(row)
            if len(sample) < SAMPLE_ROWS:
                sample.append(cleaned)
            if inferred < infer_lines:
                assert guess is not None
                guess.add(cleaned)
                inferred += 1
    except UploadError as exc:
        errors.extend(exc.problems)
    if layout is None:
        if not errors:
            errors.append(Problem(NO_HEADER, "the file is empty: its first line must hold the column names"))
        return UploadCheck([], [], [], 0, errors, notes, delimiter, quote)
    if bad_count:
        errors.append(Problem(ROW_LENGTH, _row_length_message(layout.width, bad_count, bad_rows)))
    if rows == 0 and not any(p.kind in (ENCODING, SYNTAX, NO_HEADER) for p in errors):
        errors.append(Problem(NO_DATA, "no data: the file has a header line and no row"))
    assert guess is not None
    return UploadCheck(
        columns=list(layout.names),
        types=guess.types(),
        sample=sample,
        rows=rows,
        errors=errors,
        notes=notes,
        delimiter=delimiter,
        quote=quote,
        source_columns=list(layout.source),
        kept=list(layout.kept),
        inferred_rows=inferred,
    )


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
    records = _records(stream, check.delimiter, check.quote)
    first = next(records, None)
    if first is None or first[1] != check.source_columns:
        raise UploadError([Problem(CHANGED, "the file's header is not the one checked")])
    width = len(check.source_columns)
    for line, row in records:
        if len(row) != width:
            message = f"line {line} has {len(row)} values, not {width}: the file is not the one checked"
            raise UploadError([Problem(CHANGED, message)])
        text = _csv_line([_null_to_empty(row[i]) for i in check.kept])
        lines.append(text)
        size += len(text)
        if size >= _CHUNK:
            yield "".join(lines).encode("utf-8")
            lines, size = [], 0
    if lines:
        yield "".join(lines).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Reading


def _check_dialect(delimiter: str, quote: str) -> None:
    for label, char in (("delimiter", delimiter), ("quote", quote)):
        if len(char) != 1 or char in "\r\n":
            raise ValueError(f"the {label} must be one character other than a line break, not {char!r}")
    if delimiter == quote:
        raise ValueError(f"the delimiter and the quote must differ (both are {delimiter!r})")


def _raw_lines(stream: Readable) -> Iterator[bytes]:
    """Physical lines with their ends (\\n, \\r\\n or a lone \\r, as editors count them), read in
    chunks: ``for line in stream`` is not usable, a botocore body iterates fixed-size chunks."""
    pieces: list[bytes] = []
    held_cr = False  # the last chunk ended with \r: its line ends there unless \n follows
    while chunk := stream.read(_CHUNK):
        start = 0
        if held_cr:
            if chunk.startswith(b"\n"):
                pieces.append(b"\n")
                start = 1
            yield b"".join(pieces)
            pieces, held_cr = [], False
        for match in _LINE_END.finditer(chunk, start):
            if match.end() == len(chunk) and chunk.endswith(b"\r"):
                break  # maybe the first half of \r\n
            pieces.append(chunk[start : match.end()])
            yield b"".join(pieces)
            pieces, start = [], match.end()
        if start < len(chunk):
            pieces.append(chunk[start:])
            held_cr = chunk.endswith(b"\r")
    if pieces:
        yield b"".join(pieces)


def _text_lines(stream: Readable, numbers: list[int]) -> Iterator[str]:
    """Decoded lines; ``numbers[0]`` is kept at the number of the last line given out, since
    the csv module's own count is only known after a whole record."""
    for number, raw in enumerate(_raw_lines(stream), 1):
        numbers[0] = number
        if number == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                message = "the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"
                raise UploadError([Problem(ENCODING, message)])
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = (
                f"line {number} is not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of "
                "the line): save the file as UTF-8"
            )
            raise UploadError([Problem(ENCODING, message)]) from None
        if "\x00" in text:
            message = f"line {number} holds a NUL character, which Postgres cannot store: is the file text?"
            raise UploadError([Problem(ENCODING, message)])
        yield text


def _records(stream: Readable, delimiter: str, quote: str) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, values) of every non-blank record."""
    numbers = [0]
    # strict: "ab"c and a quote never closed are errors; the non-strict reader silently glues
    # or swallows the rest of the file, which COPY would then load.
    reader = csv.reader(_text_lines(stream, numbers), delimiter=delimiter, quotechar=quote, strict=True)
    while True:
        start = numbers[0] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if str(exc) == "unexpected end of data":
                message = f"line {start}: a quoted value starting on this line is never closed"
            else:
                message = (
                    f"line {numbers[0]}: the CSV cannot be read ({exc}); a value holding the delimiter "
                    f"{delimiter!r} or a line break must be quoted with {quote!r}, and a {quote!r} "
                    f"inside a quoted value doubled"
                )
            raise UploadError([Problem(SYNTAX, message)]) from None
        if row:  # csv gives [] for a blank line; a value "" gives [""]
            yield start, row


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
        return [_null_to_empty(row[i]) for i in self.kept]


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


def _null_to_empty(value: str) -> str:
    return "" if value in NULL_TOKENS else value


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


def _is_integer(value: str) -> bool:
    return _INTEGER.fullmatch(value) is not None and _BIGINT_MIN <= int(value) <= _BIGINT_MAX


def _is_numeric(value: str) -> bool:
    return _NUMERIC.fullmatch(value) is not None


def _is_boolean(value: str) -> bool:
    return value in _BOOLEANS


def _is_date(value: str) -> bool:
    match = _DATE.fullmatch(value)
    if match is None:
        return False
    try:
        date(*map(int, match.groups()))
    except ValueError:
        return False
    return True


def _is_timestamp(value: str) -> bool:
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return False
    try:
        datetime(*map(int, match.groups()[:6]))
    except ValueError:
        return False
    return True


_TESTS = (
    ("timestamp", _is_timestamp),
    ("date", _is_date),
    ("integer", _is_integer),
    ("numeric", _is_numeric),
    ("boolean", _is_boolean),
)


class _TypeGuess:
    def __init__(self, width: int) -> None:
        self._candidates = [list(_TESTS) for _ in range(width)]
        self._decided = [False] * width  # an empty value does not decide

    def add(self, row: list[str]) -> None:
        for index, value in enumerate(row):
            if value == "":
                continue
            self._decided[index] = True
            candidates = self._candidates[index]
            if candidates:
                self._candidates[index] = [c for c in candidates if c[1](value)]

    def types(self) -> list[str]:
        return [
            candidates[0][0] if decided and candidates else "text"
            for candidates, decided in zip(self._candidates, self._decided, strict=True)
        ]


# ---------------------------------------------------------------------------------------------
# Writing


def _csv_line(values: Sequence[str]) -> str:
    return ",".join(_csv_field(v) for v in values) + "\n"


def _csv_field(value: str) -> str:
    # An empty value stays unquoted (NULL for COPY); "\." alone is COPY's end-of-data marker.
    if _NEEDS_QUOTES.search(value) or value == "\\.":
        return '"' + value.replace('"', '""') + '"'
    return value
