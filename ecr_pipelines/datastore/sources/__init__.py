"""The data store's sources, Dagster-free: what each legacy source pipeline is (``SourceSpec``,
registered in ``SOURCES`` in the legacy's order) and a streaming reader from one of its files to
L0 rows; ``listing`` decides which downloadable file is new.

Reader interface, the same for every source: ``spec.read(stream, file_name) -> FileRows``.
``stream`` is the blob opened in binary (seekable for the ZIP sources: ONS, Companies House,
HMRC, and a CSV source's file when it is a ZIP); ``file_name`` is the blob's name, used in
messages. ``FileRows.rows`` yields one tuple per L0 row, text or None in ``spec.columns`` order,
lazily: the file is never held whole. ``FileRows.params`` are per-file values the L1 transform
uses (ONS ``publication_date``). Parts skipped on the way (a broken filing, a short HMRC line)
are in ``FileRows.problems``/``counts`` once the rows are consumed; a file that cannot be loaded
raises ``SourceFileError`` (with ``kind`` and the line) on opening or while iterating.

Families: ``ons`` (postcode directory), ``dit`` (reference postcodes, BACI, EU membership,
SPIRE), ``comtrade`` (country codes), ``world_bank`` (bound rates, tariffs, the tariff
transform), ``companies_house`` (accounts), ``hmrc`` (exporters).
"""

from typing import BinaryIO

from ecr_pipelines.datastore.sources import companies_house, comtrade, dit, hmrc, ons, world_bank
from ecr_pipelines.datastore.sources.spec import (
    BLOB_ROOT,
    Column,
    FileRows,
    L1Column,
    L1Transform,
    Problem,
    Row,
    SourceFileError,
    SourceSpec,
)

# The legacy's order (B5), which matters within the World Bank group: EU membership, Comtrade,
# bound rates and tariffs must be loaded before the transform that reads them. SPIRE tables come
# referenced-first.
_ORDER: tuple[SourceSpec, ...] = (
    *ons.SPECS,
    dit.REFERENCE_POSTCODES,
    dit.BACI,
    dit.EU_MEMBERSHIP,
    *comtrade.SPECS,
    world_bank.BOUND_RATES,
    world_bank.TARIFF,
    world_bank.TARIFF_TRANSFORMED,
    *companies_house.SPECS,
    *hmrc.SPECS,
    *dit.SPIRE,
)
SOURCES: dict[str, SourceSpec] = {spec.id: spec for spec in _ORDER}


def read_file(source_id: str, stream: BinaryIO, file_name: str) -> FileRows:
    """The rows of ``file_name`` of source ``source_id`` (see the module docstring)."""
    return SOURCES[source_id].read(stream, file_name)


def sources_of_group(group: str) -> list[SourceSpec]:
    """The specs a legacy CLI flag ran (``world_bank.tariff``: five, ``dit.spire``: 25), in order."""
    return [spec for spec in SOURCES.values() if spec.group == group]


__all__ = [
    "BLOB_ROOT",
    "SOURCES",
    "Column",
    "FileRows",
    "L1Column",
    "L1Transform",
    "Problem",
    "Row",
    "SourceFileError",
    "SourceSpec",
    "read_file",
    "sources_of_group",
]
