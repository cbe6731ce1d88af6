"""The shared resource layer: database, object storage, mail and HTTP.

``build_resources()`` reads the environment once, at definitions load, and hands every
service the same resource instances. Secrets are passed as ``dg.EnvVar`` so the UI and run
config show the variable's name, never its value.
"""

from typing import Any

from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import FetchError
from ecr_pipelines.lib.settings import env_bool, env_str
from ecr_pipelines.resources.blobstore import BlobStoreResource
from ecr_pipelines.resources.database import DatabaseResource
from ecr_pipelines.resources.env import env_or_default
from ecr_pipelines.resources.http import HttpResource
from ecr_pipelines.resources.mail import MailResource

__all__ = [
    "BlobStore",
    "BlobStoreResource",
    "DatabaseResource",
    "FetchError",
    "HttpResource",
    "MailResource",
    "build_resources",
]


def build_resources() -> dict[str, Any]:
    """The resources shared by every service, configured from the environment."""
    return {
        "db": DatabaseResource(url=env_or_default("DATABASE_URL", None)),
        "blobs": BlobStoreResource(
            url=env_or_default("BLOB_STORE_URL", None),
            s3_endpoint_url=env_or_default("S3_ENDPOINT_URL", None),
            region=env_or_default("AWS_REGION", None),
        ),
        "mail": MailResource(
            smtp_url=env_or_default("SMTP_URL", None),
            sender=env_str("MAIL_FROM", "ecr-pipelines@localhost") or "ecr-pipelines@localhost",
        ),
        "http": HttpResource(
            connect_timeout=float(env_str("HTTP_CONNECT_TIMEOUT", "10") or 10),
            read_timeout=float(env_str("HTTP_READ_TIMEOUT", "60") or 60),
            retries=int(env_str("HTTP_RETRIES", "3") or 3),
            max_download_bytes=int(env_str("HTTP_MAX_DOWNLOAD_BYTES", str(500 * 1024 * 1024)) or 0),
            verify_tls=env_bool("HTTPS_VERIFY", True),
        ),
    }
