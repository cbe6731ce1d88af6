"""Disclosures: ``energy_disclosure_job`` creates one (the legacy's create call), and
``energy/disclosures`` compiles the pending ones, or all of them nightly, into their public JSON
documents (``ecr_pipelines.energy.stages.disclosures``)."""

from typing import Literal

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from ecr_pipelines.automation import service_tags
from ecr_pipelines.checks import offending_rows_check, stored_blobs_check
from ecr_pipelines.energy.defs.resources import EnergyResource
from ecr_pipelines.energy.defs.technology import GROUP
from ecr_pipelines.energy.disclosure import DisclosureRefused
from ecr_pipelines.energy.stages.disclosures import compile_due, create_disclosure
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource
from ecr_pipelines.stages import BatchConfig, log_stage, stage_metadata

BLOB_SAMPLE = 25


class DisclosureConfig(dg.Config):
    """A new disclosure (ops.energy_disclosure.config): the legacy's create call, plus its owner."""

    sub: str = Field(description="The customer (sub) whose consumption is disclosed.")
    name: str = Field(description="The disclosure's name.")
    description: str = Field(default="", description="Its description.")
    begin: str = Field(description="First day (YYYY-MM-DD).")
    end: str = Field(description="Last day, included (YYYY-MM-DD).")
    maxResolution: Literal["all", "year", "month", "day", "hour"] = Field(
        default="hour", description="The finest resolution readers get."
    )
    publicizeMeteringpoints: bool = Field(
        default=False, description="One series per metering point (else one anonymised series)."
    )
    publicizeGsrn: bool = Field(default=False, description="Show each series' GSRN.")
    publicizePhysicalAddress: bool = Field(default=False, description="Show each series' address.")
    gsrn: list[str] = Field(
        description="The customer's active consumption points to disclose (at least one)."
    )


@dg.op(
    description=(
        "Create a disclosure of a customer's consumption (energy.disclosure, state PENDING). Every GSRN must "
        "be one of the customer's active consumption points, else the run fails with the reason. "
        "energy_work_sensor then starts the compile."
    ),
    tags={"kind": "postgres"},
)
def energy_disclosure(context: dg.OpExecutionContext, config: DisclosureConfig, db: DatabaseResource) -> str:
    request = config.model_dump(exclude={"sub"})
    try:
        with db.engine.begin() as conn:
            public_id = create_disclosure(conn, config.sub, request)
    except DisclosureRefused as exc:
        raise dg.Failure(description=f"disclosure refused: {exc}", allow_retries=False) from exc
    context.log.info(
        f"disclosure {public_id} created (PENDING); it is compiled by the next energy_disclosures_job"
    )
    return public_id


@dg.job(
    tags=service_tags("energy"),
    description=(
        "Create one disclosure (ops.energy_disclosure.config: sub, name, description, begin, end, maxResolution, "
        "publicizeMeteringpoints, publicizeGsrn, publicizePhysicalAddress, gsrn)."
    ),
)
def energy_disclosure_job() -> None:
    energy_disclosure()


class DisclosuresConfig(BatchConfig):
    """Run config of the compile (ops.energy__disclosures.config)."""

    all: bool = Field(default=False, description="Compile every disclosure again (the nightly run sets it).")
    batch_size: int = Field(default=1, description="Disclosures per claim and commit.")


@dg.asset(
    key=["energy", "disclosures"],
    group_name=GROUP,
    deps=[dg.AssetKey(["energy", "measurements"]), dg.AssetKey(["energy", "technology"])],
    kinds={"postgres", "s3"},
    description=(
        "Disclosures compiled: the settlements and retired GGOs of each disclosed hour read from the ledger "
        "(LEDGER_URL; nothing at an address means nothing retired; unset: no reads), state PENDING → PROCESSING "
        "→ AVAILABLE, and the public view (labels, series per point or anonymised, GGOs per technology label) "
        "written to energy/disclosures/<public id>.json in the blob store. Pending ones within "
        "ENERGY_POLL_SECONDS, all of them nightly at 03:00 UTC."
    ),
)
def energy_disclosures(
    context: dg.AssetExecutionContext,
    config: DisclosuresConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    http: HttpResource,
    energy: EnergyResource,
) -> dg.MaterializeResult:
    report = compile_due(
        db.engine,
        http.session(),
        blobs.store,
        ledger_url=energy.ledger_url,
        all=config.all,
        run_id=context.run.run_id,
        progress=context.log.info,
        limit=config.limit,
    )
    log_stage(context.log, report)
    with db.connect() as conn:
        states = conn.execute(
            sa.text("SELECT state::text, count(*) FROM energy.disclosure GROUP BY state ORDER BY state")
        ).all()
        newest = conn.exec_driver_sql(
            "SELECT public_id, sub, name, state::text, begin, \"end\", coalesce(error_kind, ''), "
            "coalesce(blob_key, '') FROM energy.disclosure ORDER BY id DESC LIMIT 10"
        ).all()
    total = sum(count for _, count in states)
    return dg.MaterializeResult(
        metadata=stage_metadata(
            report,
            total,
            compiled_all=config.all,
            **{f"state_{state.lower()}": count for state, count in states},
            newest_disclosures=md_table(
                ["public id", "sub", "name", "state", "begin", "end", "error", "document"], newest
            ),
        )
    )


@dg.asset_check(
    asset=energy_disclosures,
    description="No disclosure's last compile failed (warns; it is retried by the next compile).",
)
def energy_disclosures_compiled(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT public_id, sub, state::text AS state, error_kind, error FROM energy.disclosure "
        "WHERE error IS NOT NULL ORDER BY id",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=energy_disclosures,
    description=f"The {BLOB_SAMPLE} newest AVAILABLE disclosures have their JSON document in the blob store.",
)
def energy_disclosure_documents_stored(db: DatabaseResource, blobs: BlobStoreResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT public_id, blob_key FROM energy.disclosure WHERE state = 'AVAILABLE' AND blob_key IS NOT NULL "
            f"ORDER BY compiled DESC LIMIT {BLOB_SAMPLE}"
        ).all()
    return stored_blobs_check(blobs.store, rows, item="disclosure")


disclosures_checks = [energy_disclosures_compiled, energy_disclosure_documents_stored]
