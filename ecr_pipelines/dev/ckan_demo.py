"""The CKAN packager in `make demo`: a stand-in CKAN (generated datastore tables and a file) and
one request of each kind queued before the run, as a portal would send them."""

from typing import Any

from ecr_pipelines.dev.service import DemoService
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ckan import CkanStandIn, rows_table, synthetic_table

ROWS_RESOURCE = "demo-measurements"
DWC_RESOURCE = "demo-specimens"
FILE_RESOURCE = "demo-species-list"
FILE_PATH = "/ckan/files/species-list.csv"
DEMO_EMAIL = "data.user@example.org"

_SPECIMENS: list[dict[str, Any]] = [
    {
        "_id": 1,
        "scientificName": "Parus major",
        "Event date": "2019-05-04",
        "country": "Denmark",
        "basisOfRecord": "PreservedSpecimen",
        "associatedMedia": [
            {"mime": "jpeg", "identifier": "https://images.example.org/1.jpg", "title": "Dorsal"},
            {"mime": "png", "identifier": "https://images.example.org/1b.png", "title": "Ventral"},
        ],
        "Collection code": "ORN",
    },
    {
        "_id": 2,
        "scientificName": "Erithacus rubecula",
        "Event date": "2020-11-21",
        "country": "France",
        "basisOfRecord": "PreservedSpecimen",
        "associatedMedia": None,
        "Collection code": "ORN",
    },
    {
        "_id": 3,
        "scientificName": "Quercus robur",
        "Event date": "2018-07-30",
        "country": "Italia",
        "basisOfRecord": "HumanObservation",
        "associatedMedia": {"mime": "jpeg", "identifier": "https://images.example.org/3.jpg"},
        "Collection code": "BOT",
    },
]
_SPECIES_CSV = b"taxon,vernacular\nParus major,Great tit\nErithacus rubecula,European robin\n"


def _setup(server: StandInServer, mount: str) -> None:
    ckan = CkanStandIn(server)
    ckan.add_table(ROWS_RESOURCE, synthetic_table(20_000))
    ckan.add_table(DWC_RESOURCE, rows_table(_SPECIMENS))
    ckan.add_file(FILE_PATH, _SPECIES_CSV, "text/csv")


def _env(base_url: str) -> dict[str, str]:
    # The stand-in serves its action at the server's root, as a CKAN site does.
    root = base_url.rsplit("/", 1)[0]
    return {
        "DEMO_CKAN_API_URL": f"{root}/api/3/action/datastore_search",
        "DEMO_CKAN_FILE_URL": f"{root}{FILE_PATH}",
    }


def queue_requests(env: dict[str, str]) -> list[int]:
    """One request of each kind, as a portal would send them (all small: the fast queue)."""
    from ecr_pipelines.ckan.stages.requests import submit
    from ecr_pipelines.lib.database import engine_for
    from ecr_pipelines.lib.settings import env_str

    api_url, file_url = env["DEMO_CKAN_API_URL"], env["DEMO_CKAN_FILE_URL"]
    requests = [
        ("datastore", {"api_url": api_url, "resource_id": ROWS_RESOURCE, "limit": 5000, "format": "csv"}),
        ("dwc", {"api_url": api_url, "resource_id": DWC_RESOURCE, "limit": 100, "doi": "10.5072/demo.1"}),
        ("url", {"resource_id": FILE_RESOURCE, "resource_url": file_url}),
    ]
    engine = engine_for(env_str("DATABASE_URL"))
    return [submit(engine, kind, {**raw, "email": DEMO_EMAIL}, source="demo")[0] for kind, raw in requests]


DEMO_SERVICE = DemoService(name="ckan", recordings=None, env=_env, setup=_setup, before_run=queue_requests)
