"""Asset of the BDR registry's old companies (logic: ``ecr_pipelines.registry.store.old_companies``)."""

import dagster as dg
import pandas as pd

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry.clients import RegistryApiError
from ecr_pipelines.registry.defs.resources import GROUP, UPSTREAM_RETRY, RegistryResource
from ecr_pipelines.registry.store.old_companies import sync_all_old_companies
from ecr_pipelines.resources import DatabaseResource, HttpResource


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "api"},
    description=(
        "Old companies from the legacy BDR registry, one list per obligation in "
        "MANUAL_VERIFY_ALL_COMPANIES, upserted into registry.old_company by (BDR id, obligation). The "
        "operator's valid flag is kept. These are the candidates the matching proposes."
    ),
    retry_policy=UPSTREAM_RETRY,
)
def bdr_old_companies(
    context: dg.AssetExecutionContext, db: DatabaseResource, http: HttpResource, registry: RegistryResource
) -> dg.MaterializeResult:
    try:
        client = registry.bdr_registry(http.session())
        with db.begin() as conn:
            reports = sync_all_old_companies(Sql(conn), client, registry.manual_verify_domains())
    except RegistryApiError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    for report in reports:
        context.log.info(f"{report.obligation}: {report.fetched} old companies, {report.upserted} upserted")
        for pk, reason in report.rejected:
            context.log.warning(f"old company {pk} ({report.obligation}) rejected: {reason}")
        for path, pks in sorted(report.unknown_fields.items()):
            context.log.warning(
                f"{report.obligation}: field {path!r} is not read (ignored) in {len(pks)} records"
            )
    frame = pd.DataFrame(
        [
            (r.obligation, r.fetched, r.upserted, len(r.rejected), ", ".join(sorted(r.unknown_fields)))
            for r in reports
        ],
        columns=["obligation", "fetched", "upserted", "rejected", "unknown fields (ignored)"],
    )
    rejected = int(frame["rejected"].sum()) if not frame.empty else 0
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(frame["upserted"].sum()) if not frame.empty else 0,
            "rejected": rejected,
            "errors": rejected,
            "per_obligation": md_frame(frame),
        }
    )
