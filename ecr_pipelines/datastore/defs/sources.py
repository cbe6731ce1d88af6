"""The source assets: one per legacy source (``<org>/<dataset>`` under the key prefix
``datastore``), preceded by a ``files`` asset for the three sources the legacy downloaded.

``datastore/<org>/<dataset>/files`` fetches the newest file of the source's listing into the blob
store when it is new (``ecr_pipelines.datastore.downloads``); ``datastore/<org>/<dataset>`` loads
every stored file the registry does not have as processed (``stages.sources.run_source``). A
failed download or a failed file never fails its asset: the run goes on with the other sources
and with the files already stored, and the asset's check fails with the reason until a later
file or run succeeds.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from ecr_pipelines.datastore.dataflow import DataflowError, trigger_dag
from ecr_pipelines.datastore.defs.resources import DatastoreResource
from ecr_pipelines.datastore.downloads import DOWNLOADED_SOURCES, download_source
from ecr_pipelines.datastore.load import SPIRE, FileReport, SourceBusy, SourceReport
from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.datastore.stages.sources import (
    SourceAsset,
    failed_files,
    registry_preview,
    run_source,
    source_assets,
    table_rows,
)
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource

GROUP = "datastore"
KEY_PREFIX = "datastore"
# A bulk file is gigabytes: the read timeout is per socket read, not for the whole body.
DOWNLOAD_READ_TIMEOUT = 300.0


class SourceLoadConfig(dg.Config):
    """Run config of a source's load (``ops.<op>.config``)."""

    force: bool = Field(
        default=False,
        description=(
            "Load every stored file again, processed or not: the tables are dropped once, then all the "
            "files load in order (the legacy's --force kept only the last one)."
        ),
    )


def source_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey([KEY_PREFIX, *source_id.split(".")])


def files_key(source_id: str) -> dg.AssetKey:
    return dg.AssetKey([KEY_PREFIX, *source_id.split("."), "files"])


def _file_line(report: FileReport) -> str:
    if report.status == "failed":
        return f"{report.source}: {report.file_name} failed ({report.error_kind}): {report.error}"
    return (
        f"{report.source}: {report.file_name} {report.status}: {report.rows_read} rows read, "
        f"L0 +{report.l0_inserted} (~{report.l0_updated}), L1 +{report.l1_inserted} in {report.seconds:.1f} s"
    )


def _announce(
    context: dg.AssetExecutionContext, http: HttpResource, datastore: DatastoreResource, source_id: str
) -> str | None:
    """Trigger the data-flow DAG for the table the legacy announced (only with DATAFLOW_BASE_URL)."""
    settings = datastore.dataflow_settings()
    spec = SOURCES.get(source_id)
    if settings is None or spec is None or spec.dataflow_table is None:
        return None
    try:
        run_id = trigger_dag(http.session(), settings, spec.schema, spec.dataflow_table)
    except DataflowError as error:
        context.log.warning(f"data-flow was not told about {spec.schema}.{spec.dataflow_table}: {error}")
        return f"failed: {error}"
    context.log.info(f"data-flow DAG run {run_id} for {spec.schema}.{spec.dataflow_table}")
    return run_id


def _table_asset(source: SourceAsset) -> dg.AssetsDefinition:
    key = source_key(source.id)
    deps = [files_key(source.id)] if source.id in DOWNLOADED_SOURCES else [source_key(d) for d in source.deps]
    where = f"blob prefix {source.blob_prefix}" if source.blob_prefix else "no file: computed from its inputs"
    check = dg.AssetCheckSpec(
        "no_failed_files",
        asset=key,
        description="No file of the source is 'failed' in operations.datafile_registry (its last attempt).",
    )

    @dg.asset(
        key=key,
        group_name=GROUP,
        deps=deps,
        kinds={"postgres"},
        check_specs=[check],
        description=(
            f'{source.id} (legacy data store source; {where}; tables in schema "{source.schema}"). '
            f"{source.description} Loads every stored file that operations.datafile_registry does not "
            "have as processed or ignored, oldest first, each in one transaction; a failed file is "
            "recorded with its reason and the next one loads."
        ),
    )
    def _load(
        context: dg.AssetExecutionContext,
        config: SourceLoadConfig,
        db: DatabaseResource,
        blobs: BlobStoreResource,
        http: HttpResource,
        datastore: DatastoreResource,
    ) -> dg.MaterializeResult:
        def progress(file: FileReport) -> None:
            (context.log.warning if file.status == "failed" else context.log.info)(_file_line(file))

        try:
            report = run_source(db.engine, blobs.store, source.id, force=config.force, progress=progress)
        except SourceBusy as busy:
            # Another run (a sensor's, the nightly one) is loading it and takes its due files.
            context.log.warning(f"{busy}: this run leaves the source to it")
            report = SourceReport(source=source.id, not_due=[f"(busy: {busy})"])
        if source.id == SPIRE:  # rebuilt in one go: its files are reported at the end
            for file in report.files:
                progress(file)
        dataflow = _announce(context, http, datastore, source.id) if report.loaded else None
        with db.connect() as conn:
            rows = table_rows(conn, source.schema)
            failed = failed_files(conn, source.members)
            preview = registry_preview(conn, source.members)
        files = report.files
        metadata: dict[str, Any] = {
            "files_loaded": len(report.loaded),
            "files_failed": len(report.failed),
            "files_not_due": len(report.not_due),
            "forced": report.forced,
            "rows_read": sum(file.rows_read for file in files),
            "l0_inserted": sum(file.l0_inserted for file in files),
            "l1_inserted": sum(file.l1_inserted for file in files),
            "rows_per_table": md_table(["table", "rows"], sorted(rows.items())),
            "dagster/row_count": rows.get(source.table, 0),
            "files": md_table(
                ["file", "status", "rows read", "L0 +", "L1 +", "seconds", "error"],
                [
                    (
                        f.file_name or "(run)",
                        f.status,
                        f.rows_read,
                        f.l0_inserted,
                        f.l1_inserted,
                        round(f.seconds, 1),
                        f.error or "",
                    )
                    for f in files
                ],
            ),
            "registry": md_table(["source", "file", "state", "error", "at"], preview),
        }
        if dataflow is not None:
            metadata["dataflow_run"] = dataflow
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name="no_failed_files",
                    passed=not failed,
                    metadata={"failed": md_table(["source", "file", "error", "at"], failed)},
                    description=f"{len(failed)} failed file(s)" if failed else "no failed file",
                )
            ],
        )

    return _load


def _files_asset(source_id: str) -> dg.AssetsDefinition:
    key = files_key(source_id)
    spec = SOURCES[source_id]

    @dg.asset(
        key=key,
        group_name=GROUP,
        kinds={"s3"},
        check_specs=[
            dg.AssetCheckSpec(
                "download_ok", asset=key, description="The listing was read and a new file, if any, stored."
            )
        ],
        description=(
            f"{source_id} files: reads the source's listing, takes the newest file matching the legacy's "
            f"pattern and streams it into {spec.blob_prefix} when it is at least one day newer than the "
            "newest stored file (no back-filling, as the legacy). A failure is reported here and never keeps "
            "the files already stored from loading."
        ),
    )
    def _download(
        context: dg.AssetExecutionContext,
        blobs: BlobStoreResource,
        http: HttpResource,
        datastore: DatastoreResource,
    ) -> dg.MaterializeResult:
        session = http.session(read_timeout=max(http.read_timeout, DOWNLOAD_READ_TIMEOUT))
        report = download_source(session, blobs.store, source_id, datastore.download_settings())
        if report.status == "failed":
            context.log.warning(f"{source_id}: download failed ({report.error_kind}): {report.error}")
        else:
            context.log.info(
                f"{source_id}: {report.status} {report.stored_name or ''} ({report.bytes} bytes)"
            )
        stored = sorted(
            key[len(spec.blob_prefix or "") :] for key in blobs.store.list(spec.blob_prefix or "")
        )
        return dg.MaterializeResult(
            metadata={
                "status": report.status,
                "listing_url": report.listing_url,
                "file_url": report.url or "",
                "stored_name": report.stored_name or "",
                "bytes": report.bytes,
                "seconds": round(report.seconds, 2),
                "error_kind": report.error_kind or "",
                "error": report.error or "",
                "stored_files": md_table(["file"], [(name,) for name in stored[-20:]]),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="download_ok",
                    passed=report.status != "failed",
                    description=report.error or report.status,
                )
            ],
        )

    return _download


SOURCE_ASSETS = source_assets()
source_table_assets = [_table_asset(source) for source in SOURCE_ASSETS]
source_file_assets = [_files_asset(source_id) for source_id in DOWNLOADED_SOURCES]
SOURCE_KEYS = {source.id: source_key(source.id) for source in SOURCE_ASSETS}
