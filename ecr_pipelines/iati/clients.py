"""Fetching the IATI indices: the Bulk Data Service JSON indices and the legacy CKAN registry.

Every failure becomes an ``IndexProblem`` whose message says which index, where, and what went
wrong (missing, unreachable, truncated, malformed, no ETag), because the refresh run ends with
that message and must leave the stored data alone.
"""

import logging
from collections.abc import Callable
from typing import Any

import requests

from ecr_pipelines.iati.index import (
    IndexProblem,
    IndexSnapshot,
    bds_snapshot,
    load_json,
    registry_snapshot,
)
from ecr_pipelines.lib.ckan import CkanClient, CkanError
from ecr_pipelines.lib.http import FetchError, classify, request

log = logging.getLogger(__name__)


class IndexUnavailable(IndexProblem):
    """The index could not be fetched (missing, HTTP error, connection failure)."""


class MissingETag(IndexProblem):
    """The index answered without an ETag, so a change cannot be detected."""


def _describe(exc: FetchError) -> str:
    if exc.status == 404:
        return "not found (HTTP 404)"
    return str(exc.message if exc.status is None else f"HTTP {exc.status}") + f" [{exc.kind.value}]"


class BdsIndexClient:
    """The Bulk Data Service's dataset index and reporting-org index."""

    def __init__(
        self, session: requests.Session, dataset_index_url: str, reporting_org_index_url: str
    ) -> None:
        if not dataset_index_url or not reporting_org_index_url:
            raise IndexUnavailable(
                "IATI_DATASET_INDEX_URL and IATI_REPORTING_ORG_INDEX_URL must both be set for IATI_SOURCE=bds"
            )
        self.session = session
        self.dataset_index_url = dataset_index_url
        self.reporting_org_index_url = reporting_org_index_url

    def etag(self, url: str, what: str) -> str:
        try:
            response = request(self.session, "HEAD", url, allow_redirects=True)
        except FetchError as exc:
            raise IndexUnavailable(f"{what} at {url}: {_describe(exc)}") from exc
        etag = response.headers.get("ETag")
        if not etag:
            raise MissingETag(
                f"{what} at {url} answered HEAD without an ETag header, so the sensor cannot tell whether "
                "it changed; no refresh was requested (run iati_refresh_job by hand if needed)"
            )
        return etag

    def change_token(self) -> str:
        """What identifies the current pair of indices: both ETags.

        The reporting-org index can land after the dataset index of the same BDS run; a token over
        both makes that late arrival a change, so the refresh skipped for "different runs" is
        requested again.
        """
        datasets = self.etag(self.dataset_index_url, "dataset index")
        orgs = self.etag(self.reporting_org_index_url, "reporting-org index")
        return f"{datasets}|{orgs}"

    def get_json(self, url: str, what: str) -> Any:
        try:
            response = request(self.session, "GET", url)
            body = response.content
        except FetchError as exc:
            raise IndexUnavailable(f"{what} at {url}: {_describe(exc)}") from exc
        except requests.exceptions.RequestException as exc:
            # Reading the body failed after the headers arrived: a truncated transfer.
            raise IndexUnavailable(f"{what} at {url}: {classify(exc, url).message}") from exc
        declared = response.headers.get("Content-Length")
        # With a Content-Encoding the header counts compressed bytes; only plain bodies compare.
        plain = not response.headers.get("Content-Encoding")
        if plain and declared and declared.isdigit() and int(declared) != len(body):
            raise IndexUnavailable(f"{what} at {url} is truncated: {len(body)} of {declared} bytes arrived")
        return load_json(body, f"{what} at {url}")

    def snapshot(self) -> IndexSnapshot:
        datasets = self.get_json(self.dataset_index_url, "dataset index")
        orgs = self.get_json(self.reporting_org_index_url, "reporting-org index")
        return bds_snapshot(datasets, orgs)


class RegistryIndexClient:
    """The legacy CKAN IATI Registry: organizations, then every package."""

    def __init__(self, ckan: CkanClient, rows: int = 1000) -> None:
        self.ckan = ckan
        self.rows = rows

    def change_token(self) -> str:
        """The package count and the newest ``metadata_modified``: CKAN sends no useful ETag."""
        try:
            count, newest = self.ckan.search_count(sort="metadata_modified desc")
        except CkanError as exc:
            raise IndexUnavailable(f"IATI registry: {exc}") from exc
        modified = (newest or {}).get("metadata_modified", "")
        return f"registry:{count}:{modified}"

    def snapshot(self, progress: Callable[[str], None] = log.info) -> IndexSnapshot:
        try:
            names = list(self.ckan.organization_list(limit=self.rows))
            progress(f"registry: {len(names)} organizations listed")
            organizations = []
            for number, name in enumerate(names, start=1):
                organizations.append(self.ckan.action("organization_show", id=name))
                if number % 200 == 0:
                    progress(f"registry: organization {number} of {len(names)}")
            packages = []
            for package in self.ckan.package_search(rows=self.rows):
                packages.append(package)
                if len(packages) % self.rows == 0:
                    progress(f"registry: {len(packages)} packages fetched")
        except CkanError as exc:
            raise IndexUnavailable(f"IATI registry: {exc}") from exc
        progress(f"registry: {len(packages)} packages fetched in {self.ckan.calls} calls")
        return registry_snapshot(organizations, packages)
