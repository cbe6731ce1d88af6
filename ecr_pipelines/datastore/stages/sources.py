"""The source loads as the Dagster assets run them (no Dagster): one entry point per source, the
World Bank transform's "is anything new" rule, and the figures the assets show.

``run_source`` dispatches a legacy source id to ``load.load_source`` (one source's due files),
``load.load_spire`` (the 25 SPIRE tables, rebuilt whole) or the World Bank transform. The legacy
ran the transform on every nightly run and wrote a new registry row each time; here it runs when
one of its four inputs has a file processed after the last successful transform (or with
``force``), so a re-run with no new file changes nothing, registry included.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.datastore import load, registry
from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.datastore.sources.spec import blob_prefix
from ecr_pipelines.datastore.transform import SOURCE_ID as TRANSFORM
from ecr_pipelines.lib.blobstore import BlobStore

SPIRE = load.SPIRE
TRANSFORM_INPUTS = (
    "dit.eu_country_membership",
    "comtrade.country_code_and_iso",
    "world_bank.bound_rates",
    "world_bank.tariff",
)


@dataclass(frozen=True)
class SourceAsset:
    """One asset of the data store: a source with its own tables, SPIRE (25 sources, one
    export) or the transform. ``members`` are the registry sources it loads."""

    id: str
    description: str
    members: tuple[str, ...]
    blob_prefix: str | None
    schema: str
    deps: tuple[str, ...] = ()
    table: str = "L0"  # the table whose rows the asset counts


def source_assets() -> list[SourceAsset]:
    """Every source as its asset, in the legacy's order (SPIRE last, as one)."""
    assets: list[SourceAsset] = []
    for spec in SOURCES.values():
        if spec.id.startswith(SPIRE + "."):
            continue
        deps = TRANSFORM_INPUTS if spec.id == TRANSFORM else ()
        assets.append(
            SourceAsset(
                spec.id, spec.description, (spec.id,), spec.blob_prefix, spec.schema, deps, spec.table or "L1"
            )
        )
    spire = [spec for spec in SOURCES.values() if spec.id.startswith(SPIRE + ".")]
    assets.append(
        SourceAsset(
            SPIRE,
            "SPIRE export-licence data: 25 tables in schema spire, rebuilt whole from the newest file of "
            "every table folder, in foreign-key order with the legacy's constraints.",
            tuple(spec.id for spec in spire),
            blob_prefix("dit", "spire"),
            spire[0].schema,
            table="applications",
        )
    )
    return assets


def transform_due(conn: Connection) -> bool:
    """A file of an input was processed after the last successful transform (or none ran yet
    and every input has data)."""
    row = conn.execute(
        sa.text(
            f"SELECT (SELECT max(coalesce(updated_timestamp, created_timestamp)) FROM {registry.TABLE} "
            "  WHERE source = ANY(:inputs) AND state::text = 'processed'), "
            f"(SELECT max(coalesce(updated_timestamp, created_timestamp)) FROM {registry.TABLE} "
            "  WHERE source = :transform AND state::text = 'processed'), "
            f"(SELECT count(DISTINCT source) FROM {registry.TABLE} "
            "  WHERE source = ANY(:inputs) AND state::text = 'processed')"
        ),
        {"inputs": list(TRANSFORM_INPUTS), "transform": TRANSFORM},
    ).one()
    newest_input, last_transform, inputs_loaded = row
    if newest_input is None or inputs_loaded < len(TRANSFORM_INPUTS):
        return False
    return last_transform is None or newest_input > last_transform


def run_source(
    engine: Engine,
    store: BlobStore,
    source_id: str,
    *,
    force: bool = False,
    progress: Callable[[load.FileReport], None] | None = None,
) -> load.SourceReport:
    """Load what is due of one source asset (``SourceBusy`` when another run holds it)."""
    if source_id == SPIRE:
        return load.load_spire(engine, store, force=force)
    spec = SOURCES[source_id]
    if spec.reader is None:
        with engine.connect() as conn:
            if not force and not transform_due(conn):
                return load.SourceReport(source=source_id, not_due=["(no input changed)"])
    return load.load_source(engine, store, spec, force=force, progress=progress)


def due_sources(conn: Connection, listed: dict[str, list[str]]) -> list[str]:
    """The source assets with a stored file the registry does not have as processed or ignored
    (``listed``: registry source id -> stored file names)."""
    due: list[str] = []
    for asset in source_assets():
        for member in asset.members:
            names = listed.get(member, [])
            if names and registry.due_files(conn, member, names):
                due.append(asset.id)
                break
    return due


def table_rows(conn: Connection, schema: str) -> dict[str, int]:
    """Rows per table of a schema (exact counts: these tables are read whole by the loads)."""
    tables = conn.execute(
        sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :schema ORDER BY 1"),
        {"schema": schema},
    ).scalars()
    counts = {}
    for table in tables:
        counts[table] = conn.execute(
            sa.text(f"SELECT count(*) FROM {load.table_name(schema, table)}")
        ).scalar_one()
    return counts


def failed_files(conn: Connection, members: Sequence[str]) -> list[tuple[Any, ...]]:
    """Files of these sources that are ``failed`` now (their last attempt failed)."""
    return [
        tuple(row)
        for row in conn.execute(
            sa.text(
                f"SELECT source, coalesce(file_name, ''), error_message, updated_timestamp FROM {registry.TABLE} "
                "WHERE source = ANY(:members) AND state::text = 'failed' "
                # A transform row is one per run: only the latest run's state counts.
                "AND (file_name IS NOT NULL OR id = (SELECT max(id) FROM operations.datafile_registry r "
                "WHERE r.source = datafile_registry.source)) ORDER BY id"
            ),
            {"members": list(members)},
        )
    ]


def registry_preview(conn: Connection, members: Sequence[str], limit: int = 10) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in conn.execute(
            sa.text(
                f"SELECT source, coalesce(file_name, ''), state::text, coalesce(error_message, ''), "
                f"coalesce(updated_timestamp, created_timestamp) FROM {registry.TABLE} "
                "WHERE source = ANY(:members) ORDER BY id DESC LIMIT :limit"
            ),
            {"members": list(members), "limit": limit},
        )
    ]
