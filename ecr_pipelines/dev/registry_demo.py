"""The registry cache in `make demo`: stand-in F-gas / ODS registries, BDR registry and BDR portal."""

from pathlib import Path

from ecr_pipelines.dev.service import DemoService

RECORDINGS = Path(__file__).resolve().parent / "standins" / "recordings" / "registry"


def _env(base_url: str) -> dict[str, str]:
    return {
        "BASE_URL_FGAS": f"{base_url}/fgas",
        "BASE_URL_ODS": f"{base_url}/ods",
        "API_USER": "demo-user",
        "API_PASSWORD": "demo-password",
        "BDR_API_URL": f"{base_url}/bdr-registry",
        "BDR_API_KEY": "demo-key",
        "BDR_ENDPOINT_URL": f"{base_url}/bdr",
        "BDR_ENDPOINT_USER": "demo-bdr",
        "BDR_ENDPOINT_PASSWORD": "demo-bdr-password",
    }


DEMO_SERVICE = DemoService(
    name="registry",
    recordings=RECORDINGS,
    env=_env,
    run_config={
        "ops": {
            "fgas_undertakings": {"config": {"page_size": 10}},
            "ods_undertakings": {"config": {"page_size": 5}},
            "ods_licences": {"config": {"year": 2025, "page_size": 200}},
        }
    },
)
