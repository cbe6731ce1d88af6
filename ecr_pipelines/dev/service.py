"""What a service contributes to the demo and the tests: its stand-ins and the environment that
points its real clients at them."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecr_pipelines.dev.standins import StandInServer


@dataclass(frozen=True)
class DemoService:
    name: str
    recordings: Path | None
    env: Callable[[str], dict[str, str]]
    setup: Callable[[StandInServer, str], None] | None = None  # dynamic routes (paging, callbacks)
    run_config: dict[str, Any] = field(default_factory=dict)
    # Another stand-in with a protocol of its own (e.g. Solr): a context manager giving its env.
    extra: Callable[[], AbstractContextManager[dict[str, str]]] | None = None
    # Work to queue before the demo's run (the env holds the stand-ins' URLs); not for `make dev`.
    before_run: Callable[[dict[str, str]], Any] | None = None
