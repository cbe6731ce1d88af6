"""The ``blobstore`` resource (Dagster side of ``ecr_pipelines.lib.blobstore``)."""

from urllib.parse import urlparse

import dagster as dg
from pydantic import PrivateAttr

from ecr_pipelines.lib.blobstore import BlobStore, open_blob_store


class BlobStoreResource(dg.ConfigurableResource):
    """Object storage for source files, cleaned files, lake objects, packages and uploads.

    ``url`` comes from ``BLOB_STORE_URL`` (``s3://bucket/prefix`` or a folder; default
    ``ECR_HOME/blobs``); S3 credentials come from the standard AWS variables.
    """

    url: str | None = None
    s3_endpoint_url: str | None = None
    region: str | None = None

    _store: BlobStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            client = None
            if self.url and urlparse(self.url).scheme == "s3":
                # S3 through dagster-aws, as the design card says; the store itself is plain boto3.
                from dagster_aws.s3 import S3Resource

                client = S3Resource(
                    endpoint_url=self.s3_endpoint_url, region_name=self.region or "us-east-1"
                ).get_client()
            self._store = open_blob_store(self.url, self.s3_endpoint_url, self.region, s3_client=client)
        return self._store
