"""The Solr stand-in for ``make demo``: the three IATI collections on loopback.

Usage from the demo (after ``ECR_HOME`` is set)::

    env = SOLR_DEMO.start()      # {"SOLR_URL": "http://127.0.0.1:<port>/solr"}
    ...                          # build the definitions, run the job
    SOLR_DEMO.stop()

or ``with SOLR_DEMO as env: ...``. The committed documents are kept in ``ECR_HOME/solr/`` and
reloaded by the next ``start``, as a real Solr keeps its index: the demo's database remembers
what it indexed, so an empty Solr on the second run would fail the Solr count check.
``SOLR_DEMO.summary()`` gives the committed document count per collection while it runs.
"""

from pathlib import Path

from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.solr_docs import COLLECTIONS
from ecr_pipelines.lib.settings import ecr_home


class SolrDemo:
    """Starts and stops one Solr stand-in serving the shipped configsets."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.server: SolrStandIn | None = None

    def start(self) -> dict[str, str]:
        """Start the stand-in (if not running) and return the environment pointing at it."""
        if self.server is None:
            self.server = SolrStandIn(data_dir=self.data_dir or ecr_home() / "solr").start()
        return {"SOLR_URL": self.server.url}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def summary(self) -> dict[str, int]:
        """Committed documents per collection (empty when not running)."""
        if self.server is None:
            return {}
        return {collection: len(self.server.documents(collection)) for collection in COLLECTIONS}

    def __enter__(self) -> dict[str, str]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SOLR_DEMO = SolrDemo()
