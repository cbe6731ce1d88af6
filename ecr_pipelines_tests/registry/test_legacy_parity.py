"""Issue 11: the registry gives the legacy service's results where users would notice.

One test (or a few) per item of the issue, each pinning the legacy outcome on a small input, or,
where the legacy was plainly wrong and the fix is kept, pinning the fix (named so in the test).
Real Postgres and a stand-in BDR / registry; invented data.
"""

from datetime import date, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry import operator
from ecr_pipelines.registry.clients import BdrEndpointClient, RegistryClient
from ecr_pipelines.registry.defs.licences import QUANTITY_MISMATCHES
from ecr_pipelines.registry.licences import aggregate_licences, aggregate_quantity
from ecr_pipelines.registry.links import run_matching
from ecr_pipelines.registry.operator import OperatorError, Recipient
from ecr_pipelines.registry.parse import parse_bdr_date_registered
from ecr_pipelines.registry.reference import load_reference_tables
from ecr_pipelines.registry.store.collections import sync_collections
from ecr_pipelines.registry.store.licences import store_licences
from ecr_pipelines.registry.store.old_companies import sync_old_companies
from ecr_pipelines.registry.store.undertakings import SyncReport, SyncRequest, UndertakingSync, sync_domain
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.registry import payloads as p

COLLECTION = "/bdr/ReportekEngine/update_company_collection"
NO_BDR = BdrEndpointClient(make_session(), "", None, None)
PLAB_CODE = "import.or.production.of.substance.for.laboratory.or.analytical.use"


# -- helpers ----------------------------------------------------------------------------------------


def sync(db: DatabaseResource, domain: str, records: list[Any], **kwargs: Any) -> SyncReport:
    with db.begin() as conn:
        return UndertakingSync(Sql(conn), domain, **kwargs).run(records)


def rows(db: DatabaseResource, query: str, **params: Any) -> list[sa.Row]:
    with db.connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def one(db: DatabaseResource, query: str, **params: Any) -> sa.Row:
    (row,) = rows(db, query, **params)
    return row


def old(pk: int, name: str, country: str = "de", account: str | None = None, **extra: Any) -> dict[str, Any]:
    record = {
        "pk": pk, "name": name, "addr_street": "", "addr_postalcode": "", "addr_place1": "", "addr_place2": "",
        "eori": "", "vat_number": "", "active": True, "website": "", "country": {"code": country, "name": country},
        "date_registered": "2013/05/02 14:02:1367503320", "account": account,
    }  # fmt: skip
    record.update(extra)
    return record


def bdr_standin(standin: StandInServer) -> BdrEndpointClient:
    standin.route(COLLECTION, json={"status": "success"}, headers={"Content-Type": "application/json"})
    return BdrEndpointClient(make_session(retries=0), standin.url("/bdr"), "u", "p")


def match(db: DatabaseResource, bdr: BdrEndpointClient = NO_BDR, **settings: Any) -> Any:
    options: dict[str, Any] = {
        "manual_domains": ["FGAS", "ODS"],
        "auto_all_domains": [],
        "auto_new_domains": [],
        "fuzz_limit": 75,
    }
    options.update(settings)
    with db.begin() as conn:
        return run_matching(Sql(conn), bdr, **options)


def links(db: DatabaseResource) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in rows(
            db,
            "SELECT u.external_id, o.external_id, o.obligation FROM registry.old_company_link l "
            "JOIN registry.undertaking u ON u.id = l.undertaking_id "
            "JOIN registry.old_company o ON o.id = l.oldcompany_id ORDER BY 1, 2, 3",
        )
    ]


FEEDSTOCK = "export.of.substance.for.feedstock.use"
LAB = (
    "export.of.substance.for.laboratory.or.analytical.use.carrier.solvent.during.instrumental.analysis"
    ".e.g..spectroscopy.chromatography"
)


def licence(licence_id: int, net: float, use: str = FEEDSTOCK, **overrides: Any) -> dict[str, Any]:
    row = {
        "organizationId": 10, "licenceId": licence_id, "longLicenceNumber": f"ODS-EXP-2025-{licence_id}",
        "chemicalName": "CFC-11", "mixtureNatureType": "VIRGIN", "licenceState": "CLOSED",
        "customProcedureName": "Re-export", "organizationCountryName": "Romania",
        "internationalPartyCountryName": "United States of America", "totalOdpMass": 1.0, "netMass": net,
        "templateDetailedUseCode": use, "licenceType": "EXP", "licenceUpdateDate": "2025-11-03T10:15:00",
    }  # fmt: skip
    row.update(overrides)
    return row


def store(
    db: DatabaseResource, licence_rows: list[dict[str, Any]], patches: Any = (), known: Any = (10,)
) -> Any:
    with db.begin() as conn:
        aggregation = aggregate_licences(licence_rows, 2025, known_organization_ids=list(known))
        return store_licences(Sql(conn), aggregation, patches)


# -- 1. matching mails: off unless asked for, need BDR_ENDPOINT_URL, "Dear <first> <last>" ------------


def test_1_matching_mails_greet_by_name_and_name_the_old_company(
    registry_db: DatabaseResource, standin: StandInServer
) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, "Acme Cooling GmbH"), p.fgas(2, "Brand New GmbH")])
    with registry_db.begin() as conn:
        sync_old_companies(Sql(conn), "FGAS", [old(100, "ACME COOLING GMBH", account="fgas100")])
        conn.execute(
            sa.text(
                "INSERT INTO registry.mail_address (mail, first_name, last_name) "
                "VALUES ('ann@example.test', 'Ann', 'Lee'), ('bob@example.test', 'Bob', 'Ray')"
            )
        )
    match(registry_db)
    bdr = bdr_standin(standin)
    with registry_db.begin() as conn:
        sql = Sql(conn)
        recipients = operator.notification_addresses(sql)
        assert recipients[0] == Recipient("ann@example.test", "Ann", "Lee")
        assert operator.verify(sql, bdr, 1, 100, "jane", mail_to=recipients).mails_queued == 2
        assert operator.verify_none(sql, bdr, 2, "FGAS", "jane", mail_to=recipients).mails_queued == 2
    mails = rows(registry_db, "SELECT recipients, subject, body, html FROM pipeline.mail_outbox ORDER BY id")
    matched, _, added, _ = mails
    assert matched.recipients == ["ann@example.test"] and matched.subject == "BDR - New Company matched"
    assert matched.body.startswith("Dear Ann Lee,\n")
    assert "User jane has matched Acme Cooling GmbH company (registered in the FGAS portal)" in matched.body
    assert "with the old record ACME COOLING GMBH (taken from BDR-Registry)" in matched.body
    assert f"{bdr.url}/european_registry/organisation_details?id=1&domain=FGAS" in matched.body
    assert "<b>ACME COOLING GMBH</b>" in matched.html
    assert mails[1].body.startswith("Dear Bob Ray,\n")
    assert added.subject == "BDR - New Company added" and added.body.startswith("Dear Ann Lee,\n")
    assert "User jane has added Brand New GmbH company (registered in the FGAS portal)." in added.body


def test_1_no_bdr_endpoint_no_mail(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1)])
    with registry_db.begin() as conn:
        outcome = operator.verify_none(Sql(conn), NO_BDR, 1, "FGAS", "jane", mail_to=["ann@example.test"])
    assert outcome.changed and outcome.mails_queued == 0
    assert rows(registry_db, "SELECT id FROM pipeline.mail_outbox") == []


# -- 2. licence quantities: plain sum at the legacy column's precision (real) ------------------------


def test_2_quantities_add_up_as_the_legacy_did(registry_db: DatabaseResource) -> None:
    # Plain sum: 0.2 + 2.2 + 0.6 = 3.0000000000000004, which the legacy ceiled to 4.
    assert aggregate_quantity([0.2, 2.2, 0.6], "destruction") == 4
    sync(registry_db, "ODS", [p.ods(10)])
    store(registry_db, [licence(1, 0.2), licence(2, 2.2), licence(3, 0.6), licence(4, 0.123456789, LAB)])
    quantities = {r.lic_use_desc: r.quantity for r in rows(registry_db, "SELECT * FROM registry.substance")}
    assert quantities == {"feedstock": 4.0, "laboratory uses": 0.1234568}
    # The masses are kept as the legacy's `real` columns kept them.
    assert (
        one(registry_db, "SELECT net_mass FROM registry.licence WHERE licence_id = 4").net_mass == 0.12345679
    )
    column = (
        "SELECT format_type(atttypid, atttypmod) AS type_name FROM pg_attribute WHERE attname = 'net_mass' "
    )
    assert one(registry_db, column + "AND attrelid = 'registry.licence'::regclass").type_name == "real"
    # The asset check agrees with these figures, and still catches a wrong one.
    assert offending_rows_check(registry_db, QUANTITY_MISMATCHES).passed
    with registry_db.begin() as conn:
        conn.execute(sa.text("UPDATE registry.substance SET quantity = 7 WHERE lic_use_desc = 'feedstock'"))
    assert not offending_rows_check(registry_db, QUANTITY_MISMATCHES).passed


# -- 3. country names with stray blanks in the conversion table: fix kept ---------------------------


def test_3_fix_kept_a_table_name_with_a_stray_blank_still_translates(registry_db: DatabaseResource) -> None:
    # The table says "Finland " (trailing blank): the legacy's exact lookup dropped these licences.
    assert load_reference_tables().country_alpha2("Finland") == "FI"
    sync(registry_db, "ODS", [p.ods(10)])
    report = store(registry_db, [licence(1, 2.0, internationalPartyCountryName="Finland")])
    assert report.untranslated == []
    assert one(registry_db, "SELECT s_orig_country_name, quantity FROM registry.substance") == ("FI", 2.0)


# -- 4. PATCH_LICENCES count on the next run, new data or not, delivery or not -----------------------


def test_4_licence_patches_apply_on_the_next_run(registry_db: DatabaseResource) -> None:
    sync(registry_db, "ODS", [p.ods(10), p.ods(11, "Other SRL")])
    data = [licence(1, 1.0)]
    assert store(registry_db, data).rebuilt == 1
    patches = [
        {"company_id": 10, "year": 2025, "substance": "X", "use_kind": "", "use_desc": "destruction",
         "type": "import", "quantity": 2.7},
        {"company_id": 11, "year": 2025, "substance": "Y", "use_kind": "", "use_desc": "laboratory uses",
         "type": "import", "quantity": 0.25},
        {"company_id": 999, "year": 2025, "substance": "Z", "quantity": 1},
    ]  # fmt: skip
    report = store(registry_db, data, patches)  # same licence data: nothing rebuilt ...
    assert report.rebuilt == 0 and report.patched == 2  # ... and still both patches stored
    assert report.unusable_patches == [(999, 2025, "not an ODS undertaking of the cache")]
    patched = rows(
        registry_db,
        "SELECT u.external_id, s.substance, s.quantity, d.updated_since FROM registry.substance s "
        "JOIN registry.delivery_licence d ON d.id = s.delivery_id JOIN registry.undertaking u "
        "ON u.id = d.undertaking_id WHERE s.patched ORDER BY 1",
    )
    # 11 has no licence data that year: a delivery was made for its patch (int unless laboratory).
    assert [tuple(r) for r in patched] == [(10, "X", 2.0, date(2025, 11, 3)), (11, "Y", 0.25, None)]
    store(registry_db, data, patches[:1])  # an entry taken out of the file goes at the next run
    assert [
        r.substance for r in rows(registry_db, "SELECT substance FROM registry.substance WHERE patched")
    ] == ["X"]
    # Newer licence data rebuilds the aggregates and keeps the patched rows.
    assert store(registry_db, [licence(1, 5.0, licenceUpdateDate="2025-12-01")], patches[:1]).rebuilt == 1
    assert {r.substance: r.quantity for r in rows(registry_db, "SELECT * FROM registry.substance")} == {
        "CFC-11 (virgin)": 5.0,
        "X": 2.0,
    }


# -- 5. lenient payloads ------------------------------------------------------------------------------


def test_5_unknown_keys_are_ignored_and_reported(registry_db: DatabaseResource) -> None:
    record = p.fgas(1, newField="x")
    record["address"]["floor"] = 3
    record["contactPersons"][0]["role"] = "boss"
    report = sync(registry_db, "FGAS", [record, p.fgas(2, newField="y")])
    assert report.inserted == 2 and report.rejected == []
    assert report.unknown_fields == {
        "address.floor": ["1"],
        "contactPersons[].role": ["1"],
        "newField": ["1", "2"],
    }


def test_5_nulls_the_legacy_stored_are_stored(registry_db: DatabaseResource) -> None:
    sync(registry_db, "ODS", [p.ods(10)])
    report = sync(registry_db, "ODS", [p.ods(10, eoriNumber=None), p.ods(11, eoriNumber=None)])
    # Known company: stored with vat NULL and failing checks; a new failing ODS one is not stored.
    assert report.rejected == [] and report.updated == 1 and report.inserted == 0
    row = one(registry_db, "SELECT vat, check_passed FROM registry.undertaking WHERE external_id = 10")
    assert (row.vat, row.check_passed) == (None, False)

    contact = p.person("")  # an empty userName
    report = sync(registry_db, "FGAS", [p.fgas(1, status=None, name=None, contactPersons=[contact])])
    assert report.inserted == 1 and report.rejected == []
    row = one(
        registry_db, "SELECT status, name, check_passed FROM registry.undertaking WHERE domain = 'FGAS'"
    )
    assert (row.status, row.name, row.check_passed) == (None, None, False)
    assert one(registry_db, "SELECT count(*) AS n FROM registry.\"user\" WHERE username = ''").n == 1


@pytest.mark.parametrize("status", [["VALID"], {"code": "VALID"}])
def test_5_a_status_list_or_object_rejects_that_record_only(
    registry_db: DatabaseResource, status: Any
) -> None:
    fgas = sync(registry_db, "FGAS", [p.fgas(1), p.fgas(2, status=status), p.fgas(3)])
    ods = sync(registry_db, "ODS", [p.ods(10), p.ods(11, status=status)])
    assert (fgas.inserted, [e for e, _ in fgas.rejected]) == (2, ["2"])
    assert (ods.inserted, [e for e, _ in ods.rejected]) == (1, ["11"])


# -- 6. contact persons matched by e-mail -----------------------------------------------------------


def test_6_a_renamed_user_keeps_its_row_and_ecas_id(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person("n00old", "ann@example.test")])])
    before = one(registry_db, 'SELECT id, ecas_id FROM registry."user"')
    assert before.ecas_id == "n00old"
    report = sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person("n00new", "ann@example.test")])])
    after = one(registry_db, 'SELECT id, username, ecas_id FROM registry."user"')
    assert (after.id, after.username, after.ecas_id) == (before.id, "n00new", "n00old")
    assert (report.users_renamed, report.contacts_added, report.contacts_removed) == (1, 0, 0)


def test_6_e_mail_user_names_with_repeated_e_mails_are_not_matched_by_e_mail(
    registry_db: DatabaseResource,
) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person("a@example.test", "same@example.test")])])
    people = [
        p.person("b@example.test", "same@example.test"),
        p.person("c@example.test", "same@example.test"),
    ]
    sync(registry_db, "FGAS", [p.fgas(2, contactPersons=people)])
    assert [r.username for r in rows(registry_db, 'SELECT username FROM registry."user" ORDER BY id')] == [
        "a@example.test",
        "b@example.test",
        "c@example.test",
    ]


def test_6_contact_type_null_when_absent(registry_db: DatabaseResource) -> None:
    untyped = p.person("n00x")
    del untyped["type"]
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[untyped])])
    assert one(registry_db, 'SELECT type FROM registry."user"').type is None
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person("n00x")])])
    assert one(registry_db, 'SELECT type FROM registry."user"').type == "ORGANISATION_USER"
    # A payload without the key leaves a known user's type alone (the legacy only set given keys).
    sync(registry_db, "FGAS", [p.fgas(1, name="Renamed", contactPersons=[untyped])])
    assert one(registry_db, 'SELECT type FROM registry."user"').type == "ORGANISATION_USER"


# -- 7. business profiles resolve to the legacy's rows ------------------------------------------------


def test_7_plab_links_what_the_legacy_linked_and_both_keep_the_batch(registry_db: DatabaseResource) -> None:
    plab = {"highLevelUses": [{"code": PLAB_CODE, "shortCode": "PLAB"}]}
    both = {
        "highLevelUses": [{"code": PLAB_CODE, "shortCode": "ILAB"}, {"code": PLAB_CODE, "shortCode": "PLAB"}]
    }
    report = sync(
        registry_db, "ODS", [p.ods(10, businessProfile=plab), p.ods(11, businessProfile=both), p.ods(12)]
    )
    assert report.inserted == 3 and report.rejected == []
    linked = rows(
        registry_db,
        "SELECT u.external_id, ub.businessprofile_id FROM registry.undertaking_businessprofile ub "
        "JOIN registry.undertaking u ON u.id = ub.undertaking_id WHERE u.external_id IN (10, 11) ORDER BY 1",
    )
    assert [tuple(r) for r in linked] == [(10, 25), (11, 25)]  # the ILAB row, lowest id, as the legacy


# -- 8. unchanged records still get the legacy's outcome; organization_log counts as the legacy ----------


def test_8_unchanged_records_are_checked_again_and_queued_for_bdr(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1)])
    with registry_db.begin() as conn:  # as after a BDR pass, and with a stale check result
        conn.execute(sa.text("UPDATE registry.undertaking SET bdr_due = false, check_passed = false"))
    report = sync(registry_db, "FGAS", [p.fgas(1)])
    assert (report.unchanged, report.updated) == (1, 0)
    row = one(registry_db, "SELECT check_passed, bdr_due FROM registry.undertaking")
    assert (row.check_passed, row.bdr_due) == (True, True)


def test_8_organization_log_counts_what_the_legacy_counted(
    registry_db: DatabaseResource, standin: StandInServer
) -> None:
    fgas_rows = [p.fgas(1), p.fgas(2, status="DISABLED"), p.fgas(3, dateUpdated="31/02/2024")]
    ods_rows = [p.ods(10), p.ods(11, types=["IMPORTER"])]
    standin.route("/fgas/rest/api/latest/fgasundertakings/", json=fgas_rows)
    standin.route("/ods/rest/api/latest/odsundertakings/", json={"rows": ods_rows, "rowCount": 2})
    session = make_session(retries=0)
    for _ in range(2):  # the second run: everything unchanged, still counted
        with registry_db.begin() as conn:
            for domain, path in (("FGAS", "/fgas"), ("ODS", "/ods")):
                client = RegistryClient(session, standin.url(path), "u", "p", domain)
                sync_domain(Sql(conn), client, SyncRequest(page_size=None), today=date(2026, 2, 1))
    counts = rows(registry_db, "SELECT domain, organizations FROM registry.organization_log ORDER BY id")
    # F-gas: every stored record (the failing one too, not the rejected one); ODS: the new
    # failing one is not stored, so not counted.
    assert [tuple(r) for r in counts] == [("FGAS", 2), ("ODS", 1), ("FGAS", 2), ("ODS", 1)]
    # One company by external id: no row; by registration number: a row (legacy CLI).
    client = RegistryClient(session, standin.url("/fgas"), "u", "p", "FGAS")
    for request in (SyncRequest(external_id=1), SyncRequest(registration_id="FG-1")):
        with registry_db.begin() as conn:
            sync_domain(Sql(conn), client, request)
    assert len(rows(registry_db, "SELECT id FROM registry.organization_log")) == 5


# -- 9. one BDR company under both obligations ---------------------------------------------------------


def test_9_one_link_per_bdr_company_and_a_deterministic_verify(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, "Acme Cooling GmbH")])
    sync(registry_db, "ODS", [p.ods(10, "Acme Cooling GmbH", address=p.address("DE"))])
    with registry_db.begin() as conn:
        sync_old_companies(Sql(conn), "FGAS", [old(4021, "ACME COOLING GMBH", account="acme")])
        sync_old_companies(Sql(conn), "ODS", [old(4021, "ACME COOLING GMBH", account="acme")])
    match(registry_db)
    match(registry_db)  # a re-run adds nothing
    # Never two links for one undertaking: each gets the row of its own obligation.
    assert links(registry_db) == [(1, 4021, "FGAS"), (10, 4021, "ODS")]
    with registry_db.begin() as conn, pytest.raises(OperatorError, match="under ODS"):
        operator.verify(Sql(conn), NO_BDR, 1, 4021, "jane", obligation="ODS")
    with registry_db.begin() as conn:
        operator.verify(Sql(conn), NO_BDR, 1, 4021, "jane")
    verified = one(
        registry_db,
        "SELECT o.obligation FROM registry.undertaking u JOIN registry.old_company o ON o.id = u.oldcompany_id",
    )
    assert verified.obligation == "FGAS"
    # Taken under one obligation, the company leaves the pool under both (one row per pk, legacy).
    with registry_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM registry.old_company_link"))
    match(registry_db)
    assert links(registry_db) == []


def test_9_verify_picks_the_own_obligation_when_both_are_linked(registry_db: DatabaseResource) -> None:
    sync(registry_db, "ODS", [p.ods(10, "Acme Cooling GmbH", address=p.address("DE"))])
    with registry_db.begin() as conn:
        sync_old_companies(Sql(conn), "FGAS", [old(4021, "ACME", account="fgas-acme")])
        sync_old_companies(Sql(conn), "ODS", [old(4021, "ACME", account="ods-acme")])
        # Two links, as an older version could leave them.
        conn.execute(
            sa.text(
                "INSERT INTO registry.old_company_link (oldcompany_id, undertaking_id) "
                "SELECT o.id, u.id FROM registry.old_company o, registry.undertaking u"
            )
        )
        operator.verify(Sql(conn), NO_BDR, 10, 4021, "jane")
    assert (
        one(registry_db, "SELECT oldcompany_account FROM registry.undertaking").oldcompany_account
        == "ods-acme"
    )


# -- 10. small ones -------------------------------------------------------------------------------------


def test_10_nulls_not_empty_strings(registry_db: DatabaseResource) -> None:
    cn = p.address("CN", "NONEU_TYPE", "Shanghai")
    absent = p.fgas(2)
    del absent["eori"], absent["registrationNumId"]
    sync(registry_db, "FGAS", [p.fgas(1, address=cn, eori=None, registrationNumId=None), absent])
    got = {
        r.external_id: (r.country_code, r.eori_number, r.registration_id)
        for r in rows(registry_db, "SELECT * FROM registry.undertaking")
    }
    # No derived country (non-EU, no representative, not a manufacturer): NULL; null payload
    # values: NULL; absent keys: "" (the legacy's defaults).
    assert got == {1: (None, None, None), 2: ("DE", "", "")}


def test_10_bdr_date_registered_with_a_nine_digit_epoch() -> None:
    # The legacy cut 11 characters: with a 9-digit epoch one digit of the "minute" goes too.
    assert parse_bdr_date_registered("2001/01/02 09:09:978426000") == datetime(2001, 1, 2, 9, 0)
    assert parse_bdr_date_registered("2013/05/02 14:02:1367503320") == datetime(2013, 5, 2, 14, 2)


def test_10_flush_writes_no_matching_log(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, "Acme Cooling")])
    with registry_db.begin() as conn:
        sync_old_companies(Sql(conn), "FGAS", [old(100, "Acme Cooling")])
    match(registry_db)
    with registry_db.begin() as conn:
        assert operator.flush(Sql(conn), "jane") == 1
    assert rows(registry_db, "SELECT id FROM registry.matching_log") == []


def test_10_bdr_parameters_are_sent_when_the_legacy_sent_them(
    registry_db: DatabaseResource, standin: StandInServer
) -> None:
    cn = p.address("CN", "NONEU_TYPE", "Shanghai")
    nowhere = p.address("XX", "UNKNOWN_TYPE", "Nowhere")
    manufacturer = ["FGAS_MANUFACTURER_OF_EQUIPMENT_HFCS"]
    # Both fail the checks, so the operator's verification calls BDR.
    sync(
        registry_db,
        "FGAS",
        [p.fgas(1, address=cn, types=manufacturer), p.fgas(2, address=nowhere, status="DISABLED")],
    )
    bdr = bdr_standin(standin)
    with registry_db.begin() as conn:
        sql = Sql(conn)
        operator.manual(sql, bdr, 1, "FGAS", "", "jane")  # non-EU without representative
        operator.manual(sql, bdr, 2, "FGAS", "fgas777", "jane")  # no derived country
    first, second = (r.query for r in standin.requests_to(COLLECTION))
    assert first["country"] == "NON_EU" and "old_collection_id" not in first
    assert "country" not in second and second["old_collection_id"] == "fgas777"

    # The rename leaves out an oldcompany_account the company does not have.
    standin.route("/bdr/api/collections_json", json=[{"company_id": "1", "title": "Old title"}])
    standin.route("/bdr/api/update_organisation_name", json={"updated": True})
    with registry_db.begin() as conn:
        conn.execute(sa.text("UPDATE registry.undertaking SET oldcompany_account = NULL, bdr_due = false"))
    sync_collections(registry_db.engine, bdr)
    (rename,) = standin.requests_to("/bdr/api/update_organisation_name")
    assert rename.query["country_code"] == "non_eu" and "oldcompany_account" not in rename.query


def test_10_fixed_a_licence_re_sync_keeps_its_delivery(registry_db: DatabaseResource) -> None:
    # The legacy's substance → delivery cascade deleted the delivery and crashed the re-sync.
    sync(registry_db, "ODS", [p.ods(10)])
    store(registry_db, [licence(1, 1.0)])
    delivery = one(registry_db, "SELECT id FROM registry.delivery_licence").id
    assert store(registry_db, [licence(1, 2.0, licenceUpdateDate="2025-12-01")]).rebuilt == 1
    row = one(registry_db, "SELECT id, updated_since FROM registry.delivery_licence")
    assert (row.id, row.updated_since) == (delivery, date(2025, 12, 1))
