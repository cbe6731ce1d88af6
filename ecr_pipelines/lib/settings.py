"""Where the project keeps its local state, and how environment variables are read.

Every environment variable the project reads is declared in ``ENV_VARS`` so that the README
table and the ``python -m ecr_pipelines env`` command stay in step with the code.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ecr_pipelines import __version__

N = TypeVar("N", int, float)

USER_AGENT = f"ecr-pipelines/{__version__} (+https://github.com/eea/ecr_pipelines)"

SERVICE_SCHEMAS: tuple[str, ...] = ("registry", "iati", "ckan", "datastore", "energy")


@dataclass(frozen=True)
class EnvVarDoc:
    name: str
    default: str
    description: str
    secret: bool = False


ENV_VARS: tuple[EnvVarDoc, ...] = (
    EnvVarDoc("ECR_HOME", "./.ecr", "Local state: embedded Postgres, blobs, outbox, Dagster home."),
    EnvVarDoc(
        "DATABASE_URL",
        "embedded Postgres under ECR_HOME/pgdata",
        "Application database (any postgres:// or postgresql[+driver]:// URL, `?host=/socket/dir` allowed).",
        secret=True,
    ),
    EnvVarDoc(
        "DAGSTER_PG_URL",
        "database `dagster` on the application server",
        "Dagster run/event/schedule storage, read by dagster.yaml.",
        secret=True,
    ),
    EnvVarDoc(
        "DAGSTER_HOME",
        "ECR_HOME/dagster_home",
        "Folder holding dagster.yaml (written to .env by `make demo`).",
    ),
    EnvVarDoc(
        "ECR_SQL_DIR", "./sql of the checkout", "Folder of the migration files (set in the Docker image)."
    ),
    EnvVarDoc(
        "BLOB_STORE_URL", "ECR_HOME/blobs", "`s3://bucket/prefix` or a local folder (path or file:// URL)."
    ),
    EnvVarDoc("S3_ENDPOINT_URL", "AWS", "Endpoint of an S3-compatible server (MinIO, moto, ...)."),
    EnvVarDoc("AWS_ACCESS_KEY_ID", "boto3 chain", "S3 credentials (standard boto3 variables).", secret=True),
    EnvVarDoc("AWS_SECRET_ACCESS_KEY", "boto3 chain", "S3 credentials.", secret=True),
    EnvVarDoc("AWS_REGION", "us-east-1", "S3 region."),
    EnvVarDoc(
        "SMTP_URL",
        "outbox folder ECR_HOME/outbox",
        "`smtp://user:pass@host:port` (`?starttls=true`), or `smtps://` for implicit TLS.",
        secret=True,
    ),
    EnvVarDoc("MAIL_FROM", "ecr-pipelines@localhost", "Sender address of every mail."),
    EnvVarDoc("ALERT_MAIL_TO", "(none)", "Comma-separated recipients of run-failure mails."),
    EnvVarDoc("HTTP_CONNECT_TIMEOUT", "10", "Seconds to connect to an upstream."),
    EnvVarDoc("HTTP_READ_TIMEOUT", "60", "Seconds between bytes from an upstream."),
    EnvVarDoc("HTTP_RETRIES", "3", "Retries on connection errors and 429/502/503/504 answers."),
    EnvVarDoc("HTTP_MAX_DOWNLOAD_BYTES", "524288000", "Size cap of one streamed download (500 MiB)."),
    EnvVarDoc(
        "HTTPS_VERIFY", "true", "TLS certificate verification for upstream calls (`false` to switch off)."
    ),
    # Registry cache: the legacy service's names, so an existing deployment carries over.
    EnvVarDoc("BASE_URL_FGAS", "(none)", "F-gas registry root; the API is `<root>/rest/api/latest/...`."),
    EnvVarDoc("BASE_URL_ODS", "(none)", "ODS registry root (undertakings and licences)."),
    EnvVarDoc("API_USER", "(none)", "`user` header for both registries.", secret=True),
    EnvVarDoc("API_PASSWORD", "(none)", "`password` header for both registries.", secret=True),
    EnvVarDoc("BDR_API_URL", "(none)", "Legacy BDR registry API (old companies per obligation)."),
    EnvVarDoc("BDR_API_KEY", "(none)", "`Authorization` header for the BDR registry.", secret=True),
    EnvVarDoc("BDR_ENDPOINT_URL", "(none: BDR calls skipped)", "BDR reporting portal (collections)."),
    EnvVarDoc("BDR_ENDPOINT_USER", "(none)", "BDR portal Basic-auth user.", secret=True),
    EnvVarDoc("BDR_ENDPOINT_PASSWORD", "(none)", "BDR portal Basic-auth password.", secret=True),
    EnvVarDoc(
        "MANUAL_VERIFY_ALL_COMPANIES",
        "ODS,FGAS",
        "Domains matched against old companies (and whose old companies are synced).",
    ),
    EnvVarDoc("AUTO_VERIFY_ALL_COMPANIES", "(empty)", "Domains verified as new without matching."),
    EnvVarDoc(
        "AUTO_VERIFY_NEW_COMPANIES",
        "(empty)",
        "Domains whose companies without candidates are verified as new.",
    ),
    EnvVarDoc("FUZZ_LIMIT", "75", "Minimum rounded fuzzy ratio of two lower-cased company names."),
    EnvVarDoc(
        "COMPANIES_EXCEPTED_FROM_CHECKS",
        "(empty)",
        "Comma-separated external ids that always pass the checks.",
    ),
    EnvVarDoc(
        "REGISTRY_PATCHES_FILE",
        "(none)",
        "JSON/YAML file with PATCH_COMPANIES, PATCH_USERS, PATCH_GB_OLD_REPR, PATCH_LICENCES.",
    ),
    EnvVarDoc(
        "REGISTRY_POLL_SECONDS",
        "120",
        "Seconds between incremental syncs of the F-gas/ODS registries (registry_poll_sensor).",
    ),
    EnvVarDoc(
        "SEND_MATCHING_MAILS",
        "false",
        "`true` (or `True`) mails the `registry.mail_address` list on verifications; needs `BDR_ENDPOINT_URL`.",
    ),
    # CKAN packager.
    EnvVarDoc(
        "CKAN_API_KEY",
        "(none)",
        "Portal-wide CKAN API key sent as `Authorization` to `datastore_search` (a request's own key wins).",
        secret=True,
    ),
    EnvVarDoc("CKAN_PAGE_SIZE", "5000", "Rows per `datastore_search` page when packaging."),
    EnvVarDoc(
        "CKAN_SLOW_REQUEST",
        "50000",
        "Requests for more rows than this (or with no limit) go to the slow queue.",
    ),
    EnvVarDoc(
        "CKAN_CACHE_TIME",
        "86400",
        "Seconds an identical request (all parameters but `email`) reuses a stored package.",
    ),
    EnvVarDoc(
        "CKAN_PACKAGE_TTL_DAYS",
        "7",
        "Days a package is kept (the daily clean-up deletes older ones, except pinned GBIF exports).",
    ),
    EnvVarDoc(
        "CKAN_DOWNLOAD_URL_TEMPLATE",
        "the blob's file:// URL",
        "Link in the mail for a local blob store: `{zip_file_name}`, `{key}`, `{ckan_host}` (S3 gets a presigned URL).",
    ),
    EnvVarDoc(
        "CKAN_MAIL_TEMPLATES",
        "bundled texts",
        "YAML or JSON file overriding the mail templates (`subject`, `body`, `body_html`, `doi_body`, ...).",
    ),
    EnvVarDoc(
        "CKAN_DWC_CONFIG",
        "bundled (Occurrence + Multimedia)",
        "YAML or JSON file: the Darwin Core Archive's extensions and field mapping.",
    ),
    EnvVarDoc(
        "CKAN_ANONYMIZE_EMAILS",
        "false",
        "`true` stores statistics e-mails as the legacy's per-domain bcrypt hashes.",
    ),
    EnvVarDoc("CKAN_POLL_SECONDS", "15", "Seconds between looks at the request queue (ckan_queue_sensor)."),
    EnvVarDoc(
        "CKAN_PACKAGE_WORKERS",
        "2",
        "Processes that fetch and encode the pages of a large CSV/TSV download (0: the run's own process).",
    ),
    # Data store.
    EnvVarDoc(
        "CSV_SAMPLE_INFER_LINES",
        "100000",
        "Rows of an uploaded CSV the column types are inferred from (`datastore infer`, the upload check).",
    ),
    EnvVarDoc(
        "DSS_COMPANIES_HOUSE_ACCOUNTS_URL",
        "http://download.companieshouse.gov.uk/en_accountsdata.html",
        "Companies House accounts listing page (HTML): the newest `Accounts_Bulk_Data-YYYY-MM-DD.zip` is downloaded.",
    ),
    EnvVarDoc(
        "DSS_HMRC_EXPORTERS_URL",
        "https://www.uktradeinfo.com/Statistics/Pages/DataDownloads.aspx",
        "HMRC exporters listing page (HTML): the newest `exportersYYMM.zip` is downloaded.",
    ),
    EnvVarDoc(
        "DSS_ONS_POSTCODE_DIRECTORY_URL",
        "the geoportal's Hub Search API (see the data store section)",
        "ONS Postcode Directory listing: an ArcGIS Hub search answer (JSON), no browser.",
    ),
    EnvVarDoc(
        "DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL",
        "https://www.arcgis.com/sharing/rest/content/items/{id}/data",
        "Where an ONS listing item's file is fetched (`{id}`: the ArcGIS item id).",
    ),
    EnvVarDoc(
        "DATASTORE_MAX_DOWNLOAD_BYTES",
        "21474836480",
        "Largest source file a downloader stores (20 GiB); a bigger one fails that source only.",
    ),
    EnvVarDoc(
        "DATASTORE_POLL_SECONDS",
        "60",
        "Seconds between looks for new files under `datastore/datasets/` and `datastore/uploads/`.",
    ),
    EnvVarDoc(
        "DATASTORE_UPLOAD_AUTO_VERIFY",
        "false",
        "`true`: an upload that passes the check is loaded with its inferred column types, without `datastore_upload_job`.",
    ),
    EnvVarDoc(
        "DATAFLOW_BASE_URL",
        "(none: no trigger)",
        "data-flow (Airflow) root; set, every load that changed a table triggers its DAG (HAWK-signed).",
    ),
    EnvVarDoc(
        "DATAFLOW_HAWK_ID",
        "(none)",
        "HAWK id of the data-flow calls.",
    ),
    EnvVarDoc(
        "DATAFLOW_HAWK_KEY",
        "(none)",
        "HAWK key of the data-flow calls.",
        secret=True,
    ),
    EnvVarDoc(
        "DATAFLOW_UPLOADER_DAG_ID",
        "DSSGenericPipeline",
        "The data-flow DAG a load triggers.",
    ),
    EnvVarDoc(
        "DATAFLOW_TIMEOUT_SECONDS",
        "1800",
        "How long an upload waits for its DAG run to succeed before it is `failed` (the legacy: 360 polls of 5 s).",
    ),
    # Energy data hub: the legacy datahub-service's names.
    EnvVarDoc(
        "ELOVERBLIK_SERVICE_URL",
        "(none: imports skipped)",
        "ElOverblik third-party API root (e.g. `https://api.eloverblik.dk/ThirdPartyApi`).",
    ),
    EnvVarDoc(
        "ELOVERBLIK_TOKEN",
        "(none)",
        "ElOverblik refresh token; the access token fetched with it is reused for an hour.",
        secret=True,
    ),
    EnvVarDoc(
        "ENERGY_TYPE_SERVICE_URL",
        "(none: production points stay without codes)",
        "EnergyTypeService root (`/get-energy-type`, `/get-emissions`).",
    ),
    EnvVarDoc(
        "LEDGER_URL",
        "(none: nothing retired)",
        "Ledger REST root (`/state/<address>`), read when disclosures compile.",
    ),
    EnvVarDoc(
        "FIRST_MEASUREMENT_TIME",
        "(none: first of the previous month)",
        "Where a metering point without measurements starts (ISO 8601, UTC when no offset).",
    ),
    EnvVarDoc(
        "LAST_MEASUREMENT_TIME",
        "(none: today 00:00)",
        "No measurement at or after this time is imported (ISO 8601).",
    ),
    EnvVarDoc("GGO_EXPIRE_TIME", "90", "Days from a GGO's issue to its expiry."),
    EnvVarDoc(
        "ENERGY_POLL_SECONDS",
        "60",
        "Seconds between looks for due metering-point imports, pending disclosures and webhooks to send.",
    ),
    # The HTTP contracts (python -m ecr_pipelines api).
    EnvVarDoc(
        "API_HOST",
        "127.0.0.1",
        "Interface the HTTP contracts application listens on (`0.0.0.0` in a container).",
    ),
    EnvVarDoc("API_PORT", "8000", "Its port."),
    EnvVarDoc("API_WORKERS", "2", "uvicorn worker processes."),
    EnvVarDoc(
        "API_TOKEN",
        "(none: every registry API request refused)",
        "The registry API's `Authorization` header value (the legacy's name), compared in constant time.",
        secret=True,
    ),
    EnvVarDoc(
        "CKAN_SECRET",
        "(none: every intake request refused)",
        "The `secret` form field CKAN sends with each packager request (the legacy's SECRET).",
        secret=True,
    ),
    EnvVarDoc("DSS_PAGINATION_SIZE", "1000", "Rows per page of the data-store API."),
    EnvVarDoc(
        "DAGSTER_WEBSERVER_URL",
        "(none: /sync and /match answer that they cannot start runs)",
        "Dagster's webserver (`http://host:3000`), whose GraphQL API starts the registry's runs for `/sync/*` and `/match/*`.",
    ),
    # IATI refresher.
    EnvVarDoc(
        "IATI_SOURCE", "bds", "Index source: `bds` (Bulk Data Service) or `registry` (legacy CKAN registry)."
    ),
    EnvVarDoc(
        "IATI_DATASET_INDEX_URL",
        "(none; required for bds)",
        "BDS dataset index (JSON, HEAD must carry an ETag).",
    ),
    EnvVarDoc("IATI_REPORTING_ORG_INDEX_URL", "(none; required for bds)", "BDS reporting-org index."),
    EnvVarDoc("IATI_REGISTRY_URL", "https://iatiregistry.org", "CKAN site, or its `/api/3[/action]` root."),
    EnvVarDoc(
        "IATI_REGISTRY_REQUEST_DELAY", "1.0", "Seconds between registry calls (politeness, as the refresher)."
    ),
    EnvVarDoc("IATI_DOWNLOAD_WORKERS", "10", "Concurrent downloads (at most 32, the HTTP pool size)."),
    EnvVarDoc(
        "IATI_PROCESSES",
        "the CPUs, at most 8",
        "Worker processes of the CPU-bound IATI stages (validation with the local validator, clean, flatten, "
        "lake), started when a run's due documents weigh 32 MiB or more; 1: the run's own process only.",
    ),
    EnvVarDoc(
        "IATI_PUBLISHER_SAFETY_PERCENTAGE",
        "50",
        "Refuse a sync whose index has fewer than this % of stored publishers.",
    ),
    EnvVarDoc("IATI_DOCUMENT_SAFETY_PERCENTAGE", "50", "The same for documents (0 turns a valve off)."),
    EnvVarDoc(
        "IATI_POLL_SECONDS",
        "60",
        "Seconds between looks at the index ETags and at the stages' due work (the refresher polled every 60 s).",
    ),
    EnvVarDoc("LIMIT_TO_REPORTING_ORGS", "(empty: all)", "Comma-separated publisher short names to sync."),
    EnvVarDoc("LIMIT_TO_DATASETS", "(empty: all)", "Comma-separated dataset names to sync."),
    EnvVarDoc("IATI_VALIDATOR", "local", "`local` (bundled XSDs, no network) or `api` (IATI Validator API)."),
    EnvVarDoc("IATI_VALIDATOR_API_URL", "(none)", "Full validation endpoint (`.../api/pub/validate`)."),
    EnvVarDoc(
        "IATI_SCHEMA_VALIDATION_API_URL",
        "(none)",
        "Schema-only endpoint (`.../api/pvt/schema-validate-file`).",
    ),
    EnvVarDoc("IATI_VALIDATOR_API_KEY_NAME", "x-functions-key", "Name of the validator's key header."),
    EnvVarDoc("IATI_VALIDATOR_API_KEY_VALUE", "(none)", "Value of the validator's key header.", secret=True),
    EnvVarDoc("IATI_VALIDATOR_API_TIMEOUT", "600", "Read timeout (s) of validator calls."),
    EnvVarDoc(
        "IATI_VALIDATOR_TOO_LARGE",
        "local",
        "With `api`: a file the API refuses as too large (413) is validated locally, schema only "
        "(`local`), or left without a report as the refresher did (`skip`).",
    ),
    EnvVarDoc(
        "IATI_SAFETY_CHECK_THRESHOLD",
        "100",
        "Flag a publisher with more schema-invalid documents than this...",
    ),
    EnvVarDoc("IATI_SAFETY_CHECK_PERIOD_HOURS", "2", "...downloaded within this many hours."),
    EnvVarDoc(
        "IATI_SAFETY_CHECK_HOLD_HOURS",
        "the period",
        "How long a new schema-invalid document waits before full validation.",
    ),
    EnvVarDoc("IATI_BLACK_FLAG_MAIL_TO", "(empty)", "Comma-separated recipients of new black-flag mails."),
    EnvVarDoc("SOLR_URL", "(none)", "Solr base URL up to `/solr` (may carry credentials).", secret=True),
    EnvVarDoc(
        "SOLR_ACTIVITY_COLLECTION",
        "activity",
        "Activity collection or alias (the refresher used `activity_solrize`).",
    ),
    EnvVarDoc("SOLR_TRANSACTION_COLLECTION", "transaction", "Transaction collection or alias."),
    EnvVarDoc("SOLR_BUDGET_COLLECTION", "budget", "Budget collection or alias."),
    EnvVarDoc(
        "SOLR_API_URL",
        "(none)",
        "The refresher's Solr URL: used when `SOLR_URL` is unset, and then the collections default "
        "to `activity_solrize`, `transaction_solrize`, `budget_solrize`.",
        secret=True,
    ),
    EnvVarDoc("SOLR_USER", "(none)", "Solr basic-auth user.", secret=True),
    EnvVarDoc("SOLR_PASSWORD", "(none)", "Solr basic-auth password.", secret=True),
    EnvVarDoc("SOLR_CONNECT_TIMEOUT", "10", "Seconds to connect to Solr."),
    EnvVarDoc("SOLR_TIMEOUT", "600", "Seconds to wait for one Solr request."),
    EnvVarDoc("SOLR_RETRIES", "2", "Retries on connection errors and 429/502/503/504 from Solr."),
    EnvVarDoc("SOLR_BATCH_SIZE", "500", "Documents per update request at most."),
    EnvVarDoc("SOLR_MAX_BATCH_BYTES", "20971520", "Bytes per update request at most."),
)


def ecr_home() -> Path:
    """The folder for local state; created on first use and always absolute."""
    home = Path(os.environ.get("ECR_HOME") or ".ecr").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def env_str(name: str, default: str | None = None) -> str | None:
    """An environment variable, with empty strings treated as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_number(name: str, default: N, kind: Callable[[str], N] = int) -> N:
    """A numeric variable (``kind``: int or float), ``default`` when unset; a value that is not one
    raises ``ValueError`` naming the variable, so a process refuses to start on a typo."""
    raw = env_str(name)
    if raw is None:
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name}={raw!r} is not {what}") from None


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}
