"""What every contract module of the application gets: its settings, read once from the
environment, and the shared database engine and blob store (opened on first use)."""

import os
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.engine import Engine

from ecr_pipelines.lib.blobstore import BlobStore, open_blob_store
from ecr_pipelines.lib.database import engine_for
from ecr_pipelines.lib.settings import env_number, env_str

DEFAULT_PAGINATION_SIZE = 1000


@dataclass(frozen=True)
class ApiSettings:
    """The application's settings; secrets are kept out of ``repr`` (they never reach a log)."""

    database_url: str | None = None
    api_token: str = field(default="", repr=False)  # registry API (the legacy's API_TOKEN)
    ckan_secret: str = field(default="", repr=False)  # CKAN intake (the legacy's SECRET)
    pagination_size: int = DEFAULT_PAGINATION_SIZE  # data-store pages (DSS_PAGINATION_SIZE)
    dagster_url: str | None = None  # Dagster's webserver, for /sync/* and /match/* (GraphQL)
    blob_store_url: str | None = None
    s3_endpoint_url: str | None = None

    @classmethod
    def from_env(cls) -> "ApiSettings":
        return cls(
            database_url=env_str("DATABASE_URL"),
            api_token=os.environ.get("API_TOKEN", "").strip(),
            ckan_secret=os.environ.get("CKAN_SECRET", "").strip(),
            pagination_size=env_number("DSS_PAGINATION_SIZE", DEFAULT_PAGINATION_SIZE),
            dagster_url=env_str("DAGSTER_WEBSERVER_URL"),
            blob_store_url=env_str("BLOB_STORE_URL"),
            s3_endpoint_url=env_str("S3_ENDPOINT_URL"),
        )


class ApiContext:
    """Settings plus the engine and blob store, shared by every request of one process."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings

    @cached_property
    def engine(self) -> Engine:
        return engine_for(self.settings.database_url)

    @cached_property
    def blobs(self) -> BlobStore:
        return open_blob_store(self.settings.blob_store_url, self.settings.s3_endpoint_url)
