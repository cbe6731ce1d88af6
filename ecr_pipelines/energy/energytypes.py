"""The EnergyTypeService client (no Dagster): a production point's technology and fuel codes,
and the emissions stamped on its GGOs."""

from typing import Any

import orjson
import requests

from ecr_pipelines.lib.http import request


class EnergyTypeError(Exception):
    """The service's answer is not JSON."""

    kind = "bad_answer"


class EnergyTypeUnavailable(EnergyTypeError):
    """The service answered that it cannot tell this point's codes (``success: false``)."""

    kind = "energy_type_unavailable"


class EnergyTypeClient:
    def __init__(self, session: requests.Session, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    def _get(self, path: str, gsrn: str) -> Any:
        response = request(self.session, "GET", f"{self.base_url}{path}", params={"gsrn": gsrn})
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise EnergyTypeError(f"{path}: the answer is not JSON ({exc})") from exc

    def energy_type(self, gsrn: str) -> tuple[str, str]:
        """(technology code, fuel code); ``EnergyTypeUnavailable`` when the service cannot say."""
        answer = self._get("/get-energy-type", gsrn)
        if not isinstance(answer, dict) or not answer.get("success"):
            message = answer.get("message") if isinstance(answer, dict) else None
            raise EnergyTypeUnavailable(str(message or "the service gave no energy type"))
        technology, fuel = answer.get("technologyCode"), answer.get("fuelCode")
        if not technology or not fuel:
            raise EnergyTypeUnavailable("the answer lacks technologyCode or fuelCode")
        return str(technology), str(fuel)

    def emissions(self, gsrn: str) -> dict[str, Any]:
        """The point's emissions; ``{}`` when the service has none (as the legacy)."""
        answer = self._get("/get-emissions", gsrn)
        if isinstance(answer, dict) and answer.get("success") and isinstance(answer.get("emissions"), dict):
            return answer["emissions"]
        return {}
