"""Asset of the undertakings' BDR collections, and its check (logic:
``ecr_pipelines.registry.store.collections``).

Why a graph-backed asset: Dagster skips a step when one upstream output it waits for was not
produced, and a domain run with ``sync: false`` produces no output. The one exception is a
*fan-in* input (several upstream outputs into one input), which is skipped only when all of its
sources are missing. So the op waits on one fan-in input fed by both undertaking assets: it runs
after the sync of whichever domains ran, and is skipped only when neither did.
"""

from typing import Any

import dagster as dg
import pandas as pd

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry.clients import RegistryApiError
from ecr_pipelines.registry.defs.resources import GROUP, RegistryResource
from ecr_pipelines.registry.store.collections import sync_collections
from ecr_pipelines.resources import DatabaseResource, HttpResource


@dg.op(
    name="create_bind_and_rename_collections",
    ins={"synced": dg.In(dg.Nothing, description="The undertaking syncs of this run (either or both).")},
    pool="bdr",
    description="Create or bind the BDR collection of every due company, then rename changed titles.",
)
def create_bind_and_rename_collections(
    context: dg.OpExecutionContext, db: DatabaseResource, http: HttpResource, registry: RegistryResource
) -> None:
    bdr = registry.bdr_endpoint(http.session())
    try:
        report = sync_collections(db.engine, bdr, progress=context.log.info)
    except RegistryApiError as exc:
        # The per-company outcomes of the first pass are committed; only the renames are missing.
        raise dg.Failure(
            description=f"BDR collections could not be listed for the renames: {exc}", allow_retries=False
        ) from exc
    for ext, domain, message in report.failed:
        context.log.warning(f"BDR collection of {domain} {ext} failed: {message}")
    for ext, domain in report.not_renamed:
        context.log.warning(f"{domain} {ext}: no country code, collection not renamed")
    context.add_output_metadata(
        {
            "due": report.due,
            "created_or_bound": len(report.created),
            "folder_existed": report.existing,
            "failed": len(report.failed),
            "errors": len(report.failed),
            "renamed": sum(1 for r in report.renamed if r[-1]),
            "dagster/row_count": len(report.created),
            "failures": md_frame(pd.DataFrame(report.failed, columns=["external_id", "domain", "reason"])),
            "renames": md_frame(
                pd.DataFrame(report.renamed, columns=["external_id", "country", "old", "new", "ok"])
            ),
        }
    )


@dg.graph_asset(
    name="bdr_collections",
    group_name=GROUP,
    kinds={"postgres", "api"},
    ins={
        "fgas_undertakings": dg.AssetIn(dagster_type=dg.Nothing),
        "ods_undertakings": dg.AssetIn(dagster_type=dg.Nothing),
    },
    description=(
        "BDR collections of the undertakings: for every company that passed the checks and is due "
        "(new, or its representative changed) and whose BDR folder is missing, create the collection "
        "or bind the old one; then rename collections whose title differs from the company name. "
        "Failures are kept per company in registry.undertaking.bdr_error and retried next run. Runs "
        "after either domain's sync, also when the other is left out (sync: false)."
    ),
)
def bdr_collections(fgas_undertakings: Any, ods_undertakings: Any) -> Any:
    return create_bind_and_rename_collections(synced=[fgas_undertakings, ods_undertakings])


@dg.asset_check(
    asset=bdr_collections,
    description="No company that passed the checks is left with a BDR error (warns; retried next run).",
)
def bdr_collections_without_errors(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT domain, external_id, bdr_error FROM registry.undertaking WHERE bdr_error IS NOT NULL ORDER BY id",
        severity=dg.AssetCheckSeverity.WARN,
    )
