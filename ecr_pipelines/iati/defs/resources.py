"""The IATI service's resources: the index source, the validator and Solr, from the environment.

``IATI_SOURCE`` picks the index source: ``bds`` (default; the Bulk Data Service's
``IATI_DATASET_INDEX_URL`` and ``IATI_REPORTING_ORG_INDEX_URL``) or ``registry`` (the legacy CKAN
``IATI_REGISTRY_URL``). ``IATI_VALIDATOR=local`` (default) validates against the bundled
2.01/2.02/2.03 XSDs; ``api`` calls the IATI Validator API, and validates locally the files the API
refuses as too large (``IATI_VALIDATOR_TOO_LARGE=local``, default; ``skip`` leaves them without a
report, as the refresher did). The safety-check settings live with the validator, because they
steer what the validate stage does. ``SOLR_URL`` and the collection names point the Solr stage at
its server; a deployment still configured for the refresher (its ``SOLR_API_URL`` and nothing
else) keeps writing to the refresher's ``<name>_solrize`` collections. Every value is read and
checked when the definitions load
(``ecr_pipelines.resources.env.from_env``): a bad ``IATI_SOURCE`` or ``IATI_VALIDATOR`` fails
loading with a message that names it.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dagster as dg
import requests
from pydantic import PrivateAttr

from ecr_pipelines.iati.clients import BdsIndexClient, RegistryIndexClient
from ecr_pipelines.iati.index import IndexSnapshot, apply_limits, parse_name_list
from ecr_pipelines.iati.solr import (
    DEFAULT_COLLECTION_NAMES,
    LEGACY_COLLECTION_NAMES,
    LEGACY_SOLR_URL_VARIABLE,
    SolrClient,
)
from ecr_pipelines.iati.stages.safety import SAFETY_CHECK_PERIOD_HOURS, SAFETY_CHECK_THRESHOLD
from ecr_pipelines.iati.validator_api import DEFAULT_KEY_NAME, LocalValidator, Validator, ValidatorApiClient
from ecr_pipelines.lib.ckan import CkanClient
from ecr_pipelines.lib.http import FetchError, make_session
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources.env import choice, from_env

DEFAULT_REGISTRY_URL = "https://iatiregistry.org"


SOURCES = ("bds", "registry")


class IatiResource(dg.ConfigurableResource):
    """Where the IATI indices come from, and how the sync and the downloads behave."""

    source: str = "bds"
    dataset_index_url: str = ""
    reporting_org_index_url: str = ""
    registry_url: str = DEFAULT_REGISTRY_URL
    registry_request_delay: float = 1.0
    registry_page_size: int = 1000
    download_workers: int = 10
    publisher_safety_percentage: float = 50.0
    document_safety_percentage: float = 50.0
    limit_to_reporting_orgs: str = ""
    limit_to_datasets: str = ""

    def _source(self) -> str:
        source = self.source.strip().lower()
        if source not in SOURCES:
            raise ValueError(f"IATI_SOURCE must be one of {', '.join(SOURCES)}, not {self.source!r}")
        return source

    def index_client(self, session: requests.Session) -> BdsIndexClient | RegistryIndexClient:
        if self._source() == "bds":
            return BdsIndexClient(session, self.dataset_index_url, self.reporting_org_index_url)
        ckan = CkanClient(session, self.registry_url, delay=self.registry_request_delay)
        return RegistryIndexClient(ckan, rows=self.registry_page_size)

    def load_index(self, session: requests.Session, progress: Callable[[str], None]) -> IndexSnapshot:
        client = self.index_client(session)
        snapshot = client.snapshot() if isinstance(client, BdsIndexClient) else client.snapshot(progress)
        return apply_limits(
            snapshot, parse_name_list(self.limit_to_reporting_orgs), parse_name_list(self.limit_to_datasets)
        )

    def missing_settings(self) -> list[str]:
        """The variables the index source still needs (empty: configured)."""
        if self._source() == "registry":
            return []
        return [
            env
            for env, value in (
                ("IATI_DATASET_INDEX_URL", self.dataset_index_url),
                ("IATI_REPORTING_ORG_INDEX_URL", self.reporting_org_index_url),
            )
            if not value
        ]

    def change_token(self, session: requests.Session) -> str:
        return self.index_client(session).change_token()

    def describe(self) -> str:
        if self._source() == "bds":
            return f"Bulk Data Service index {self.dataset_index_url or '(IATI_DATASET_INDEX_URL not set)'}"
        return f"CKAN registry {self.registry_url}"


BACKENDS = ("local", "api")
DEFAULT_API_TIMEOUT = 600.0
# What api mode does with a file the Validator API refuses as too large (413): validate it with
# the local schema validator, or store the 413 without a report as the refresher did.
TOO_LARGE_CHOICES = ("local", "skip")


class ValidatorConfigError(ValueError):
    """The validator settings cannot be used as configured."""


class IatiValidatorResource(dg.ConfigurableResource):
    """How IATI documents are validated, and when a publisher is black-flagged."""

    backend: str = "local"
    api_url: str = ""
    schema_api_url: str = ""
    api_key_name: str = DEFAULT_KEY_NAME
    api_key_value: str | None = None
    api_timeout: float = DEFAULT_API_TIMEOUT
    too_large: str = "local"
    safety_check_threshold: int = SAFETY_CHECK_THRESHOLD
    safety_check_period_hours: float = SAFETY_CHECK_PERIOD_HOURS
    safety_check_hold_hours: float | None = None
    black_flag_mail_to: str = ""

    def backend_name(self) -> str:
        name = self.backend.strip().lower()
        if name not in BACKENDS:
            raise ValidatorConfigError(
                f"IATI_VALIDATOR must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        return name

    def too_large_choice(self) -> str:
        choice = self.too_large.strip().lower()
        if choice not in TOO_LARGE_CHOICES:
            raise ValidatorConfigError(
                f"IATI_VALIDATOR_TOO_LARGE must be one of {', '.join(TOO_LARGE_CHOICES)}, not {self.too_large!r}"
            )
        return choice

    @property
    def hold_hours(self) -> float:
        """How long a schema-invalid document waits for the safety check before full validation."""
        hold = (
            self.safety_check_period_hours
            if self.safety_check_hold_hours is None
            else self.safety_check_hold_hours
        )
        return max(0.0, hold)

    def mail_recipients(self) -> list[str]:
        return [
            address.strip()
            for address in self.black_flag_mail_to.replace(";", ",").split(",")
            if address.strip()
        ]

    def validator(self, session_factory: Callable[..., requests.Session]) -> Validator:
        """The configured back end; ``session_factory`` is ``HttpResource.session`` (only the API
        back end calls it, with the validator's longer read timeout)."""
        if self.backend_name() == "local":
            return LocalValidator()
        missing = [
            env
            for env, value in (
                ("IATI_VALIDATOR_API_URL", self.api_url),
                ("IATI_SCHEMA_VALIDATION_API_URL", self.schema_api_url),
            )
            if not value
        ]
        if missing:
            raise ValidatorConfigError(f"IATI_VALIDATOR=api needs {' and '.join(missing)}")
        fallback = LocalValidator() if self.too_large_choice() == "local" else None
        session = session_factory(read_timeout=self.api_timeout)
        try:
            return ValidatorApiClient(
                session,
                self.schema_api_url,
                self.api_url,
                key_name=self.api_key_name,
                key_value=self.api_key_value,
                too_large_fallback=fallback,
            )
        except FetchError as exc:  # a URL that is not http(s)
            raise ValidatorConfigError(f"validator API URL refused: {exc}") from exc

    def describe(self) -> str:
        if self.backend_name() == "local":
            return "local schema validator (bundled IATI 2.01/2.02/2.03 XSDs)"
        too_large = (
            "files it refuses as too large validated locally (schema only)"
            if self.too_large_choice() == "local"
            else "files it refuses as too large left without a report"
        )
        return f"IATI Validator API {self.api_url or '(IATI_VALIDATOR_API_URL not set)'}; {too_large}"


class SolrResource(dg.ConfigurableResource):
    """The Solr server of the IATI index (stage ``iati_solr_index``).

    ``url`` is the base URL up to ``/solr`` (``SOLR_URL``); each collection is ``<url>/<name>``
    with the names from ``SOLR_ACTIVITY_COLLECTION`` / ``SOLR_TRANSACTION_COLLECTION`` /
    ``SOLR_BUDGET_COLLECTION`` (defaults: the production names ``activity``, ``transaction``,
    ``budget``; the legacy refresher wrote to the aliases ``<name>_solrize``, which are the
    defaults when only its ``SOLR_API_URL`` is set: see ``build_solr_resource``). Optional basic auth
    from ``SOLR_USER`` / ``SOLR_PASSWORD``. ``timeout`` is the read timeout of one request,
    ``batch_size`` / ``max_batch_bytes`` bound one update request.
    """

    url: str = ""
    activity_collection: str = DEFAULT_COLLECTION_NAMES["activity"]
    transaction_collection: str = DEFAULT_COLLECTION_NAMES["transaction"]
    budget_collection: str = DEFAULT_COLLECTION_NAMES["budget"]
    user: str | None = None
    password: str | None = None
    connect_timeout: float = 10.0
    timeout: float = 600.0
    retries: int = 2
    batch_size: int = 500
    max_batch_bytes: int = 20 * 1024 * 1024

    _client: SolrClient | None = PrivateAttr(default=None)

    @property
    def collection_names(self) -> dict[str, str]:
        return {
            "activity": self.activity_collection,
            "transaction": self.transaction_collection,
            "budget": self.budget_collection,
        }

    def client(self) -> SolrClient:
        if self._client is None:
            auth = (self.user, self.password or "") if self.user else None
            session = make_session(
                connect_timeout=self.connect_timeout, read_timeout=self.timeout, retries=self.retries
            )
            self._client = SolrClient(
                self.url,
                self.collection_names,
                session=session,
                auth=auth,
                connect_timeout=self.connect_timeout,
                timeout=self.timeout,
                batch_size=self.batch_size,
                max_batch_bytes=self.max_batch_bytes,
            )
        return self._client

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def describe(self) -> str:
        return self.client().describe() if self.configured else "Solr (SOLR_URL not set)"

    def ping(self) -> None:
        self.client().ping()

    def delete_document(self, document_id: str) -> None:
        self.client().delete_document(document_id)

    def add(self, collection: str, docs: Iterable[Mapping[str, Any]]) -> int:
        return self.client().add(collection, docs)

    def commit(self) -> None:
        self.client().commit()

    def count_document(self, collection: str, document_id: str) -> int:
        return self.client().count_document(collection, document_id)


def build_iati_resource() -> IatiResource:
    """The index source and sync settings (no secrets: every value is shown as configured)."""
    return from_env(
        IatiResource,
        {
            "source": ("IATI_SOURCE", choice(*SOURCES)),
            "dataset_index_url": ("IATI_DATASET_INDEX_URL", str),
            "reporting_org_index_url": ("IATI_REPORTING_ORG_INDEX_URL", str),
            "registry_url": ("IATI_REGISTRY_URL", str),
            "registry_request_delay": ("IATI_REGISTRY_REQUEST_DELAY", float),
            "download_workers": ("IATI_DOWNLOAD_WORKERS", int),
            "publisher_safety_percentage": ("IATI_PUBLISHER_SAFETY_PERCENTAGE", float),
            "document_safety_percentage": ("IATI_DOCUMENT_SAFETY_PERCENTAGE", float),
            "limit_to_reporting_orgs": ("LIMIT_TO_REPORTING_ORGS", str),
            "limit_to_datasets": ("LIMIT_TO_DATASETS", str),
        },
    )


def build_validator_resource() -> IatiValidatorResource:
    """The validator and safety-check settings. URLs and the key travel as ``dg.EnvVar``."""
    return from_env(
        IatiValidatorResource,
        {
            "backend": ("IATI_VALIDATOR", choice(*BACKENDS)),
            "api_timeout": ("IATI_VALIDATOR_API_TIMEOUT", float),
            "too_large": ("IATI_VALIDATOR_TOO_LARGE", choice(*TOO_LARGE_CHOICES)),
            "safety_check_threshold": ("IATI_SAFETY_CHECK_THRESHOLD", int),
            "safety_check_period_hours": ("IATI_SAFETY_CHECK_PERIOD_HOURS", float),
            "safety_check_hold_hours": ("IATI_SAFETY_CHECK_HOLD_HOURS", float),
        },
        secrets={
            "api_url": "IATI_VALIDATOR_API_URL",
            "schema_api_url": "IATI_SCHEMA_VALIDATION_API_URL",
            "api_key_name": "IATI_VALIDATOR_API_KEY_NAME",
            "api_key_value": "IATI_VALIDATOR_API_KEY_VALUE",
            "black_flag_mail_to": "IATI_BLACK_FLAG_MAIL_TO",
        },
    )


def build_solr_resource() -> SolrResource:
    """Solr. ``SOLR_URL`` (it may carry credentials), ``SOLR_USER`` and ``SOLR_PASSWORD`` are
    passed as ``EnvVar`` so the UI shows their names only.

    The refresher's settings keep working: without ``SOLR_URL``, its ``SOLR_API_URL`` (the same
    base URL, with the refresher's trailing slash) is the server, and the collections default to
    the refresher's ``activity_solrize``, ``transaction_solrize`` and ``budget_solrize``, so a
    deployment that only carried over its old variables indexes where the Datastore reads.
    ``SOLR_URL`` and the ``SOLR_*_COLLECTION`` variables win whenever they are set.
    """
    legacy = env_str("SOLR_URL") is None and env_str(LEGACY_SOLR_URL_VARIABLE) is not None
    url_variable = LEGACY_SOLR_URL_VARIABLE if legacy else "SOLR_URL"
    defaults = (
        {f"{logical}_collection": name for logical, name in LEGACY_COLLECTION_NAMES.items()} if legacy else {}
    )
    return from_env(
        SolrResource,
        {
            "activity_collection": ("SOLR_ACTIVITY_COLLECTION", str),
            "transaction_collection": ("SOLR_TRANSACTION_COLLECTION", str),
            "budget_collection": ("SOLR_BUDGET_COLLECTION", str),
            "connect_timeout": ("SOLR_CONNECT_TIMEOUT", float),
            "timeout": ("SOLR_TIMEOUT", float),
            "retries": ("SOLR_RETRIES", int),
            "batch_size": ("SOLR_BATCH_SIZE", int),
            "max_batch_bytes": ("SOLR_MAX_BATCH_BYTES", int),
        },
        secrets={"url": url_variable, "user": "SOLR_USER", "password": "SOLR_PASSWORD"},
        defaults=defaults,
    )


def build_iati_resources() -> dict[str, Any]:
    """Every IATI resource, keyed as the assets name them."""
    return {
        "iati": build_iati_resource(),
        "iati_validator": build_validator_resource(),
        "solr": build_solr_resource(),
    }
