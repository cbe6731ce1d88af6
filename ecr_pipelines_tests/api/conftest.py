"""The application under a real uvicorn on a loopback port, in a thread of the test process:
``serve_api(settings) -> base URL`` (stopped after the test)."""

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn

from ecr_pipelines.api.app import build_app
from ecr_pipelines.api.context import ApiSettings

ServeApi = Callable[[ApiSettings], str]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve_api() -> Iterator[ServeApi]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def serve(settings: ApiSettings) -> str:
        port = _free_port()
        config = uvicorn.Config(
            build_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
