"""Placeholder: the ckan contract's routes (being written)."""

from starlette.routing import BaseRoute

from ecr_pipelines.api.context import ApiContext


def routes(context: ApiContext) -> list[BaseRoute]:
    return []
