"""The registry cache's settings, under the legacy environment variable names.

An existing deployment keeps its environment: ``BASE_URL_FGAS``, ``BASE_URL_ODS``, ``API_USER``,
``API_PASSWORD``, ``BDR_API_URL``, ``BDR_API_KEY``, ``BDR_ENDPOINT_URL``, ``BDR_ENDPOINT_USER``,
``BDR_ENDPOINT_PASSWORD``, ``MANUAL_VERIFY_ALL_COMPANIES``, ``AUTO_VERIFY_ALL_COMPANIES``,
``AUTO_VERIFY_NEW_COMPANIES``, ``FUZZ_LIMIT``, ``COMPANIES_EXCEPTED_FROM_CHECKS``. The legacy
``PATCH_*`` Python settings become one JSON or YAML file named by ``REGISTRY_PATCHES_FILE``.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import requests
import yaml

from ecr_pipelines.registry.clients import BdrEndpointClient, BdrRegistryClient, RegistryClient
from ecr_pipelines.registry.matching import parse_domain_list
from ecr_pipelines.registry.store import Patches
from ecr_pipelines.settings import env_bool, env_or_default, env_str

PATCH_KEYS = {
    "PATCH_COMPANIES": "companies",
    "PATCH_USERS": "users",
    "PATCH_GB_OLD_REPR": "gb_old_repr",
    "PATCH_LICENCES": "licences",
}


def load_patches(path: str | None) -> Patches:
    """Read a patches file: a mapping with any of PATCH_COMPANIES, PATCH_USERS, PATCH_GB_OLD_REPR
    (objects keyed by external id) and PATCH_LICENCES (a list)."""
    if not path:
        return Patches()
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the patches file holds one mapping")
    unknown = set(data) - set(PATCH_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(PATCH_KEYS)}")
    values: dict[str, Any] = {PATCH_KEYS[k]: v for k, v in data.items()}
    for key in ("companies", "users", "gb_old_repr"):
        values[key] = {str(k): v for k, v in values.get(key, {}).items()}
    return Patches(**values)


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
    fuzz_limit: int = 75
    companies_excepted_from_checks: str = ""
    patches_file: str | None = None
    send_matching_mails: bool = True

    def registry(self, session: requests.Session, domain: str) -> RegistryClient:
        base = self.base_url_fgas if domain == "FGAS" else self.base_url_ods
        return RegistryClient(session, base, self.api_user, self.api_password, domain)

    def bdr_registry(self, session: requests.Session) -> BdrRegistryClient:
        return BdrRegistryClient(session, self.bdr_api_url, self.bdr_api_key)

    def bdr_endpoint(self, session: requests.Session) -> BdrEndpointClient:
        return BdrEndpointClient(
            session, self.bdr_endpoint_url, self.bdr_endpoint_user, self.bdr_endpoint_password
        )

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
    if env_str("SEND_MATCHING_MAILS") is not None:
        values["send_matching_mails"] = env_bool("SEND_MATCHING_MAILS", True)
    if env_str("FUZZ_LIMIT") is not None:
        values["fuzz_limit"] = int(env_str("FUZZ_LIMIT") or 75)
    return RegistryResource(**values)
