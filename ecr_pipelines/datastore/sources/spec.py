"""What every source of the data store is, as data (``SourceSpec``), and what its reader hands
back (``FileRows``): the rows of one file in the spec's L0 column order, the per-file values the
L1 transform needs, and the problems met on the way.

Conventions the loader relies on:

* Names (schemas, tables, columns) are bare; the loader quotes every identifier (some L0 columns
  are years such as ``1958``, one is ``long``).
* Values are text or None (SQL NULL); Postgres casts them to the column type on ``COPY``, so a
  reader never converts numbers or dates beyond the normalisation its source needs.
* An L1 expression is SQL over the L0 relation, which the loader aliases ``l0``; a per-file value
  is written ``%(name)s`` (psycopg2 parameters, the project's only driver) and listed in
  ``L1Transform.params``; the reader's ``FileRows.params`` supplies it.
"""

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

Row = tuple[str | None, ...]
Loading = Literal["incremental", "snapshot", "rebuild"]

# Blob keys of the source files, one folder per source (per table for SPIRE).
BLOB_ROOT = "datastore/datasets/"
# Enough detail to act on without letting a file of a million bad lines fill the memory: the
# counts stay complete.
MAX_PROBLEM_DETAILS = 100


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "text"


@dataclass(frozen=True)
class L1Column:
    """One L1 column; ``expression`` is SQL over ``l0`` (None: the L0 column of the same name)."""

    name: str
    type: str = "text"
    expression: str | None = None

    @property
    def select_sql(self) -> str:
        return self.expression or f'l0."{self.name}"'


@dataclass(frozen=True)
class L1Transform:
    """``INSERT INTO L1 (columns) SELECT [DISTINCT ON (distinct_on)] expressions FROM L0 AS l0
    [lateral] WHERE <the loader's file filter> [AND where] [ORDER BY order_by]``."""

    columns: tuple[L1Column, ...]
    # A FROM item joined after ``l0`` (the EU membership unpivot).
    lateral: str | None = None
    where: str | None = None
    distinct_on: tuple[str, ...] = ()
    order_by: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    # Set when the rows are computed by a routine of the loader instead (World Bank transform):
    # the columns are then the table's layout only.
    computed: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


@dataclass(frozen=True)
class Problem:
    """Something wrong in a file: ``kind`` is stable (``bad_member_name``, ``bad_encoding``,
    ``bad_header``, ``bad_row``, ``bad_archive``, ``bad_xml``, ``unsafe_xml``, ``too_large``,
    ``short_line``), ``member`` the archive member, ``line`` 1-based in the file or member."""

    kind: str
    file_name: str
    message: str
    member: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file_name + (f"!{self.member}" if self.member else "")
        if self.line is not None:
            where += f", line {self.line}"
        return f"{where}: {self.message} [{self.kind}]"


class SourceFileError(ValueError):
    """The file cannot be loaded at all (raised while opening it or while iterating its rows)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(problem))

    @property
    def kind(self) -> str:
        return self.problem.kind

    @property
    def line(self) -> int | None:
        return self.problem.line


@dataclass
class FileRows:
    """The rows of one file, to be iterated once. ``problems`` (first ``MAX_PROBLEM_DETAILS``) and
    ``counts`` (per kind, complete) are the parts skipped so far: read them after the rows."""

    rows: Iterator[Row]
    params: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def __iter__(self) -> Iterator[Row]:
        return self.rows

    def skip(self, problem: Problem) -> None:
        self.counts[problem.kind] += 1
        if len(self.problems) < MAX_PROBLEM_DETAILS:
            self.problems.append(problem)


Reader = Callable[[BinaryIO, str], FileRows]


@dataclass(frozen=True)
class SourceSpec:
    """One source pipeline of the legacy (B5), in registration order in ``SOURCES``.

    ``id`` is the legacy's ``organisation.dataset[.subdataset]`` (SPIRE: ``dit.spire.<table>``);
    ``group`` the legacy CLI flag that runs it (``--world_bank.tariff`` runs five pipelines).
    ``schema``/``table`` say where the reader's rows go: ``"<org>.<dataset>"."L0"``, or for
    SPIRE ``spire.<table>``. A spec without ``reader`` has no input file (World Bank transform)
    and runs once per load. ``dataflow_table`` is the table the legacy announced to data-flow
    after loading a file (None: no announcement).
    """

    id: str
    group: str
    loading: Loading
    schema: str
    columns: tuple[Column, ...]
    reader: Reader | None
    blob_prefix: str | None
    table: str | None = "L0"
    l1: L1Transform | None = None
    dataflow_table: Literal["L0", "L1"] | None = None
    description: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def read(self, stream: BinaryIO, file_name: str) -> FileRows:
        if self.reader is None:
            raise ValueError(f"{self.id} has no input file")
        return self.reader(stream, file_name)


def blob_prefix(*parts: str) -> str:
    return BLOB_ROOT + "".join(f"{part}/" for part in parts)


def text_columns(*names: str) -> tuple[Column, ...]:
    return tuple(Column(name) for name in names)
