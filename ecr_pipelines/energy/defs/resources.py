"""The energy hub's resource: where ElOverblik, the EnergyTypeService and the ledger are, the
measurement window's bounds and the GGO lifetime (the legacy's variable names).

Every value comes from the environment through ``resources.env.from_env`` when the definitions
load (a time that does not parse fails loading with the variable's name); the ElOverblik refresh
token goes in as ``dg.EnvVar``, so the UI shows its name, never its value.
"""

from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import requests

from ecr_pipelines.energy.eloverblik import EloverblikClient
from ecr_pipelines.energy.energytypes import EnergyTypeClient
from ecr_pipelines.energy.measurements import parse_time
from ecr_pipelines.energy.stages.measurements import ImportSettings
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources.env import from_env

POLL_SECONDS = int(env_str("ENERGY_POLL_SECONDS", "60") or 60)
NOT_CONFIGURED = "ELOVERBLIK_SERVICE_URL or ELOVERBLIK_TOKEN is not set"


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def _time(raw: str) -> str:
    parse_time(raw)
    return raw


def _days(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a whole number of days > 0")
    return value


class EnergyResource(dg.ConfigurableResource):
    """The energy hub's settings (ELOVERBLIK_*, ENERGY_TYPE_SERVICE_URL, LEDGER_URL, ...)."""

    eloverblik_url: str | None = None
    eloverblik_token: str | None = None
    energy_type_url: str | None = None
    ledger_url: str | None = None
    first_measurement_time: str | None = None
    last_measurement_time: str | None = None
    ggo_expire_days: int = 90

    @property
    def configured(self) -> bool:
        return bool(self.eloverblik_url and self.eloverblik_token)

    def eloverblik(self, session: requests.Session) -> EloverblikClient | None:
        if not self.configured:
            return None
        return EloverblikClient(session, str(self.eloverblik_url), str(self.eloverblik_token))

    def energy_types(self, session: requests.Session) -> EnergyTypeClient | None:
        return EnergyTypeClient(session, self.energy_type_url) if self.energy_type_url else None

    def import_settings(self, workers: int | None = None) -> ImportSettings:
        def when(raw: str | None) -> datetime | None:
            return parse_time(raw) if raw else None

        base = ImportSettings()
        return ImportSettings(
            first=when(self.first_measurement_time),
            last=when(self.last_measurement_time),
            expire=timedelta(days=self.ggo_expire_days),
            workers=workers or base.workers,
        )


def build_energy_resource() -> EnergyResource:
    return from_env(
        EnergyResource,
        {
            "eloverblik_url": ("ELOVERBLIK_SERVICE_URL", _url),
            "energy_type_url": ("ENERGY_TYPE_SERVICE_URL", _url),
            "ledger_url": ("LEDGER_URL", _url),
            "first_measurement_time": ("FIRST_MEASUREMENT_TIME", _time),
            "last_measurement_time": ("LAST_MEASUREMENT_TIME", _time),
            "ggo_expire_days": ("GGO_EXPIRE_TIME", _days),
        },
        secrets={"eloverblik_token": "ELOVERBLIK_TOKEN"},
    )


def build_energy_resources() -> dict[str, Any]:
    return {"energy": build_energy_resource()}
