"""``ckan_request_job``: a person (Launchpad, ``dagster job execute -c``, ``dagster job launch``,
Dagster's GraphQL API) queues one download request (``ecr_pipelines.ckan.stages.requests``).

The run config is the request, in the legacy's parameter names; it has no API key field, because
run config is stored and shown in the UI: a portal-wide key is ``CKAN_API_KEY``, and a request's
own key can only come through the table. A bad request fails this run with the legacy's message
and queues nothing; a good one is built by the next run of its queue (``ckan_queue_sensor``).
"""

import dagster as dg
from pydantic import Field

from ecr_pipelines.ckan.defs.resources import CkanResource
from ecr_pipelines.ckan.package import KINDS, BadRequest
from ecr_pipelines.ckan.stages.requests import stored_params, submit
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource


class CkanRequestConfig(dg.Config):
    """One download request (ops.ckan_request.config), as the legacy's package_* endpoints took it."""

    kind: str = Field(default="datastore", description=f"One of {', '.join(KINDS)}.")
    resource_id: str = Field(description="The CKAN resource id.")
    email: str = Field(description="Who gets the link.")
    api_url: str | None = Field(
        default=None, description="The full datastore_search action URL (datastore and dwc kinds)."
    )
    resource_url: str | None = Field(default=None, description="The file to package (url kind).")
    filters: str | None = Field(default=None, description='JSON object, field → value: {"country": "DK"}.')
    q: str | None = Field(default=None, description="Full-text query.")
    plain: str | None = Field(default=None, description="datastore_search `plain`.")
    language: str | None = Field(default=None, description="datastore_search `language`.")
    limit: int | None = Field(default=None, description="Rows at most (none: every row; slow queue).")
    offset: int | None = Field(default=None, description="Rows to skip (forces offset paging).")
    fields: str | None = Field(default=None, description="Comma-separated field ids.")
    sort: str | None = Field(default=None, description='"field1 asc, field2 desc".')
    format: str | None = Field(default=None, description="csv (default), tsv or xlsx.")
    doi: str | None = Field(default=None, description="A DOI to cite in the mail.")
    eml: str | None = Field(default=None, description="EML template for eml.xml (dwc kind).")
    for_gbif: bool = Field(default=False, description="Mark the archive as the GBIF export (dwc kind; kept).")


@dg.op(
    description=(
        "Validate one CKAN download request as the legacy did (required parameters named, unknown ones "
        "dropped, filters parsed as JSON) and queue it in ckan.package_request; ckan_queue_sensor starts "
        "the run of its queue (fast or slow) that builds, stores and mails it."
    ),
    tags={"kind": "ckan"},
)
def ckan_request(
    context: dg.OpExecutionContext, config: CkanRequestConfig, db: DatabaseResource, ckan: CkanResource
) -> dg.Output[int]:
    raw = config.model_dump(exclude={"kind"})
    if not raw.get("for_gbif"):
        raw.pop("for_gbif", None)
    try:
        request_id, pkg = submit(
            db.engine,
            config.kind,
            raw,
            source=f"dagster:{context.run.run_id}",
            slow_request=ckan.slow_request,
            cache_time=ckan.cache_time,
        )
    except BadRequest as exc:
        # Deliberate: the same request would be refused again.
        raise dg.Failure(description=f"request refused: {exc}", allow_retries=False) from exc
    context.log.info(
        f"request {request_id} queued on the {pkg.speed} queue (cache key {pkg.cache_key[:12]}…)"
    )
    shown = {k: v for k, v in stored_params(pkg).items() if k != "email"}
    return dg.Output(
        request_id,
        metadata={
            "request_id": request_id,
            "kind": pkg.kind,
            "queue": pkg.speed,
            "cache_key": pkg.cache_key,
            "parameters": md_table(["parameter", "value"], sorted((k, str(v)) for k, v in shown.items())),
        },
    )
