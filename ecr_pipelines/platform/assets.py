"""Platform health: is the shared layer (database, object storage, mail) usable by the services?"""

import time
import uuid

import dagster as dg
import sqlalchemy as sa

from ecr_pipelines.lib.database import redact
from ecr_pipelines.lib.migrations import head_version, status
from ecr_pipelines.lib.settings import SERVICE_SCHEMAS
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, MailResource

GROUP = "platform"


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "s3"},
    description=(
        "Health of the shared layer every service builds on: the database schema version against "
        "the migrations shipped with the code, the tables in each service schema, a write/read/delete "
        "round trip through the blob store, and where mail goes."
    ),
)
def platform_status(
    context: dg.AssetExecutionContext, db: DatabaseResource, blobs: BlobStoreResource, mail: MailResource
) -> dg.MaterializeResult:
    engine = db.engine  # refuses to run when the schema is not at the code's version
    migration_status = status(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT n.nspname, count(c.oid) FROM pg_namespace n "
                "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p') "
                "WHERE n.nspname = ANY(:schemas) GROUP BY n.nspname"
            ),
            {"schemas": list(SERVICE_SCHEMAS)},
        ).all()
        server_version = conn.scalar(sa.text("SHOW server_version"))
    tables = {schema: count for schema, count in rows}

    store = blobs.store
    probe_key = f"platform/probe-{uuid.uuid4().hex}.txt"
    started = time.perf_counter()
    store.put_bytes(probe_key, b"ok")
    round_trip_ok = store.get_bytes(probe_key) == b"ok"
    store.delete(probe_key)
    round_trip_ms = (time.perf_counter() - started) * 1000
    context.log.info(
        f"schema version {migration_status.current}/{head_version()}, blob round trip {round_trip_ms:.1f} ms"
    )

    table_md = "| schema | tables |\n|---|---|\n" + "\n".join(
        f"| {schema} | {tables.get(schema, 'missing')} |" for schema in SERVICE_SCHEMAS
    )
    return dg.MaterializeResult(
        metadata={
            "database": redact(str(engine.url.render_as_string(hide_password=False))),
            "postgres_version": server_version,
            "schema_version": migration_status.current,
            "code_schema_version": migration_status.head,
            "modified_migrations": ", ".join(migration_status.modified) or "none",
            "service_schemas": dg.MetadataValue.md(table_md),
            "blob_store": store.uri(),
            "blob_round_trip_ok": round_trip_ok,
            "blob_round_trip_ms": round(round_trip_ms, 1),
            "mail": "smtp" if mail.smtp_url else f"outbox {mail.outbox()}",
        }
    )


@dg.asset_check(asset=platform_status, description="Every service schema exists in the database.")
def service_schemas_exist(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        present = set(
            conn.scalars(
                sa.text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:s)"),
                {"s": list(SERVICE_SCHEMAS)},
            )
        )
    missing = sorted(set(SERVICE_SCHEMAS) - present)
    return dg.AssetCheckResult(passed=not missing, metadata={"missing": ", ".join(missing) or "none"})


@dg.asset_check(
    asset=platform_status,
    description="No migration file was edited after it was applied (a changed file never re-runs).",
)
def migrations_unmodified(db: DatabaseResource) -> dg.AssetCheckResult:
    modified = status(db.engine).modified
    return dg.AssetCheckResult(
        passed=not modified,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"modified": ", ".join(modified) or "none"},
    )
