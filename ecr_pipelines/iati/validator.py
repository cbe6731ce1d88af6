"""The IATI validator resource: which back end validates, and the safety-check settings.

``IATI_VALIDATOR=local`` (default) validates against the bundled 2.01/2.02/2.03 XSDs and needs no
network; ``api`` calls the IATI Validator API (``IATI_SCHEMA_VALIDATION_API_URL`` for the
schema-only check, ``IATI_VALIDATOR_API_URL`` for the full report) with the key header
``IATI_VALIDATOR_API_KEY_NAME: IATI_VALIDATOR_API_KEY_VALUE``.

The safety check ("black flag") settings live here too, because they steer what the validate
stage does: ``IATI_SAFETY_CHECK_THRESHOLD`` / ``IATI_SAFETY_CHECK_PERIOD_HOURS`` decide when a
publisher is flagged, ``IATI_SAFETY_CHECK_HOLD_HOURS`` (default: the period) how long a new
schema-invalid document waits before its full validation, and ``IATI_BLACK_FLAG_MAIL_TO`` who is
told about a new flag.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg
import requests

from ecr_pipelines.iati.safety import SAFETY_CHECK_PERIOD_HOURS, SAFETY_CHECK_THRESHOLD
from ecr_pipelines.iati.validator_api import DEFAULT_KEY_NAME, LocalValidator, Validator, ValidatorApiClient
from ecr_pipelines.resources.http import FetchError
from ecr_pipelines.settings import env_or_default, env_str

BACKENDS = ("local", "api")
DEFAULT_API_TIMEOUT = 600.0


class ValidatorConfigError(ValueError):
    """The validator settings cannot be used as configured."""


class IatiValidatorResource(dg.ConfigurableResource):
    """How IATI documents are validated, and when a publisher is black-flagged."""

    backend: str = "local"
    api_url: str = ""
    schema_api_url: str = ""
    api_key_name: str = DEFAULT_KEY_NAME
    api_key_value: str | None = None
    api_timeout: float = DEFAULT_API_TIMEOUT
    safety_check_threshold: int = SAFETY_CHECK_THRESHOLD
    safety_check_period_hours: float = SAFETY_CHECK_PERIOD_HOURS
    safety_check_hold_hours: float | None = None
    black_flag_mail_to: str = ""

    def backend_name(self) -> str:
        name = self.backend.strip().lower()
        if name not in BACKENDS:
            raise ValidatorConfigError(
                f"IATI_VALIDATOR must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        return name

    @property
    def hold_hours(self) -> float:
        """How long a schema-invalid document waits for the safety check before full validation."""
        hold = (
            self.safety_check_period_hours
            if self.safety_check_hold_hours is None
            else self.safety_check_hold_hours
        )
        return max(0.0, hold)

    def mail_recipients(self) -> list[str]:
        return [
            address.strip()
            for address in self.black_flag_mail_to.replace(";", ",").split(",")
            if address.strip()
        ]

    def validator(self, session_factory: Callable[..., requests.Session]) -> Validator:
        """The configured back end; ``session_factory`` is ``HttpResource.session`` (only the API
        back end calls it, with the validator's longer read timeout)."""
        if self.backend_name() == "local":
            return LocalValidator()
        missing = [
            env
            for env, value in (
                ("IATI_VALIDATOR_API_URL", self.api_url),
                ("IATI_SCHEMA_VALIDATION_API_URL", self.schema_api_url),
            )
            if not value
        ]
        if missing:
            raise ValidatorConfigError(f"IATI_VALIDATOR=api needs {' and '.join(missing)}")
        session = session_factory(read_timeout=self.api_timeout)
        try:
            return ValidatorApiClient(
                session,
                self.schema_api_url,
                self.api_url,
                key_name=self.api_key_name,
                key_value=self.api_key_value,
            )
        except FetchError as exc:  # a URL that is not http(s)
            raise ValidatorConfigError(f"validator API URL refused: {exc}") from exc

    def describe(self) -> str:
        if self.backend_name() == "local":
            return "local schema validator (bundled IATI 2.01/2.02/2.03 XSDs)"
        return f"IATI Validator API {self.api_url or '(IATI_VALIDATOR_API_URL not set)'}"


def _number(name: str, parse: Callable[[str], Any]) -> Any:
    raw = env_str(name)
    if raw is None:
        return None
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ValidatorConfigError(f"{name}={raw!r} is not a valid {parse.__name__}") from exc


def build_validator_resource() -> IatiValidatorResource:
    """The resource from the environment. URLs and the key travel as ``dg.EnvVar`` (shown by name,
    never by value); numbers are parsed here so a typo fails at load, not mid-run."""
    values: dict[str, Any] = {
        "backend": env_or_default("IATI_VALIDATOR", "local"),
        "api_url": env_or_default("IATI_VALIDATOR_API_URL", ""),
        "schema_api_url": env_or_default("IATI_SCHEMA_VALIDATION_API_URL", ""),
        "api_key_name": env_or_default("IATI_VALIDATOR_API_KEY_NAME", DEFAULT_KEY_NAME),
        "api_key_value": env_or_default("IATI_VALIDATOR_API_KEY_VALUE", None),
        "black_flag_mail_to": env_or_default("IATI_BLACK_FLAG_MAIL_TO", ""),
    }
    numbers = {
        "api_timeout": ("IATI_VALIDATOR_API_TIMEOUT", float),
        "safety_check_threshold": ("IATI_SAFETY_CHECK_THRESHOLD", int),
        "safety_check_period_hours": ("IATI_SAFETY_CHECK_PERIOD_HOURS", float),
        "safety_check_hold_hours": ("IATI_SAFETY_CHECK_HOLD_HOURS", float),
    }
    for fieldname, (env, parse) in numbers.items():
        value = _number(env, parse)
        if value is not None:
            values[fieldname] = value
    return IatiValidatorResource(**values)
