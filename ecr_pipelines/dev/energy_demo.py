"""The energy hub in `make demo`: stand-ins for ElOverblik, the EnergyTypeService, the ledger and a
webhook subscriber, and one customer onboarded before the run.

The customer is the recording's (a wind turbine, E18, and a household, E17, both with child
points the import leaves out). Their hours are synthetic, from the first of the previous month
(the default window) to today: the turbine produces nothing at night, so some hours get no GGO.
Before the run, as an operator would with ``energy_onboard_job``, ``energy_webhook_job`` and
``energy_disclosure_job``: the customer is onboarded and its points imported, a subscriber takes
every event, the household's ledger key is set (the legacy's ``/meteringpoints/set-key``) with
two of its hours settled on the ledger by GGOs from the turbine, and a disclosure of the
household's consumption is created. The run then imports the hours, issues the GGOs, sends the
webhooks and compiles the disclosure.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

from ecr_pipelines.dev.service import DemoService
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.eloverblik import (
    EloverblikStandIn,
    EnergyTypeStandIn,
    recorded_meteringpoints,
)
from ecr_pipelines.dev.standins.ledger import LedgerStandIn
from ecr_pipelines.dev.standins.webhooks import WebhookReceiver

CUSTOMER = "demo-customer"
HOOK = "demo-subscriber"
HOOK_SECRET = "demo-webhook-secret"  # the stand-in subscriber's own, not a deployment secret
# bip32's serialization of the master key of an all-zero seed: a fixed demo key, nobody's wallet.
DEMO_LEDGER_KEY_SEED = bytes(32)

_standins: dict[str, tuple[EloverblikStandIn, EnergyTypeStandIn, LedgerStandIn, WebhookReceiver]] = {}


def _production(gsrn: str, hour: datetime) -> str:
    # A turbine that rests at night: hours 22:00-05:00 UTC produce nothing (and get no GGO).
    return "0" if hour.hour >= 22 or hour.hour < 5 else f"{1.5 + (hour.hour % 7) * 0.25:.2f}"


def _consumption(gsrn: str, hour: datetime) -> str:
    return f"{0.2 + (hour.hour % 12) * 0.05:.2f}"


def _setup(server: StandInServer, mount: str) -> None:
    eloverblik = EloverblikStandIn(server, mount=f"{mount}/eloverblik")
    types = EnergyTypeStandIn(server, mount=f"{mount}/energytype")
    ledger = LedgerStandIn(server, mount=f"{mount}/ledger")
    receiver = WebhookReceiver(server, mount=f"{mount}/hooks")
    points = recorded_meteringpoints()
    eloverblik.add_customer(CUSTOMER, points)
    production, consumption = (p["meteringPointId"] for p in points)
    eloverblik.serve_synthetic(production, quantity=_production)
    eloverblik.serve_synthetic(consumption, quantity=_consumption)
    types.set_type(production, "T020000", "F01050100")  # wind
    types.set_emissions(production)
    receiver.set_secret(HOOK, HOOK_SECRET)
    _standins[mount] = (eloverblik, types, ledger, receiver)


def demo_standins(
    mount: str = "/energy",
) -> tuple[EloverblikStandIn, EnergyTypeStandIn, LedgerStandIn, WebhookReceiver]:
    """The stand-ins ``_setup`` mounted (for tests that add to them)."""
    return _standins[mount]


def _env(base_url: str) -> dict[str, str]:
    mount = "/" + base_url.rstrip("/").rsplit("/", 1)[-1]
    eloverblik, types, ledger, _ = _standins[mount]
    return {**eloverblik.env(), **types.env(), **ledger.env()}


def _demo_key() -> str:
    from bip32 import BIP32

    return BIP32.from_seed(DEMO_LEDGER_KEY_SEED).get_xpriv()


def prepare(env: dict[str, str]) -> dict[str, Any]:
    """Onboard the customer, subscribe the stand-in subscriber, settle two hours on the ledger and
    create a disclosure (the operator's steps before the run)."""
    import sqlalchemy as sa

    from ecr_pipelines.energy import ledger, webhooks
    from ecr_pipelines.energy.eloverblik import EloverblikClient
    from ecr_pipelines.energy.energytypes import EnergyTypeClient
    from ecr_pipelines.energy.measurements import default_begin
    from ecr_pipelines.energy.stages import disclosures, meteringpoints
    from ecr_pipelines.lib.database import engine_for
    from ecr_pipelines.lib.http import make_session
    from ecr_pipelines.lib.settings import env_str

    mount = next(
        m
        for m, s in _standins.items()
        if s[0].env()["ELOVERBLIK_SERVICE_URL"] == env["ELOVERBLIK_SERVICE_URL"]
    )
    _, _, ledger_standin, receiver = _standins[mount]
    engine = engine_for(env_str("DATABASE_URL"))
    with engine.begin() as conn:
        for event in webhooks.WebhookEvent:
            if event.value != "ON_METERINGPOINTS_AVAILABLE":
                webhooks.subscribe(conn, event.value, CUSTOMER, receiver.url(HOOK), HOOK_SECRET)
        meteringpoints.onboard(conn, CUSTOMER)
    session = make_session()
    client = EloverblikClient(session, env["ELOVERBLIK_SERVICE_URL"], env["ELOVERBLIK_TOKEN"])
    meteringpoints.import_due(engine, client, EnergyTypeClient(session, env["ENERGY_TYPE_SERVICE_URL"]))
    production, consumption = (p["meteringPointId"] for p in recorded_meteringpoints())
    key = _demo_key()
    first = default_begin(datetime.now(UTC))
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE energy.meteringpoint SET ledger_extended_key = :k WHERE gsrn = :g"),
            {"k": key, "g": consumption},
        )
        # Two consumed hours settled by GGOs of the turbine (retired to the household on the ledger).
        for hour in (first + timedelta(hours=10), first + timedelta(hours=11)):
            settlement = ledger.address_of(key, ledger.SETTLEMENT, hour)
            measurement = ledger.address_of(key, ledger.MEASUREMENT, hour)
            ggo = f"demo-ggo-{production}-{int(hour.timestamp())}"
            assert settlement and measurement
            ledger_standin.put_ggo(ggo, 1500, hour, hour + timedelta(hours=1), "DK1", "T020000", "F01050100")
            ledger_standin.put_settlement(settlement, measurement, [(ggo, 1500)])
        public_id = disclosures.create_disclosure(
            conn,
            CUSTOMER,
            {
                "name": "Household consumption",
                "description": "The demo customer's consumption, per point, by day",
                "begin": first.date().isoformat(),
                "end": (first + timedelta(days=6)).date().isoformat(),
                "maxResolution": "day",
                "publicizeMeteringpoints": True,
                "publicizeGsrn": True,
                "publicizePhysicalAddress": False,
                "gsrn": [consumption],
            },
        )
    return {"customer": CUSTOMER, "disclosure": public_id}


DEMO_SERVICE = DemoService(name="energy", recordings=None, env=_env, setup=_setup, before_run=prepare)
