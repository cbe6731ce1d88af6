"""The registry cache's resource, and what its asset modules share (group, tags, retry policy,
sending the mails a stage queued).

The resource keeps the legacy environment variable names, so an existing deployment keeps its
environment: ``BASE_URL_FGAS``, ``BASE_URL_ODS``, ``API_USER``, ``API_PASSWORD``, ``BDR_API_URL``,
``BDR_API_KEY``, ``BDR_ENDPOINT_URL``, ``BDR_ENDPOINT_USER``, ``BDR_ENDPOINT_PASSWORD``,
``MANUAL_VERIFY_ALL_COMPANIES``, ``AUTO_VERIFY_ALL_COMPANIES``, ``AUTO_VERIFY_NEW_COMPANIES``,
``FUZZ_LIMIT``, ``COMPANIES_EXCEPTED_FROM_CHECKS``, ``SEND_MATCHING_MAILS``. The legacy ``PATCH_*``
Python settings become one JSON or YAML file named by ``REGISTRY_PATCHES_FILE``.
"""

from typing import Any

import dagster as dg
import requests

from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.registry.clients import BdrEndpointClient, BdrRegistryClient, RegistryClient
from ecr_pipelines.registry.matching import DEFAULT_FUZZ_LIMIT, parse_domain_list
from ecr_pipelines.registry.operator import matching_mails_blocked, send_matching_mails
from ecr_pipelines.registry.patches import Patches, load_patches
from ecr_pipelines.registry.reference import FGAS, ODS
from ecr_pipelines.resources.env import env_or_default

GROUP = "registry"
SERVICE_TAG = {"ecr/service": "registry"}
TIMEZONE = "Europe/Copenhagen"

# Upstream calls already retry at the HTTP level; this covers what breaks around them (a dropped
# database connection, a worker restart) and leaves a clear failure after the third try.
# Deliberate failures (bad credentials, a refusal) are dg.Failure(allow_retries=False) and skip it.
UPSTREAM_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


class RegistryResource(dg.ConfigurableResource):
    """Upstream endpoints, credentials and matching settings of the registry cache."""

    base_url_fgas: str = ""
    base_url_ods: str = ""
    api_user: str = ""
    api_password: str = ""
    bdr_api_url: str = ""
    bdr_api_key: str = ""
    bdr_endpoint_url: str = ""
    bdr_endpoint_user: str = ""
    bdr_endpoint_password: str = ""
    manual_verify_all_companies: str = "ODS,FGAS"
    auto_verify_all_companies: str = ""
    auto_verify_new_companies: str = ""
    fuzz_limit: int = DEFAULT_FUZZ_LIMIT
    companies_excepted_from_checks: str = ""
    patches_file: str | None = None
    # Legacy default: no verification mails unless asked for (see operator.send_matching_mails).
    send_matching_mails: bool = False

    def configured_domains(self) -> list[str]:
        """The domains whose registry has a base URL (the others cannot be synced)."""
        return [d for d, url in ((FGAS, self.base_url_fgas), (ODS, self.base_url_ods)) if url]

    def registry(self, session: requests.Session, domain: str) -> RegistryClient:
        base = self.base_url_fgas if domain == FGAS else self.base_url_ods
        return RegistryClient(session, base, self.api_user, self.api_password, domain)

    def bdr_registry(self, session: requests.Session) -> BdrRegistryClient:
        return BdrRegistryClient(session, self.bdr_api_url, self.bdr_api_key)

    def bdr_endpoint(self, session: requests.Session) -> BdrEndpointClient:
        return BdrEndpointClient(
            session, self.bdr_endpoint_url, self.bdr_endpoint_user, self.bdr_endpoint_password
        )

    def matching_mails_blocked(self) -> str | None:
        return matching_mails_blocked(self.send_matching_mails, self.bdr_endpoint_url)

    def patches(self) -> Patches:
        return load_patches(self.patches_file)

    def excepted_ids(self) -> list[str]:
        return [part.strip() for part in self.companies_excepted_from_checks.split(",") if part.strip()]

    def manual_verify_domains(self) -> list[str]:
        return parse_domain_list(self.manual_verify_all_companies)

    def auto_verify_all_domains(self) -> list[str]:
        return parse_domain_list(self.auto_verify_all_companies)

    def auto_verify_new_domains(self) -> list[str]:
        return parse_domain_list(self.auto_verify_new_companies)


SECRET_FIELDS = {
    "api_user": "API_USER",
    "api_password": "API_PASSWORD",
    "bdr_api_key": "BDR_API_KEY",
    "bdr_endpoint_user": "BDR_ENDPOINT_USER",
    "bdr_endpoint_password": "BDR_ENDPOINT_PASSWORD",
}
PLAIN_FIELDS = {
    "base_url_fgas": "BASE_URL_FGAS",
    "base_url_ods": "BASE_URL_ODS",
    "bdr_api_url": "BDR_API_URL",
    "bdr_endpoint_url": "BDR_ENDPOINT_URL",
    "manual_verify_all_companies": "MANUAL_VERIFY_ALL_COMPANIES",
    "auto_verify_all_companies": "AUTO_VERIFY_ALL_COMPANIES",
    "auto_verify_new_companies": "AUTO_VERIFY_NEW_COMPANIES",
    "companies_excepted_from_checks": "COMPANIES_EXCEPTED_FROM_CHECKS",
    "patches_file": "REGISTRY_PATCHES_FILE",
}


def build_registry_resource() -> RegistryResource:
    """The resource from the environment: secrets as ``EnvVar``, the rest as plain values."""
    values: dict[str, Any] = {}
    for fieldname, env in SECRET_FIELDS.items():
        if env_str(env) is not None:
            values[fieldname] = env_or_default(env, "")
    for fieldname, env in PLAIN_FIELDS.items():
        if env_str(env) is not None:
            values[fieldname] = env_str(env)
    values["send_matching_mails"] = send_matching_mails(env_str("SEND_MATCHING_MAILS"))
    if env_str("FUZZ_LIMIT") is not None:
        values["fuzz_limit"] = int(env_str("FUZZ_LIMIT") or DEFAULT_FUZZ_LIMIT)
    return RegistryResource(**values)
