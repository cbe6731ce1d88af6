"""The database a benchmark runs against: DATABASE_URL when set, else a throwaway embedded Postgres."""

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ecr_pipelines.lib.database import ensure_database, normalise_url


@contextmanager
def benchmark_database() -> Iterator[str]:
    """A normalised URL of a database named ``ecr_bench``; the embedded server is deleted after."""
    if os.environ.get("DATABASE_URL"):
        yield ensure_database(normalise_url(os.environ["DATABASE_URL"]), "ecr_bench")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
        import pgserver

    folder = Path(tempfile.mkdtemp(prefix="ecr-bench-pg-"))
    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    try:
        yield ensure_database(normalise_url(server.get_uri()), "ecr_bench")
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
