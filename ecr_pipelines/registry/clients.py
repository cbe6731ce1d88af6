"""Clients of the registry cache's upstreams, on the shared HTTP session (timeouts, retries).

* ``RegistryClient``: the EU F-gas and ODS registries (``/rest/api/latest/...``), authenticated
  with the plain ``user`` / ``password`` request headers. F-gas pages by page number (the
  ``numberOfPages`` response header); ODS undertakings page by offset (``rows`` / ``rowCount``).
  404 means "no data"; 401 and any other failure raise ``RegistryApiError`` with a clear message.
* ``BdrRegistryClient``: the legacy BDR registry of old companies, one list per obligation.
* ``BdrEndpointClient``: the BDR reporting portal (collections: create/bind, folder check, list,
  rename), HTTP Basic auth. With no endpoint URL configured every call is skipped as a success,
  as the legacy service did.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import requests

from ecr_pipelines.lib.http import classify
from ecr_pipelines.registry.parse import bdr_obligation_slug

FGAS = "FGAS"
ODS = "ODS"
ODS_DEFAULT_PAGE_SIZE = 100


class RegistryApiError(RuntimeError):
    """An upstream answered in a way that must end the run (bad credentials, bad answer)."""


def _wire_date(value: date) -> str:
    return value.strftime("%d/%m/%Y")


def _send(session: requests.Session, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
    try:
        return session.request(method, url, **kwargs)
    except requests.exceptions.RequestException as exc:
        raise RegistryApiError(f"{what}: {classify(exc, url)}") from exc


def _json(response: requests.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise RegistryApiError(f"{what}: answer is not JSON (HTTP {response.status_code})") from exc


class RegistryClient:
    """One domain's registry (F-gas or ODS)."""

    def __init__(
        self, session: requests.Session, base_url: str, user: str, password: str, domain: str
    ) -> None:
        if domain not in (FGAS, ODS):
            raise ValueError(f"unknown domain {domain!r}")
        if not base_url:
            raise RegistryApiError(f"BASE_URL_{domain} is not set")
        self.session = session
        self.api = base_url.rstrip("/") + "/rest/api"
        self.domain = domain
        self.headers = {"user": user, "password": password}
        self.requests_made = 0

    def _get(self, path: str, params: dict[str, Any]) -> requests.Response | None:
        url = f"{self.api}/{path}"
        what = f"{self.domain} registry {path}"
        self.requests_made += 1
        response = _send(self.session, "GET", url, what, params=params, headers=self.headers)
        if response.status_code == 404:
            return None
        if response.status_code == 401:
            raise RegistryApiError(f"{what}: 401 Unauthorized; check API_USER / API_PASSWORD")
        if response.status_code != 200:
            raise RegistryApiError(f"{what}: HTTP {response.status_code}")
        return response

    def _page_number_pages(
        self, path: str, params: dict[str, Any], page_size: int | None
    ) -> Iterator[list[Any]]:
        """Page-number paging: with a page size the ``numberOfPages`` header says how many pages."""
        if page_size:
            params = {**params, "pageSize": page_size, "pageNumber": 1}
        response = self._get(path, params)
        if response is None:
            return
        yield self._list(_json(response, path), path)
        if not page_size:
            return
        header = response.headers.get("numberOfPages", "1")
        pages = int(header) if header.strip().isdigit() and int(header) > 0 else 1
        for number in range(2, pages + 1):
            page = self._get(path, {**params, "pageNumber": number})
            if page is not None:
                yield self._list(_json(page, path), path)

    def _offset_pages(self, path: str, params: dict[str, Any], page_size: int | None) -> Iterator[list[Any]]:
        """Offset paging: ``{"rows": [...], "rowCount": N}``; continue while rows remain."""
        size = page_size or ODS_DEFAULT_PAGE_SIZE
        params = {**params, "pageSize": size, "pageNumber": 1}
        offset = 0
        while True:
            response = self._get(path, params if offset == 0 else {**params, "offset": offset})
            if response is None:
                return
            body = _json(response, path)
            if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
                raise RegistryApiError(f"{self.domain} registry {path}: expected {{rows, rowCount}}")
            yield body["rows"]
            total = int(body.get("rowCount") or 0)
            if total <= offset + size or not body["rows"]:
                return
            offset += size

    def _list(self, body: Any, path: str) -> list[Any]:
        if not isinstance(body, list):
            raise RegistryApiError(f"{self.domain} registry {path}: expected a JSON list")
        return body

    def undertakings(
        self,
        updated_since: date | None = None,
        page_size: int | None = None,
        external_id: int | None = None,
        registration_id: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of undertaking records; one company when an id is given (no window then)."""
        params: dict[str, Any] = {}
        if external_id is not None:
            params["organizationId"] = external_id
        if registration_id:
            params["registrationNumId"] = registration_id
        if updated_since is not None and not params:
            params["updatedSince"] = _wire_date(updated_since)
        if self.domain == FGAS:
            yield from self._page_number_pages("latest/fgasundertakings/", params, page_size)
        else:
            yield from self._offset_pages("latest/odsundertakings/", params, page_size)

    def licences(self, year: int, page_size: int | None = 200) -> Iterator[list[dict[str, Any]]]:
        """Pages of ODS single-year licence rows (page-number paging)."""
        if self.domain != ODS:
            raise ValueError("licences come from the ODS registry")
        yield from self._page_number_pages("latest/licences/", {"year": year}, page_size)


class BdrRegistryClient:
    """The legacy BDR registry: old companies per obligation (``fgases``, ``ods``)."""

    def __init__(self, session: requests.Session, api_url: str, api_key: str) -> None:
        if not api_url:
            raise RegistryApiError("BDR_API_URL is not set")
        self.session = session
        self.api_url = api_url.rstrip("/")
        self.headers = {"Authorization": api_key} if api_key else {}

    def old_companies(self, domain: str) -> list[dict[str, Any]]:
        slug = bdr_obligation_slug(domain)
        url = f"{self.api_url}/company/obligation/{slug}/"
        what = f"BDR registry ({slug})"
        response = _send(self.session, "GET", url, what, headers=self.headers)
        if response.status_code in (401, 403):
            raise RegistryApiError(f"{what}: HTTP {response.status_code} Unauthorized; check BDR_API_KEY")
        if response.status_code != 200:
            raise RegistryApiError(f"{what}: HTTP {response.status_code}")
        body = _json(response, what)
        if not isinstance(body, list):
            raise RegistryApiError(f"{what}: expected a JSON list")
        return body


@dataclass(frozen=True)
class BdrResult:
    ok: bool
    message: str


def bdr_country(country_code: str | None) -> str:
    """The country segment of BDR folder paths: the lower-cased code, ``non_eu`` without one."""
    code = (country_code or "").lower()
    return "non_eu" if code in ("", "non_eu") else code


class BdrEndpointClient:
    """The BDR reporting portal. Every call returns ``BdrResult``; nothing raises on BDR failure,
    because a BDR problem must be recorded per company, not end the sync."""

    def __init__(
        self, session: requests.Session, url: str | None, user: str | None, password: str | None
    ) -> None:
        self.session = session
        self.url = (url or "").rstrip("/")
        self.auth = (user or "", password or "") if user else None

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None) -> requests.Response | str:
        url = f"{self.url}/{path.lstrip('/')}"
        try:
            return self.session.request(method, url, params=params, auth=self.auth)
        except requests.exceptions.RequestException as exc:
            return f"BDR was unreachable: {classify(exc, url)}"

    def update_company_collection(
        self,
        company_id: int,
        domain: str,
        country: str | None,
        name: str | None,
        old_collection_id: str | None = None,
    ) -> BdrResult:
        """Create the company's collection, or bind the old one when ``old_collection_id`` is given.

        A None value leaves its parameter out of the request, as the legacy's did (``requests``
        drops None parameters): BDR tells "no country" from "country=" and the callers decide
        when the old collection is named, each as the legacy did.
        """
        if not self.enabled:
            return BdrResult(True, "BDR_ENDPOINT_URL not set: skipped")
        values: dict[str, Any] = {
            "company_id": company_id,
            "domain": domain,
            "country": country,
            "name": name,
            "old_collection_id": old_collection_id,
        }
        params = {key: value for key, value in values.items() if value is not None}
        response = self._call("GET", "ReportekEngine/update_company_collection", params)
        if isinstance(response, str):
            return BdrResult(False, response)
        # The legacy check demanded exactly "application/json"; a charset suffix is as good.
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type != "application/json":
            return BdrResult(
                False, f"BDR answered HTTP {response.status_code} {content_type or 'without JSON'}"
            )
        try:
            body = response.json()
        except ValueError:
            return BdrResult(False, f"BDR answered HTTP {response.status_code} with invalid JSON")
        if body.get("status") == "success":
            return BdrResult(True, str(body.get("message") or "success"))
        return BdrResult(False, f"BDR said {body.get('status')!r}: {body.get('message') or ''}".strip())

    def folder_exists(
        self, domain: str, country_code: str | None, folder: str, non_eu: bool = False
    ) -> bool | None:
        """Whether the company's folder exists; ``None`` when BDR cannot tell (unreachable, 5xx).

        ``non_eu``: a non-EU company without representative, filed under ``non_eu`` (legacy).
        """
        if not self.enabled:
            return True
        country = "non_eu" if non_eu else bdr_country(country_code)
        response = self._call("HEAD", f"{bdr_obligation_slug(domain)}/{country}/{folder}")
        if isinstance(response, str):
            return None
        if response.status_code == 404:
            return False
        return True if response.status_code < 400 else None

    def collections(self) -> list[dict[str, Any]]:
        if not self.enabled:
            return []
        response = self._call("GET", "api/collections_json")
        if isinstance(response, str):
            raise RegistryApiError(response)
        if response.status_code != 200:
            raise RegistryApiError(f"BDR collections_json: HTTP {response.status_code}")
        body = _json(response, "BDR collections_json")
        if not isinstance(body, list):
            raise RegistryApiError("BDR collections_json: expected a JSON list")
        return body

    def rename_collection(
        self,
        country_code: str | None,
        domain: str,
        account_uid: int,
        name: str | None,
        oldcompany_account: str | None,
        non_eu: bool = False,
    ) -> BdrResult:
        """Rename the company's collection. ``non_eu`` as for :meth:`folder_exists`; a None
        ``oldcompany_account`` (or name) leaves the parameter out, as the legacy's call did."""
        if not self.enabled:
            return BdrResult(True, "BDR_ENDPOINT_URL not set: skipped")
        values: dict[str, Any] = {
            "country_code": "non_eu" if non_eu else bdr_country(country_code),
            "obligation_folder_name": bdr_obligation_slug(domain),
            "account_uid": str(account_uid),
            "organisation_name": name,
            "oldcompany_account": oldcompany_account,
        }
        params = {key: value for key, value in values.items() if value is not None}
        response = self._call("GET", "api/update_organisation_name", params)
        if isinstance(response, str):
            return BdrResult(False, response)
        if response.status_code != 200:
            return BdrResult(False, f"BDR rename: HTTP {response.status_code}")
        try:
            updated = bool(response.json().get("updated"))
        except ValueError:
            return BdrResult(False, "BDR rename: answer is not JSON")
        return BdrResult(updated, "renamed" if updated else "BDR did not rename")


__all__ = [
    "BdrEndpointClient",
    "BdrRegistryClient",
    "BdrResult",
    "RegistryApiError",
    "RegistryClient",
    "bdr_country",
]
