"""The application: every contract's routes, ``/healthcheck``, and one JSON access-log line per
request.

Each contract module exports ``routes(context) -> list[BaseRoute]`` with the legacy paths (they do
not collide: the registry's ``/undertaking/...``, ``/user/...``; the data store's ``/api/v1/...``;
the packager's ``/package_*``, ``/status``, ``/statistics``; the energy hub's ``/disclosure``).
Endpoints are plain functions: Starlette runs them in its thread pool, so they use the shared
SQLAlchemy engine as any other code here does.

The access log names the method, the path, the status, the time taken and the client, never a
query string, a header or a body: tokens, secrets and signatures travel in those.
"""

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecr_pipelines.api.context import ApiContext, ApiSettings

access_log = logging.getLogger("ecr_pipelines.api.access")


class AccessLog:
    """ASGI middleware: one JSON line per HTTP request, written when the response has started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            access_log.info(
                json.dumps(
                    {
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "client": client[0] if client else None,
                    }
                )
            )


def healthcheck(request: Request) -> JSONResponse:
    return JSONResponse({"status": "OK"})


def contract_modules() -> list[Callable[[ApiContext], list[BaseRoute]]]:
    """Every contract's ``routes`` (imported here, so that one module's import error names it)."""
    from ecr_pipelines.api import ckan, datastore, energy, registry

    return [registry.routes, datastore.routes, ckan.routes, energy.routes]


def build_app(settings: ApiSettings | None = None) -> Starlette:
    context = ApiContext(settings or ApiSettings.from_env())
    routes: list[BaseRoute] = [
        Route("/healthcheck", healthcheck, methods=["GET"]),
        Route("/healthcheck/", healthcheck, methods=["GET"]),
    ]
    for contract in contract_modules():
        routes.extend(contract(context))
    app = Starlette(routes=routes, middleware=[Middleware(AccessLog)])
    app.state.context = context
    return app


def create_app() -> Any:
    """uvicorn's factory (``ecr_pipelines.api.app:create_app``): settings from the environment."""
    return build_app()
