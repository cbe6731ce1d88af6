"""The registry API BDR reads (the legacy paths and JSON shapes): undertakings, users, old
companies, mail list, logs, licences and exports (``undertakings``), and the helpdesk's
matching, sync and settings routes (``matching``); both behind the legacy token (``auth``)."""

from starlette.routing import BaseRoute

from ecr_pipelines.api.context import ApiContext
from ecr_pipelines.api.registry import auth, matching, undertakings

__all__ = ["auth", "matching", "routes", "undertakings"]


def routes(context: ApiContext) -> list[BaseRoute]:
    return [*undertakings.routes(context), *matching.routes(context)]
