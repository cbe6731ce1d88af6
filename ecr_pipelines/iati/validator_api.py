"""The two validator back ends behind one small interface (no Dagster import).

The validate stage asks two questions of a source file, in the refresher's order:

1. ``schema_check(path)``: is the file schema-valid? (the Validator API's
   ``/api/pvt/schema-validate-file``, answering ``{"valid": bool}``);
2. ``full_check(path, meta)``: the full report, with the per-activity meta list when ``meta``
   (the API's ``/api/pub/validate?meta=true``); only schema-invalid files need meta, to be cleaned.

Both return a :class:`ValidatorAnswer` ``(status, report | None)``. ``report`` is the JSON body when
it is a report-shaped object (has a boolean ``valid``), else None. The statuses mean what the API
documents: 200 no schema errors; 400 not well-formed; 413 larger than the API accepts (60 MiB);
422 schema errors, not IATI, or an unsupported version; anything else is a failure of the
validator. The refresher stored a report that came with 400/413/422 and only the status for
anything else; the stage does the same with these answers.

``LocalValidator`` gives the same answers from :func:`ecr_pipelines.iati.validate.validate_file`
(bundled XSDs, no network), with the status the API would have given, so ``validation_api_error``
means the same whichever back end produced it. A transport failure of the API (connection,
timeout, TLS) raises :class:`~ecr_pipelines.resources.http.FetchError`: that is not the
document's fault, and the stage leaves the document due instead of recording an error.

Files over the API's size limit (it answers 413, "Max Filesize of 60 MiB exceeded"): the
refresher stored the 413, no report, and sent the file again every minute, so a large file was
never cleaned nor indexed. ``ValidatorApiClient`` with ``too_large_fallback`` (what the resource
builds by default, ``IATI_VALIDATOR_TOO_LARGE=local``) validates such a file with the local
validator instead: its schema check decides ``valid`` and the per-activity meta exactly as the API
does (its rulesets and codelists never produce critical errors), so the file is cleaned and
indexed as the API's report would have let it be. The report says it is schema only and why
(``apiVersion``), and the answer carries ``fallback`` for the stage's counts. Without a fallback
(``IATI_VALIDATOR_TOO_LARGE=skip``) the 413 is stored as the refresher stored it.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import requests

from ecr_pipelines.iati.validate import API_VERSION, validate_file
from ecr_pipelines.lib.http import check_scheme, classify

OK = 200
NOT_WELL_FORMED = 400
TOO_LARGE = 413
INVALID = 422
VALIDATOR_CRASHED = 500
# Statuses that still come with a report body worth storing (the refresher's "expected" errors).
EXPECTED_STATUSES: tuple[int, ...] = (NOT_WELL_FORMED, TOO_LARGE, INVALID)
DEFAULT_KEY_NAME = "x-functions-key"
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
# Bodies of non-report answers kept for the run log; validator error pages can be long.
MESSAGE_CHARS = 300
# What the API's 413 becomes in a report validated locally instead (its ``apiVersion``).
TOO_LARGE_FALLBACK = "the IATI Validator API refused the file as too large (HTTP 413)"
LOCAL_TOO_LARGE_API_VERSION = f"{API_VERSION}; used because {TOO_LARGE_FALLBACK}"


@dataclass(frozen=True)
class ValidatorAnswer:
    """What one validator call gave: its HTTP status (real or, locally, equivalent) and report."""

    status: int
    report: dict[str, Any] | None = None
    message: str = ""
    # Why the answer comes from the local validator rather than the API ("" when it does not).
    fallback: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


class Validator(Protocol):
    """What the validate stage needs from a back end."""

    name: str

    def schema_check(self, path: Path) -> ValidatorAnswer: ...

    def full_check(self, path: Path, meta: bool) -> ValidatorAnswer: ...


def report_or_none(body: Any) -> dict[str, Any] | None:
    """The body as a report when it looks like one (a JSON object with a boolean ``valid``)."""
    if isinstance(body, Mapping) and isinstance(body.get("valid"), bool):
        return dict(body)
    return None


def _file_error_ids(report: Mapping[str, Any]) -> set[str]:
    return {
        error.get("id", "")
        for group in report.get("errors") or []
        if group.get("identifier") == "file"
        for category in group.get("errors") or []
        for error in category.get("errors") or []
    }


def local_status(report: Mapping[str, Any]) -> int:
    """The status the Validator API answers for a file with this report.

    400 for a file that is not well-formed (0.1.1), 422 for any other critical error (not IATI,
    unsupported version, schema errors), 200 when valid.
    """
    if report.get("valid") is True:
        return OK
    return NOT_WELL_FORMED if "0.1.1" in _file_error_ids(report) else INVALID


class LocalValidator:
    """The bundled-XSD validator. One validation answers both questions, so the report of the
    last schema check is kept for the full check of the same file that usually follows."""

    name = "local"

    def __init__(self) -> None:
        self._last: tuple[tuple[str, int, int, int], dict[str, Any]] | None = None

    @staticmethod
    def _identity(path: Path) -> tuple[str, int, int, int]:
        # Path plus inode, size and mtime: a reused temporary name is not the same file.
        stat = os.stat(path)
        return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _report(self, path: Path) -> dict[str, Any]:
        if self._last is not None and self._last[0] == self._identity(path):
            report = self._last[1]
        else:
            report = validate_file(path)
        self._last = None
        return report

    def schema_check(self, path: Path) -> ValidatorAnswer:
        try:
            report = validate_file(path)
        except Exception as exc:  # validate_file never raises for bad input: this is a bug
            return ValidatorAnswer(
                VALIDATOR_CRASHED, None, f"local validator failed: {type(exc).__name__}: {exc}"
            )
        self._last = (self._identity(path), report)
        return ValidatorAnswer(OK, {"valid": report["valid"]})

    def full_check(self, path: Path, meta: bool) -> ValidatorAnswer:
        # The local report always carries the meta list; it costs nothing extra here.
        try:
            report = self._report(path)
        except Exception as exc:
            return ValidatorAnswer(
                VALIDATOR_CRASHED, None, f"local validator failed: {type(exc).__name__}: {exc}"
            )
        return ValidatorAnswer(local_status(report), report)


class ValidatorApiClient:
    """The IATI Validator API (IATI/js-validator-api) over the shared HTTP session.

    ``schema_url`` is the schema-only endpoint, ``full_url`` the full validation endpoint. The
    key header (Azure Functions' ``x-functions-key`` by default) goes with every call. Bodies are
    streamed from the file; urllib3 rewinds them when it retries a 502/503/504.
    """

    name = "api"

    def __init__(
        self,
        session: requests.Session,
        schema_url: str,
        full_url: str,
        *,
        key_name: str = DEFAULT_KEY_NAME,
        key_value: str | None = None,
        timeout: tuple[float, float] | None = None,
        too_large_fallback: LocalValidator | None = None,
    ) -> None:
        for url in (schema_url, full_url):
            check_scheme(url)
        self.session = session
        self.schema_url = schema_url
        self.full_url = full_url
        self.headers = {"Content-Type": XML_CONTENT_TYPE}
        if key_value:
            self.headers[key_name or DEFAULT_KEY_NAME] = key_value
        self.timeout = timeout
        self.too_large_fallback = too_large_fallback

    def _post(self, url: str, path: Path, params: dict[str, str] | None = None) -> ValidatorAnswer:
        try:
            with open(path, "rb") as body:
                response = self.session.post(
                    url, data=body, params=params, headers=self.headers, timeout=self.timeout
                )
        except requests.exceptions.RequestException as exc:
            raise classify(exc, url) from exc
        try:
            body_json = response.json()
        except ValueError:
            body_json = None
        report = report_or_none(body_json)
        message = ""
        if report is None:
            raw = json.dumps(body_json) if body_json is not None else response.text
            message = f"HTTP {response.status_code}: {raw[:MESSAGE_CHARS]}".strip()
        return ValidatorAnswer(response.status_code, report, message)

    def schema_check(self, path: Path) -> ValidatorAnswer:
        answer = self._post(self.schema_url, path)
        if answer.status != TOO_LARGE or self.too_large_fallback is None:
            return answer
        local = self.too_large_fallback.schema_check(path)
        return replace(local, message=local.message or _fallback_message(answer), fallback=TOO_LARGE_FALLBACK)

    def full_check(self, path: Path, meta: bool) -> ValidatorAnswer:
        answer = self._post(self.full_url, path, {"meta": "true"} if meta else None)
        if answer.status != TOO_LARGE or self.too_large_fallback is None:
            return answer
        local = self.too_large_fallback.full_check(path, meta)
        report = None
        if local.report is not None:
            # A copy: the local validator may hand out the report it keeps for a later call.
            report = {**local.report, "apiVersion": LOCAL_TOO_LARGE_API_VERSION}
        message = local.message or _fallback_message(answer)
        return replace(local, report=report, message=message, fallback=TOO_LARGE_FALLBACK)


def _fallback_message(answer: ValidatorAnswer) -> str:
    api = answer.message or f"HTTP {answer.status}"
    return f"validated locally, schema only: {api}"[:MESSAGE_CHARS]
