"""The IATI service's settings, from the environment.

``IATI_SOURCE`` picks the index source: ``bds`` (default; the Bulk Data Service's
``IATI_DATASET_INDEX_URL`` and ``IATI_REPORTING_ORG_INDEX_URL``) or ``registry`` (the legacy
CKAN ``IATI_REGISTRY_URL``). ``IATI_DOWNLOAD_WORKERS`` sets the download concurrency,
``IATI_PUBLISHER_SAFETY_PERCENTAGE`` / ``IATI_DOCUMENT_SAFETY_PERCENTAGE`` the safety valves,
``LIMIT_TO_REPORTING_ORGS`` / ``LIMIT_TO_DATASETS`` (comma-separated short names) restrict the
sync to a few publishers or datasets, and ``IATI_REGISTRY_REQUEST_DELAY`` paces registry calls.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg
import requests

from ecr_pipelines.iati.ckan import CkanClient
from ecr_pipelines.iati.clients import BdsIndexClient, RegistryIndexClient
from ecr_pipelines.iati.index import IndexSnapshot, apply_limits, parse_name_list
from ecr_pipelines.settings import env_str

SOURCES = ("bds", "registry")
DEFAULT_REGISTRY_URL = "https://iatiregistry.org"


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

    def change_token(self, session: requests.Session) -> str:
        return self.index_client(session).change_token()

    def describe(self) -> str:
        if self._source() == "bds":
            return f"Bulk Data Service index {self.dataset_index_url or '(IATI_DATASET_INDEX_URL not set)'}"
        return f"CKAN registry {self.registry_url}"


# field name -> (environment variable, parser)
ENV_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "source": ("IATI_SOURCE", str),
    "dataset_index_url": ("IATI_DATASET_INDEX_URL", str),
    "reporting_org_index_url": ("IATI_REPORTING_ORG_INDEX_URL", str),
    "registry_url": ("IATI_REGISTRY_URL", str),
    "registry_request_delay": ("IATI_REGISTRY_REQUEST_DELAY", float),
    "download_workers": ("IATI_DOWNLOAD_WORKERS", int),
    "publisher_safety_percentage": ("IATI_PUBLISHER_SAFETY_PERCENTAGE", float),
    "document_safety_percentage": ("IATI_DOCUMENT_SAFETY_PERCENTAGE", float),
    "limit_to_reporting_orgs": ("LIMIT_TO_REPORTING_ORGS", str),
    "limit_to_datasets": ("LIMIT_TO_DATASETS", str),
}


def build_iati_resource() -> IatiResource:
    """The resource from the environment (no secrets: every value is shown as configured)."""
    values: dict[str, Any] = {}
    for fieldname, (env, parse) in ENV_FIELDS.items():
        raw = env_str(env)
        if raw is None:
            continue
        try:
            values[fieldname] = parse(raw.strip())
        except ValueError as exc:
            raise ValueError(f"{env}={raw!r} is not a valid {parse.__name__}") from exc
    return IatiResource(**values)
