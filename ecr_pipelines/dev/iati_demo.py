"""IATI in `make demo`: a stand-in Bulk Data Service (both indices and the cached files)."""

from pathlib import Path

from ecr_pipelines.dev.service import DemoService
from ecr_pipelines.dev.solr_demo import SolrDemo

RECORDINGS = Path(__file__).resolve().parent / "standins" / "recordings" / "iati"


def _env(base_url: str) -> dict[str, str]:
    return {
        "IATI_SOURCE": "bds",
        "IATI_DATASET_INDEX_URL": f"{base_url}/datasets-minimal",
        "IATI_REPORTING_ORG_INDEX_URL": f"{base_url}/reporting-orgs",
        # The registry recordings are there too (IATI_SOURCE=registry), unpaced.
        "IATI_REGISTRY_URL": f"{base_url}/registry",
        "IATI_REGISTRY_REQUEST_DELAY": "0",
        # Validate fresh schema-invalid files in the same run instead of holding them for the
        # safety check's period, so the demo shows the clean stage at work.
        "IATI_SAFETY_CHECK_HOLD_HOURS": "0",
    }


DEMO_SERVICE = DemoService(name="iati", recordings=RECORDINGS, env=_env, extra=SolrDemo)
