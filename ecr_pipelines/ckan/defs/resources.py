"""The CKAN packager's resource: how requests are built, cached, linked, mailed and counted.

Every value comes from the environment through ``resources.env.from_env`` and is checked when the
definitions load: a mail template naming an unknown placeholder or a Darwin Core configuration
that does not parse fails loading with the variable's name, not a request halfway through. The
portal-wide CKAN key travels as ``dg.EnvVar``, so the UI shows its name, never its value.
"""

from pathlib import Path
from typing import Any

import dagster as dg

from ecr_pipelines.ckan.datastore import DEFAULT_PAGE_SIZE, DEFAULT_WORKERS
from ecr_pipelines.ckan.dwc import load_dwc_config
from ecr_pipelines.ckan.mails import load_templates
from ecr_pipelines.ckan.package import DEFAULT_SLOW_REQUEST
from ecr_pipelines.ckan.stages.packages import DEFAULT_TTL_DAYS, PackagerSettings
from ecr_pipelines.ckan.stages.requests import DEFAULT_CACHE_TIME
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources.env import boolean, from_env

POLL_SECONDS = int(env_str("CKAN_POLL_SECONDS", "15") or 15)


def _existing_file(check: Any) -> Any:
    """A parser for a file setting: the path, once ``check`` has read it without complaint."""

    def parse(raw: str) -> str:
        if not Path(raw).is_file():
            raise ValueError("no such file")
        check(raw)
        return raw

    return parse


def _url_template(raw: str) -> str:
    try:
        raw.format(zip_file_name="x.zip", key="ckan/packages/x.zip", ckan_host="ckan.example")
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise ValueError(f"placeholders are {{zip_file_name}}, {{key}} and {{ckan_host}} ({exc!r})") from None
    return raw


class CkanResource(dg.ConfigurableResource):
    """The packager's settings (CKAN_* variables)."""

    api_key: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    slow_request: int = DEFAULT_SLOW_REQUEST
    cache_time: int = DEFAULT_CACHE_TIME
    package_ttl_days: int = DEFAULT_TTL_DAYS
    download_url_template: str | None = None
    mail_templates: str | None = None
    dwc_config: str | None = None
    anonymize_emails: bool = False
    workers: int = DEFAULT_WORKERS

    def settings(self, max_bytes: int | None = None) -> PackagerSettings:
        return PackagerSettings(
            api_key=self.api_key or None,
            page_size=self.page_size,
            cache_time=self.cache_time,
            ttl_days=self.package_ttl_days,
            download_url_template=self.download_url_template or None,
            workers=self.workers,
            max_bytes=max_bytes,
            anonymize_emails=self.anonymize_emails,
            templates=load_templates(self.mail_templates),
            dwc_config=load_dwc_config(self.dwc_config),
        )


def build_ckan_resource() -> CkanResource:
    return from_env(
        CkanResource,
        {
            "page_size": ("CKAN_PAGE_SIZE", int),
            "slow_request": ("CKAN_SLOW_REQUEST", int),
            "cache_time": ("CKAN_CACHE_TIME", int),
            "package_ttl_days": ("CKAN_PACKAGE_TTL_DAYS", int),
            "download_url_template": ("CKAN_DOWNLOAD_URL_TEMPLATE", _url_template),
            "mail_templates": ("CKAN_MAIL_TEMPLATES", _existing_file(load_templates)),
            "dwc_config": ("CKAN_DWC_CONFIG", _existing_file(load_dwc_config)),
            "anonymize_emails": ("CKAN_ANONYMIZE_EMAILS", boolean),
            "workers": ("CKAN_PACKAGE_WORKERS", int),
        },
        secrets={"api_key": "CKAN_API_KEY"},
    )


def build_ckan_resources() -> dict[str, Any]:
    return {"ckan": build_ckan_resource()}
