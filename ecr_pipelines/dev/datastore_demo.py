"""The data store in `make demo`: stand-in listing pages and files for the three downloaded
sources, and before the run one file of every other source placed under its prefix, as an
operator would, plus one CSV upload (loaded with its inferred types: the demo sets
``DATASTORE_UPLOAD_AUTO_VERIFY``)."""

from pathlib import Path

from ecr_pipelines.dev.service import DemoService
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.datastore import DatastoreStandIn

FILES = Path(__file__).resolve().parent / "datastore"
# Source id -> the sample file placed under its prefix.
PLACED = {
    "dit.reference_postcodes": "dit_reference_postcodes_snapshot1.csv",
    "dit.baci": "dit_baci.csv",
    "dit.eu_country_membership": "dit_eu_country_membership_eu_spine.csv",
    "comtrade.country_code_and_iso": "comtrade_country_code_and_iso_demo.csv",
    "world_bank.bound_rates": "world_bank_bound_rates_multiple_nomen_codes.csv",
    "world_bank.tariff": "world_bank_tariff_demo.csv",
}
UPLOAD_KEY = "datastore/uploads/demo/ons_postcodes/ons_postcodes.csv"

_standins: dict[str, DatastoreStandIn] = {}


def _setup(server: StandInServer, mount: str) -> None:
    _standins[mount] = DatastoreStandIn(server, mount=mount, files_dir=FILES)


def _env(base_url: str) -> dict[str, str]:
    mount = "/" + base_url.rstrip("/").rsplit("/", 1)[-1]
    return {**_standins[mount].env(), "DATASTORE_UPLOAD_AUTO_VERIFY": "true"}


def place_files(env: dict[str, str]) -> list[str]:
    """What an operator does before the run: `datastore put` for every source without a
    downloader (SPIRE's 25 tables included), and one CSV upload."""
    from ecr_pipelines.datastore.sources import SOURCES
    from ecr_pipelines.lib.blobstore import open_blob_store
    from ecr_pipelines.lib.settings import env_str

    store = open_blob_store(env_str("BLOB_STORE_URL"), env_str("S3_ENDPOINT_URL"))
    keys = []
    for source_id, name in PLACED.items():
        keys.append(f"{SOURCES[source_id].blob_prefix}{name}")
        store.put_file(keys[-1], FILES / "placed" / name)
    for table in sorted((FILES / "placed" / "spire").glob("*.csv")):
        keys.append(f"{SOURCES['dit.spire.' + table.stem].blob_prefix}{table.name}")
        store.put_file(keys[-1], table)
    store.put_file(UPLOAD_KEY, FILES / "upload" / "ons_postcodes.csv")
    keys.append(UPLOAD_KEY)
    return keys


DEMO_SERVICE = DemoService(name="datastore", recordings=None, env=_env, setup=_setup, before_run=place_files)
