"""The data store's resource: where the downloaded sources are listed, how uploads are verified,
and whether loads are announced to data-flow.

Every value comes from the environment through ``resources.env.from_env`` when the definitions
load (a bad number or URL fails loading with the variable's name); the data-flow HAWK key goes in
as ``dg.EnvVar``, so the UI shows its name, never its value.
"""

from typing import Any

import dagster as dg

from ecr_pipelines.datastore.dataflow import DataflowSettings
from ecr_pipelines.datastore.downloads import DownloadSettings
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources.env import boolean, from_env

POLL_SECONDS = int(env_str("DATASTORE_POLL_SECONDS", "60") or 60)
DEFAULTS = DownloadSettings()


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return raw


def _item_url(raw: str) -> str:
    _url(raw)
    if "{id}" not in raw:
        raise ValueError("must contain {id} (the ArcGIS item id)")
    return raw


def _positive(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a whole number > 0")
    return value


class DatastoreResource(dg.ConfigurableResource):
    """The data store's settings (DSS_*, DATASTORE_* and DATAFLOW_* variables)."""

    companies_house_accounts_url: str = DEFAULTS.listing_urls["companies_house.accounts_legacy"]
    hmrc_exporters_url: str = DEFAULTS.listing_urls["hmrc.exporters"]
    ons_postcode_directory_url: str = DEFAULTS.listing_urls["ons.postcode_directory"]
    ons_download_url: str = DEFAULTS.ons_item_data_url
    max_download_bytes: int = DEFAULTS.max_bytes
    upload_auto_verify: bool = False
    dataflow_base_url: str | None = None
    dataflow_hawk_id: str | None = None
    dataflow_hawk_key: str | None = None
    dataflow_dag_id: str = "DSSGenericPipeline"
    dataflow_timeout_seconds: int = 1800

    def download_settings(self) -> DownloadSettings:
        return DownloadSettings(
            listing_urls={
                "companies_house.accounts_legacy": self.companies_house_accounts_url,
                "hmrc.exporters": self.hmrc_exporters_url,
                "ons.postcode_directory": self.ons_postcode_directory_url,
            },
            ons_item_data_url=self.ons_download_url,
            max_bytes=self.max_download_bytes,
        )

    def dataflow_settings(self) -> DataflowSettings | None:
        if not self.dataflow_base_url:
            return None
        if not self.dataflow_hawk_id or not self.dataflow_hawk_key:
            raise dg.Failure(
                "DATAFLOW_BASE_URL is set but DATAFLOW_HAWK_ID or DATAFLOW_HAWK_KEY is not",
                allow_retries=False,
            )
        return DataflowSettings(
            base_url=self.dataflow_base_url,
            hawk_id=self.dataflow_hawk_id,
            hawk_key=self.dataflow_hawk_key,
            dag_id=self.dataflow_dag_id,
            timeout_seconds=self.dataflow_timeout_seconds,
        )


def build_datastore_resource() -> DatastoreResource:
    return from_env(
        DatastoreResource,
        {
            "companies_house_accounts_url": ("DSS_COMPANIES_HOUSE_ACCOUNTS_URL", _url),
            "hmrc_exporters_url": ("DSS_HMRC_EXPORTERS_URL", _url),
            "ons_postcode_directory_url": ("DSS_ONS_POSTCODE_DIRECTORY_URL", _url),
            "ons_download_url": ("DSS_ONS_POSTCODE_DIRECTORY_DOWNLOAD_URL", _item_url),
            "max_download_bytes": ("DATASTORE_MAX_DOWNLOAD_BYTES", _positive),
            "upload_auto_verify": ("DATASTORE_UPLOAD_AUTO_VERIFY", boolean),
            "dataflow_base_url": ("DATAFLOW_BASE_URL", _url),
            "dataflow_hawk_id": ("DATAFLOW_HAWK_ID", str),
            "dataflow_dag_id": ("DATAFLOW_UPLOADER_DAG_ID", str),
            "dataflow_timeout_seconds": ("DATAFLOW_TIMEOUT_SECONDS", _positive),
        },
        secrets={"dataflow_hawk_key": "DATAFLOW_HAWK_KEY"},
    )


def build_datastore_resources() -> dict[str, Any]:
    return {"datastore": build_datastore_resource()}
