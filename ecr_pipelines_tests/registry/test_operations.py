"""Matching run (``links``) and operator actions (``operator``) against real Postgres and a
stand-in BDR; notification mails land in the outbox table, never sent inside the transaction."""

from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry import operator
from ecr_pipelines.registry.clients import BdrEndpointClient
from ecr_pipelines.registry.links import MatchReport, run_matching
from ecr_pipelines.registry.operator import OperatorError
from ecr_pipelines.registry.store.old_companies import sync_old_companies
from ecr_pipelines.registry.store.undertakings import UndertakingSync
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.registry import payloads as p

COLLECTION = "/ReportekEngine/update_company_collection"
NO_BDR = BdrEndpointClient(make_session(), "", None, None)


def old(
    pk: int, name: str, country: str = "de", eori: str = "", account: str | None = None
) -> dict[str, Any]:
    return {
        "pk": pk,
        "name": name,
        "addr_street": "",
        "addr_postalcode": "",
        "addr_place1": "",
        "addr_place2": "",
        "eori": eori,
        "vat_number": "",
        "active": True,
        "website": "",
        "country": {"code": country, "name": country},
        "date_registered": "2013/05/02 14:02:1367503320",
        "account": account or f"acct{pk}",
    }


def seed(db: DatabaseResource, fgas: list[dict[str, Any]] = (), ods: list[dict[str, Any]] = (),
         old_fgas: list[dict[str, Any]] = (), old_ods: list[dict[str, Any]] = ()) -> None:  # fmt: skip
    with db.begin() as conn:
        sql = Sql(conn)
        UndertakingSync(sql, "FGAS").run(list(fgas))
        UndertakingSync(sql, "ODS").run(list(ods))
        sync_old_companies(sql, "FGAS", list(old_fgas))
        sync_old_companies(sql, "ODS", list(old_ods))


def match(db: DatabaseResource, bdr: BdrEndpointClient = NO_BDR, **settings: Any) -> MatchReport:
    options = {
        "manual_domains": ["FGAS", "ODS"],
        "auto_all_domains": [],
        "auto_new_domains": [],
        "fuzz_limit": 75,
    }
    options.update(settings)
    with db.begin() as conn:
        return run_matching(Sql(conn), bdr, **options)


def links(db: DatabaseResource) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT u.external_id, o.external_id, l.rule, l.verified FROM registry.old_company_link l "
                    "JOIN registry.undertaking u ON u.id = l.undertaking_id JOIN registry.old_company o "
                    "ON o.id = l.oldcompany_id ORDER BY 1, 2"
                )
            )
        ]


def undertaking(db: DatabaseResource, external_id: int) -> sa.Row:
    with db.connect() as conn:
        return conn.execute(
            sa.text("SELECT * FROM registry.undertaking WHERE external_id = :e"), {"e": external_id}
        ).one()


def outbox(db: DatabaseResource) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT recipients, subject, sent_at, dedupe_key FROM pipeline.mail_outbox ORDER BY id"
                )
            )
        ]


def log_rows(db: DatabaseResource) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    'SELECT "user", domain, company_id, oldcompany_id, verified FROM registry.matching_log ORDER BY id'
                )
            )
        ]


def test_links_by_name_and_vat_eori_with_legacy_pool(registry_db: DatabaseResource) -> None:
    seed(
        registry_db,
        fgas=[p.fgas(1, "Polar Cooling GmbH"), p.fgas(2, "Totally Different AG", vat="DE-EORI-9")],
        old_fgas=[
            old(100, "POLAR COOLING GMBH"),
            old(101, "Unrelated Name", eori="DE-EORI-9"),
            old(102, "Polar Cooling GmbH", "fr"),
        ],
        old_ods=[old(200, "Polar Cooling GmbH & Co")],
    )
    report = match(registry_db)
    # 102 is in another country; 200 is an ODS old company: the legacy pool is not split by domain.
    assert links(registry_db) == [
        (1, 100, "name", False),
        (1, 200, "name", False),
        (2, 101, "vat_eori", False),
    ]
    assert report.links_created == 3
    # Re-running creates nothing new.
    assert match(registry_db).links_created == 0
    assert len(links(registry_db)) == 3


def test_run_order_and_auto_verify_settings(registry_db: DatabaseResource, standin: StandInServer) -> None:
    cn = p.address("CN", "NONEU_TYPE", "Shanghai")
    seed(
        registry_db,
        fgas=[
            p.fgas(1, "Lonely Trader Ltd", address=cn),
            p.fgas(2, "No Match Anywhere"),
            p.fgas(3, "Acme Cooling"),
        ],
        ods=[p.ods(10, "Halon Services SRL")],
        old_fgas=[old(100, "ACME COOLING")],
    )
    standin.route(COLLECTION, json={"status": "success"}, headers={"Content-Type": "application/json"})
    bdr = BdrEndpointClient(make_session(retries=0), standin.url(), "u", "p")  # mails need BDR's URL
    report = match(
        registry_db, bdr, auto_all_domains=["ODS"], auto_new_domains=["FGAS"], mail_to=["ops@example.test"]
    )
    assert report.noneu_verified == [1]  # step 1: non-EU F-gas without representative
    assert report.auto_verified == [10]  # step 2: AUTO_VERIFY_ALL domains
    assert report.new_verified == [2]  # step 4: no candidate in an AUTO_VERIFY_NEW domain
    assert links(registry_db) == [(3, 100, "name", False)]
    assert not undertaking(registry_db, 3).oldcompany_verified
    assert {(u, c) for u, _, c, _, v in log_rows(registry_db) if v} == {
        ("SYSTEM", 1),
        ("SYSTEM", 10),
        ("SYSTEM", 2),
    }
    # Each auto-verification queued its own mail (one log row each), none sent yet.
    assert report.mails_queued == 3
    mails = outbox(registry_db)
    assert len({key for *_, key in mails}) == 3 and all(sent is None for _, _, sent, _ in mails)
    assert {subject for _, subject, _, _ in mails} == {"BDR - New Company added"}


def test_taken_and_invalid_old_companies_leave_the_pool(registry_db: DatabaseResource) -> None:
    seed(
        registry_db,
        fgas=[p.fgas(1, "Acme Cooling"), p.fgas(2, "Acme Cooling")],
        old_fgas=[old(100, "Acme Cooling"), old(101, "Acme Cooling")],
    )
    with registry_db.begin() as conn:
        conn.execute(sa.text("UPDATE registry.old_company SET valid = false WHERE external_id = 101"))
    match(registry_db)
    with registry_db.begin() as conn:
        operator.verify(Sql(conn), NO_BDR, 1, 100, "ops")
        operator.flush(Sql(conn), "ops")
    match(registry_db)
    assert links(registry_db) == []  # 100 is taken by 1, 101 is invalid, 1 is verified


def test_verify_with_and_without_a_failing_bdr(registry_db: DatabaseResource, standin: StandInServer) -> None:
    seed(
        registry_db,
        fgas=[p.fgas(1, "Acme Cooling", status="DISABLED")],
        old_fgas=[old(100, "Acme Cooling", account="fgas30123")],
    )
    match(registry_db)
    bdr = BdrEndpointClient(make_session(retries=0), standin.url(), "u", "p")
    standin.route(COLLECTION, json={"status": "fail", "message": "collection locked"}, status=404)
    with pytest.raises(OperatorError, match="collection locked"), registry_db.begin() as conn:
        operator.verify(Sql(conn), bdr, 1, 100, "ops", mail_to=["a@example.test"])
    # The refusal rolled everything back, the queued mail included.
    assert not undertaking(registry_db, 1).oldcompany_verified and log_rows(registry_db) == []
    assert outbox(registry_db) == []

    standin.route(COLLECTION, json={"status": "success"}, headers={"Content-Type": "application/json"})
    with registry_db.begin() as conn:
        outcome = operator.verify(Sql(conn), bdr, 1, 100, "ops", mail_to=["a@example.test", "b@example.test"])
    u = undertaking(registry_db, 1)
    assert (u.oldcompany_verified, u.oldcompany_account, u.oldcompany_extid) == (True, "fgas30123", 100)
    assert links(registry_db) == [(1, 100, "name", True)]
    assert log_rows(registry_db) == [("ops", "FGAS", 1, 100, True)]
    assert standin.requests_to(COLLECTION)[-1].query["old_collection_id"] == "fgas30123"
    # One queued mail per address, keyed by the log row; nothing is sent inside the transaction.
    assert outcome.changed and outcome.mails_queued == 2
    assert [(r[0], r[1]) for r in outbox(registry_db)] == [
        (["a@example.test"], "BDR - New Company matched"),
        (["b@example.test"], "BDR - New Company matched"),
    ]
    assert all(key.startswith(f"registry.matching_log:{outcome.log_id}:") for *_, key in outbox(registry_db))

    # A re-run of the same verification is a no-op: no BDR call, no log row, no second mail.
    calls = len(standin.requests_to(COLLECTION))
    with registry_db.begin() as conn:
        again = operator.verify(Sql(conn), bdr, 1, 100, "ops", mail_to=["a@example.test", "b@example.test"])
    assert not again.changed and len(standin.requests_to(COLLECTION)) == calls
    assert len(log_rows(registry_db)) == 1 and len(outbox(registry_db)) == 2


def test_manual_verify_none_unverify_and_flush(registry_db: DatabaseResource) -> None:
    seed(
        registry_db, fgas=[p.fgas(1, "Acme Cooling"), p.fgas(2, "Beta")], old_fgas=[old(100, "Acme Cooling")]
    )
    match(registry_db)
    with registry_db.begin() as conn:
        sql = Sql(conn)
        operator.manual(sql, NO_BDR, 2, "fgas", "fgas555", "ops")
        operator.verify(sql, NO_BDR, 1, 100, "ops")
        operator.unverify(sql, 1, "FGAS", "ops2")
    u1, u2 = undertaking(registry_db, 1), undertaking(registry_db, 2)
    assert (u2.oldcompany_verified, u2.oldcompany_account, u2.oldcompany_id) == (True, "fgas555", None)
    assert (u1.oldcompany_verified, u1.oldcompany_account, u1.oldcompany_id) == (False, None, None)
    assert links(registry_db) == [(1, 100, "name", False)]  # the link is really reset
    with registry_db.begin() as conn:
        operator.verify_none(Sql(conn), NO_BDR, 1, "FGAS", "ops")
        assert operator.flush(Sql(conn), "ops") == 1
    assert links(registry_db) == [] and undertaking(registry_db, 1).oldcompany_verified
    # The flush wrote no matching_log row (legacy): the log holds the verifications only.
    assert [r[0] for r in log_rows(registry_db)] == ["ops", "ops", "ops2", "ops"]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda sql: operator.verify(sql, NO_BDR, 999, 100, "ops"), "no undertaking with external id 999"),
        (lambda sql: operator.verify(sql, NO_BDR, 1, 555, "ops"), "no proposed link"),
        (lambda sql: operator.unverify(sql, 1, "FGAS", "ops"), "is not verified"),
        (
            lambda sql: operator.manual(sql, NO_BDR, 1, "ODS", "x", "ops"),
            "no undertaking with external id 1 in ODS",
        ),
    ],
)
def test_unknown_ids_give_clear_errors(registry_db: DatabaseResource, action: Any, message: str) -> None:
    seed(registry_db, fgas=[p.fgas(1, "Acme Cooling")], old_fgas=[old(100, "Acme Cooling")])
    with pytest.raises(OperatorError, match=message), registry_db.begin() as conn:
        action(Sql(conn))


@pytest.mark.parametrize("action", ["manual", "verify_none"])
def test_manual_and_verify_none_roll_back_when_bdr_refuses(
    registry_db: DatabaseResource, standin: StandInServer, action: str
) -> None:
    seed(registry_db, fgas=[p.fgas(1, "Acme Cooling", status="DISABLED")])  # did not pass the checks
    standin.route(COLLECTION, json={"status": "fail", "message": "refused"}, status=404)
    bdr = BdrEndpointClient(make_session(retries=0), standin.url(), "u", "p")
    with pytest.raises(OperatorError, match="refused"), registry_db.begin() as conn:
        if action == "manual":
            operator.manual(Sql(conn), bdr, 1, "FGAS", "fgas777", "ops", mail_to=["a@example.test"])
        else:
            operator.verify_none(Sql(conn), bdr, 1, "FGAS", "ops", mail_to=["a@example.test"])
    assert not undertaking(registry_db, 1).oldcompany_verified and log_rows(registry_db) == []
    assert outbox(registry_db) == []
    assert standin.requests_to(COLLECTION)[0].query.get("old_collection_id") == (
        "fgas777" if action == "manual" else None
    )
