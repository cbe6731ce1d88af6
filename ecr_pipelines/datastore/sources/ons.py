"""ONS Postcode Directory (``ons.postcode_directory``): the monthly ONSPD ZIP as downloaded.

The data is the one member named ``<folder>/ONSPD_<MON>_<YYYY>_UK.csv`` (the archive also holds
a ``.txt`` copy, documents and macOS leftovers); its name gives the publication date, which only
L1 has. The CSV's header must be the 50 L0 columns (later ONSPD releases renamed some: such a
file is refused with ``bad_header`` rather than loaded into the wrong columns).
"""

import re
from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO

from ecr_pipelines.datastore.sources._files import (
    Where,
    archive_errors,
    csv_rows,
    data_members,
    open_zip,
    text_lines,
)
from ecr_pipelines.datastore.sources.spec import (
    FileRows,
    L1Column,
    L1Transform,
    Row,
    SourceFileError,
    SourceSpec,
    blob_prefix,
    text_columns,
)

# The legacy's pattern, with the extension's dot taken literally.
MEMBER_PATTERN = re.compile(r"(.*?)/ONSPD_(?P<date>\w{3}_\d{4})_UK\.csv$")

COLUMNS = text_columns(
    *[
        "pcd",
        "pcd2",
        "pcds",
        "dointr",
        "doterm",
        "oscty",
        "ced",
        "oslaua",
        "osward",
        "parish",
        "usertype",
        "oseast1m",
        "osnrth1m",
        "osgrdind",
        "oshlthau",
        "nhser",
        "ctry",
        "rgn",
        "streg",
        "pcon",
        "eer",
        "teclec",
        "ttwa",
        "pct",
        "nuts",
        "statsward",
        "oa01",
        "casward",
        "park",
        "lsoa01",
        "msoa01",
        "ur01ind",
        "oac01",
        "oa11",
        "lsoa11",
        "msoa11",
        "wz11",
        "ccg",
        "bua11",
        "buasd11",
        "ru11ind",
        "oac11",
        "lat",
        "long",
        "lep1",
        "lep2",
        "pfa",
        "imd",
        "calncv",
        "stp",
    ]
)
COLUMN_NAMES = tuple(column.name for column in COLUMNS)

_DATES = {"dointr", "doterm"}
L1 = L1Transform(
    columns=tuple(
        L1Column(column.name, "date", f"to_date(l0.{column.name}, 'YYYYMM')")
        if column.name in _DATES
        else L1Column(column.name)
        for column in COLUMNS
    )
    + (L1Column("publication_date", "date", "%(publication_date)s::date"),),
    params=("publication_date",),
)


def publication_date(member_name: str, where: Where) -> str:
    """``Data/ONSPD_MAY_2019_UK.csv`` → ``2019-05-01``."""
    match = MEMBER_PATTERN.match(member_name)
    if match is None:
        raise where.error("bad_member_name", f"{member_name!r} does not match {MEMBER_PATTERN.pattern}")
    try:
        return datetime.strptime(match["date"], "%b_%Y").date().isoformat()
    except ValueError as error:
        raise where.error(
            "bad_member_name", f"{match['date']!r} in {member_name!r} is not a month"
        ) from error


def read_postcode_directory(stream: BinaryIO, file_name: str) -> FileRows:
    where = Where(file_name)
    archive = open_zip(stream, where)
    members = [info for info in data_members(archive) if MEMBER_PATTERN.match(info.filename)]
    if len(members) != 1:
        names = [info.filename for info in data_members(archive)]
        found = "none" if not members else ", ".join(info.filename for info in members)
        archive.close()
        raise where.error(
            "bad_member_name",
            f"expected exactly one member matching {MEMBER_PATTERN.pattern} (found {found}; members: {names})",
        )
    member = members[0]
    try:
        date = publication_date(member.filename, where)
    except SourceFileError:
        archive.close()
        raise

    def rows() -> Iterator[Row]:
        member_where = Where(file_name, member.filename)
        with archive, archive_errors(member_where), archive.open(member) as data:
            yield from csv_rows(text_lines(data, "utf-8", member_where), member_where, header=COLUMN_NAMES)

    return FileRows(rows=rows(), params={"publication_date": date})


SPECS = (
    SourceSpec(
        id="ons.postcode_directory",
        group="ons.postcode_directory",
        loading="incremental",
        schema="ons.postcode_directory",
        columns=COLUMNS,
        reader=read_postcode_directory,
        blob_prefix=blob_prefix("ons", "postcode_directory"),
        l1=L1,
        description="ONS Postcode Directory, monthly ZIP of the ONSPD CSV",
    ),
)
