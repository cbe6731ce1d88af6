"""``python -m ecr_pipelines standin NAME``: one stand-in on its own, until Ctrl-C (or SIGTERM).

``solr`` is the Solr protocol stand-in with the shipped schemas and no documents; ``registry``
and ``iati`` serve their recordings at the server's root; any other name is a folder holding a
``routes.json``. Each prints the environment that points the project's clients at it.
"""

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_PORTS = {"solr": 8983, "registry": 8765, "iati": 8766}


def _announce(what: str, url: str, env: dict[str, str]) -> None:
    print(f"{what} on {url} (Ctrl-C stops it); point the clients at it with:", flush=True)
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}", flush=True)


def _wait_for_signal() -> None:
    stop = threading.Event()
    # SIGTERM (docker stop, a test's terminate()) ends the wait like Ctrl-C, so the server's
    # context manager closes the socket instead of the process dying mid-request.
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _solr(port: int, data_dir: Path | None) -> Iterator[tuple[str, str, dict[str, str]]]:
    from ecr_pipelines.dev.standins.solr import SolrStandIn

    with SolrStandIn(port=port, data_dir=data_dir) as solr:
        what = f"Solr stand-in ({', '.join(solr.collections)})"
        yield what, solr.url, {"SOLR_URL": solr.url}


@contextmanager
def _recordings(name: str, port: int) -> Iterator[tuple[str, str, dict[str, str]]]:
    from ecr_pipelines.dev.demo import demo_services
    from ecr_pipelines.dev.standins import StandInServer

    services = {service.name: service for service in demo_services() if service.recordings is not None}
    with StandInServer(port=port) as server:
        if name in services:
            service = services[name]
            assert service.recordings is not None
            server.load_routes(service.recordings)
            if service.setup is not None:
                service.setup(server, "")
            yield f"{name} stand-in ({service.recordings})", server.url(), service.env(server.url())
        else:
            server.load_routes(Path(name))
            yield f"stand-in for {name}", server.url(), {}


def known_names() -> list[str]:
    from ecr_pipelines.dev.demo import demo_services

    return ["solr", *(s.name for s in demo_services() if s.recordings is not None)]


def serve(name: str, port: int | None = None, data_dir: Path | None = None) -> int:
    """Serve the stand-in ``name`` until interrupted; 2 when it cannot start."""
    if name not in known_names() and not (Path(name) / "routes.json").is_file():
        print(
            f"error: unknown stand-in {name!r}: one of {', '.join(known_names())}, "
            "or a folder holding routes.json",
            file=sys.stderr,
        )
        return 2
    chosen = DEFAULT_PORTS.get(name, 0) if port is None else port
    try:
        server = _solr(chosen, data_dir) if name == "solr" else _recordings(name, chosen)
        with server as (what, url, env):
            _announce(what, url, env)
            _wait_for_signal()
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{chosen}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
