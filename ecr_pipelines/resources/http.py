"""The ``http`` resource (Dagster side of ``ecr_pipelines.lib.http``)."""

import dagster as dg
import requests

from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import DownloadResult, download_to_blob, make_session


class HttpResource(dg.ConfigurableResource):
    """Timeouts, retries, size cap and TLS policy shared by every upstream client.

    Defaults come from ``HTTP_CONNECT_TIMEOUT``, ``HTTP_READ_TIMEOUT``, ``HTTP_RETRIES``,
    ``HTTP_MAX_DOWNLOAD_BYTES`` and ``HTTPS_VERIFY``.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5
    max_download_bytes: int = 500 * 1024 * 1024
    verify_tls: bool = True

    def session(self, **overrides: object) -> requests.Session:
        options: dict[str, object] = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retries": self.retries,
            "backoff": self.backoff,
            "verify": self.verify_tls,
        }
        options.update(overrides)
        return make_session(**options)  # type: ignore[arg-type]

    def download(
        self, session: requests.Session, url: str, store: BlobStore, key: str, **kwargs: object
    ) -> DownloadResult:
        return download_to_blob(session, url, store, key, max_bytes=self.max_download_bytes, **kwargs)  # type: ignore[arg-type]
