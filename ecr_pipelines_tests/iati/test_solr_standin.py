"""The Solr stand-in speaks Solr's protocol and refuses what Solr would refuse; the shipped
configsets match the IATI field table."""

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysolr
import pytest
import requests
from lxml import etree

from ecr_pipelines.dev.solr_demo import SolrDemo
from ecr_pipelines.dev.standins.solr import CONFIGSETS, Schema, SolrStandIn
from ecr_pipelines.iati.solr_docs import COLLECTIONS

FIELDS_TSV = Path(__file__).resolve().parents[2] / "ecr_pipelines" / "iati" / "solr_fields" / "fields.tsv"

# The Datastore's dynamic fields (IATI/datastore-solr-configs managed-schema), in its order.
DATASTORE_DYNAMIC_FIELDS = [
    "*_i",
    "*_is",
    "*_s",
    "*_ss",
    "*_l",
    "*_ls",
    "*_t",
    "*_txt",
    "*_b",
    "*_bs",
    "*_f",
    "*_fs",
    "*_d",
    "*_ds",
    "random_*",
    "ignored_*",
    "*_str",
    "*_dt",
    "*_dts",
    "*_p",
    "*_srpt",
    "attr_*",
]

MINIMAL_SCHEMA = """<?xml version="1.0" encoding="UTF-8"?>
<schema name="t" version="1.6">
  <uniqueKey>id</uniqueKey>
  <fieldType name="string" class="solr.StrField" docValues="true"/>
  <fieldType name="text" class="solr.TextField" multiValued="true"/>
  <fieldType name="pdouble" class="solr.DoublePointField" docValues="true"/>
  <field name="id" type="string" required="true"/>
  <field name="title" type="text"/>
  <dynamicField name="*_s" type="string"/>
  <dynamicField name="*_ss" type="string" multiValued="true"/>
  <dynamicField name="num_*" type="pdouble"/>
</schema>
"""


@pytest.fixture(scope="module")
def solr() -> Iterator[SolrStandIn]:
    with SolrStandIn() as server:
        yield server


@pytest.fixture
def clean(solr: SolrStandIn) -> SolrStandIn:
    solr.clear()
    return solr


def core(solr: SolrStandIn, name: str) -> pysolr.Solr:
    return pysolr.Solr(f"{solr.url}/{name}", timeout=10, always_commit=False)


def doc(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"doc-{n}",
        "iati_activities_document_id": "D1",
        "iati_activities_document_hash": "H1",
        **extra,
    }


def post(solr: SolrStandIn, collection: str, body: Any, **params: str) -> requests.Response:
    return requests.post(f"{solr.url}/{collection}/update", json=body, params=params, timeout=10)


def select(solr: SolrStandIn, collection: str, **params: Any) -> dict[str, Any]:
    response = requests.get(f"{solr.url}/{collection}/select", params={"wt": "json", **params}, timeout=10)
    response.raise_for_status()
    return response.json()["response"]


# -- configsets ----------------------------------------------------------------------------------


def test_the_configsets_are_the_field_table() -> None:
    with FIELDS_TSV.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for collection in COLLECTIONS:
        conf = CONFIGSETS / collection / "conf"
        root = etree.parse(str(conf / "managed-schema.xml")).getroot()
        fields = {f.get("name"): f for f in root.iter("field")}
        table = [r for r in rows if r["collection"] == collection]
        assert [f.get("name") for f in root.iter("field")] == [r["name"] for r in table]
        for r in table:
            element = fields[r["name"]]
            assert element.get("type") == r["type"], r["name"]
            for flag in ("multiValued", "indexed", "stored", "required"):
                assert (element.get(flag) or "") == r[flag], (collection, r["name"], flag)
        types = {t.get("name") for t in root.iter("fieldType")}
        assert {r["type"] for r in table} <= types
        assert {d.get("type") for d in root.iter("dynamicField")} <= types
        assert root.findtext("uniqueKey") == "id"
        # Solr's default dynamic fields, as in the Datastore's configsets, then the catch-all.
        dynamic = [d.get("name") for d in root.iter("dynamicField")]
        assert dynamic == DATASTORE_DYNAMIC_FIELDS + ["*"]
        catch_all = root.findall("dynamicField")[-1]
        assert (catch_all.get("type"), catch_all.get("indexed"), catch_all.get("stored")) == (
            "text_general",
            "false",
            "true",
        )
        assert {(c.get("source"), c.get("dest")) for c in root.iter("copyField")} == {
            ("*_narrative", "iati_text"),
            ("iati_identifier", "iati_identifier_exact"),
        }
        config = etree.parse(str(conf / "solrconfig.xml")).getroot()
        assert config.findtext("luceneMatchVersion").startswith("9.")
        assert config.find("schemaFactory").get("class") == "ManagedIndexSchemaFactory"
        assert config.findtext("updateHandler/autoCommit/openSearcher") == "false"
        assert config.findtext("updateHandler/autoSoftCommit/maxTime").endswith(":-1}")
    assert (CONFIGSETS / "README.md").is_file()


def analysis(root: etree._Element, type_name: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    (field_type,) = [t for t in root.iter("fieldType") if t.get("name") == type_name]
    return {
        analyzer.get("type"): [
            (step.get("name"), {k: v for k, v in step.attrib.items() if k != "name"}) for step in analyzer
        ]
        for analyzer in field_type.iter("analyzer")
    }


def handler(config: etree._Element, name: str) -> dict[str, dict[str, str]]:
    (element,) = [h for h in config.iter("requestHandler") if h.get("name") == name]
    assert element.get("class") == "solr.SearchHandler"
    return {lst.get("name"): {item.get("name"): item.text for item in lst} for lst in element.findall("lst")}


def test_the_configsets_analyse_text_and_answer_queries_as_the_datastore() -> None:
    """Issue 11 item 11: the Datastore's text analysis and request handlers."""
    with FIELDS_TSV.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for collection in COLLECTIONS:
        conf = CONFIGSETS / collection / "conf"
        schema = etree.parse(str(conf / "managed-schema.xml")).getroot()
        # Stop words, lower case; synonyms (expanded) at query time only. The files must exist or
        # Solr refuses to load the core.
        for type_name in ("text_general", "text_gen_sort"):
            chain = analysis(schema, type_name)
            assert [step for step, _ in chain["index"]] == ["standard", "stop", "lowercase"]
            assert [step for step, _ in chain["query"]] == ["standard", "stop", "synonymGraph", "lowercase"]
            assert chain["query"][2][1] == {
                "synonyms": "synonyms.txt",
                "ignoreCase": "true",
                "expand": "true",
            }
            assert chain["index"][1][1] == {"ignoreCase": "true", "words": "stopwords.txt"}
        assert (conf / "stopwords.txt").is_file() and (conf / "synonyms.txt").is_file()
        words = [
            line for line in (conf / "stopwords.txt").read_text().splitlines() if line and line[0] != "#"
        ]
        assert words == []  # the Datastore drops no word

        # /select and /search return the Datastore's default field list: the fields generated from
        # the IATI Standard (everything from dataset_version on), not id, iati_xml or iati_json.
        config = etree.parse(str(conf / "solrconfig.xml")).getroot()
        names = [r["name"] for r in rows if r["collection"] == collection]
        generated = names[names.index("dataset_version") :]
        select = handler(config, "/select")
        assert select["defaults"]["fl"].split(",") == generated
        assert {"id", "iati_xml", "iati_json", "iati_activities_document_id"}.isdisjoint(generated)
        assert select["defaults"]["rows"] == "10"
        search = handler(config, "/search")
        assert (search["defaults"]["defType"], search["defaults"]["df"]) == ("edismax", "iati_text")
        assert search["defaults"]["fl"] == select["defaults"]["fl"]
        query = handler(config, "/query")
        assert (query["defaults"]["wt"], query["defaults"]["indent"]) == ("json", "true")
        assert "fl" not in query["defaults"]
        iati_handlers = {h.get("name") for h in config.iter("requestHandler")} & {"/iati", "/iati_json"}
        if collection != "activity":
            assert iati_handlers == set()  # no iati_xml / iati_json there
            continue
        assert handler(config, "/iati")["invariants"] == {
            "fl": "iati_xml,datetime:[value v=NOW t=date]",
            "wt": "xslt",
            "tr": "iati_xml.xsl",
        }
        assert handler(config, "/iati_json")["invariants"] == {"fl": "iati_json:[json]", "wt": "json"}
        (writer,) = config.iter("queryResponseWriter")
        assert (writer.get("name"), writer.get("startup")) == ("xslt", "lazy")
        assert (conf / "xslt" / "iati_xml.xsl").is_file()


def test_the_iati_handler_answers_one_iati_activities_file() -> None:
    """The /iati stylesheet on a small Solr XML answer: the activities' stored XML, unescaped,
    inside one <iati-activities version="2.03"> stamped with the request time, as the Datastore."""
    stylesheet = etree.XSLT(etree.parse(str(CONFIGSETS / "activity" / "conf" / "xslt" / "iati_xml.xsl")))
    answer = etree.fromstring(
        b'<response><result name="response" numFound="2" start="0">'
        b'<doc><str name="iati_xml">&lt;iati-activity&gt;&lt;iati-identifier&gt;A&lt;/iati-identifier&gt;'
        b'&lt;/iati-activity&gt;</str><date name="datetime">2024-06-20T07:10:15.123Z</date></doc>'
        b'<doc><str name="iati_xml">&lt;iati-activity&gt;&lt;iati-identifier&gt;B&lt;/iati-identifier&gt;'
        b'&lt;/iati-activity&gt;</str><date name="datetime">2024-06-20T07:10:15.123Z</date></doc>'
        b"</result></response>"
    )
    out = etree.fromstring(bytes(stylesheet(answer)))
    assert out.tag == "iati-activities"
    assert dict(out.attrib) == {"version": "2.03", "generated-datetime": "2024-06-20T07:10:15.123Z"}
    assert [a.findtext("iati-identifier") for a in out] == ["A", "B"]
    empty = etree.fromstring(
        bytes(stylesheet(etree.fromstring(b'<response><result numFound="0"/></response>')))
    )
    assert (empty.tag, len(empty)) == ("iati-activities", 0)


def test_the_schema_resolves_field_properties_and_dynamic_fields(tmp_path: Path) -> None:
    schema = Schema.load(CONFIGSETS / "activity" / "conf" / "managed-schema.xml")
    assert schema.unique_key == "id"
    xml = schema.field("iati_xml")
    assert xml is not None and (xml.stored, xml.indexed, xml.multi_valued) == (True, False, False)
    extension = schema.field("usg_treasury_main_account_code")
    assert extension is not None and (extension.indexed, extension.stored, extension.multi_valued) == (
        False,
        True,
        True,
    )
    # The Datastore's typed dynamic fields: longest pattern first, then the schema's order
    # (attr_x_srpt matches *_srpt and attr_*, both six characters: *_srpt comes first).
    assert [pattern for pattern, _ in schema.dynamic_fields][-1] == "*"
    kinds = {
        name: (found.type.cls, found.multi_valued)
        for name in ("count_i", "notes_t", "notes_txt", "tags_ss", "when_dt", "attr_x", "attr_x_srpt")
        if (found := schema.field(name)) is not None
    }
    assert kinds == {
        "count_i": ("IntPointField", False),
        "notes_t": ("TextField", False),
        "notes_txt": ("TextField", False),
        "tags_ss": ("StrField", True),
        "when_dt": ("DatePointField", False),
        "attr_x": ("TextField", True),
        "attr_x_srpt": ("SpatialRecursivePrefixTreeFieldType", False),
    }
    (tmp_path / "t" / "conf").mkdir(parents=True)
    (tmp_path / "t" / "conf" / "managed-schema.xml").write_text(MINIMAL_SCHEMA, encoding="utf-8")
    small = Schema.load(tmp_path / "t" / "conf" / "managed-schema.xml")
    assert small.field("a_ss").multi_valued and not small.field("a_s").multi_valued  # longest pattern first
    assert small.field("num_x").type.cls == "DoublePointField"
    assert small.field("nothing") is None


# -- updates and commits ---------------------------------------------------------------------------


def test_documents_become_visible_only_after_a_commit(clean: SolrStandIn) -> None:
    activity = core(clean, "activity")
    activity.add([doc(1), doc(2)])
    assert clean.documents("activity") == [] and len(clean.pending("activity")) == 2
    assert activity.search("*:*").hits == 0
    activity.commit()
    assert activity.search("*:*").hits == 2
    assert clean.commits("activity") == 1  # pysolr's <commit/> plus commit=true is one commit

    activity.delete(q='iati_activities_document_id:"D1"')
    assert activity.search("*:*").hits == 2
    activity.commit()
    assert activity.search("*:*").hits == 0


def test_commit_parameters_and_json_commands(clean: SolrStandIn) -> None:
    assert post(clean, "budget", [doc(1)], commit="true").ok
    assert len(clean.documents("budget")) == 1
    assert post(clean, "budget", [doc(2)], softCommit="true").ok
    assert len(clean.documents("budget")) == 2
    assert post(clean, "budget", {"add": {"doc": doc(3)}, "delete": {"id": "doc-1"}}).ok
    assert post(clean, "budget", {"delete": ["doc-2"], "commit": {}}).ok
    assert [d["id"] for d in clean.documents("budget")] == ["doc-3"]
    assert post(clean, "budget", {"delete": {"query": "*:*"}}, commitWithin="50").ok
    deadline = time.monotonic() + 5
    while clean.documents("budget") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert clean.documents("budget") == []
    # Duplicate "add" keys, as Solr's JSON syntax allows.
    body = '{"add": {"doc": {"id": "a", "iati_activities_document_id": "D", "iati_activities_document_hash": "H"}},'
    body += ' "add": {"doc": {"id": "b", "iati_activities_document_id": "D", "iati_activities_document_hash": "H"}},'
    body += ' "commit": {}}'
    response = requests.post(
        f"{clean.url}/budget/update/json", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.ok and [d["id"] for d in clean.documents("budget")] == ["a", "b"]


def test_xml_update_messages(clean: SolrStandIn) -> None:
    xml = (
        b"<add><doc><field name='id'>x1</field><field name='iati_activities_document_id'>D</field>"
        b"<field name='iati_activities_document_hash'>H</field><field name='sector_code'>1</field>"
        b"<field name='sector_code'>2</field></doc></add>"
    )
    headers = {"Content-Type": "text/xml"}
    assert requests.post(f"{clean.url}/activity/update?commit=true", data=xml, headers=headers, timeout=10).ok
    assert clean.documents("activity")[0]["sector_code"] == ["1", "2"]
    core(clean, "activity").delete(id="x1")
    core(clean, "activity").commit()
    assert clean.documents("activity") == []


def test_an_overwrite_replaces_the_document(clean: SolrStandIn) -> None:
    activity = core(clean, "activity")
    activity.add([doc(1, title_narrative="one")], commit=True)
    first = clean.documents("activity")[0]["_version_"]
    activity.add([doc(1, title_narrative="two")], commit=True)
    (stored,) = clean.documents("activity")
    assert stored["title_narrative"] == ["two"] and stored["_version_"] > first


# -- what Solr refuses ----------------------------------------------------------------------------


def refused(collection: pysolr.Solr, docs: list[dict[str, Any]]) -> str:
    with pytest.raises(pysolr.SolrError) as raised:
        collection.add(docs)
    assert "(HTTP 400)" in str(raised.value)
    return str(raised.value)


def test_values_the_schema_cannot_take_are_refused_like_solr(clean: SolrStandIn) -> None:
    activity = core(clean, "activity")
    assert "Error adding field 'budget_value'='1,000.50'" in refused(
        activity, [doc(1, budget_value="1,000.50")]
    )
    assert "multiple values encountered for non multiValued field iati_identifier" in refused(
        activity, [doc(1, iati_identifier=["A", "B"])]
    )
    assert "Invalid Date String" in refused(activity, [doc(1, last_updated_datetime="2024-06-20")])
    assert "Invalid Date String" in refused(
        activity, [doc(1, last_updated_datetime="17-07-23T00:00:00.000Z")]
    )
    assert "'hierarchy'='1.5'" in refused(activity, [doc(1, hierarchy="1.5")])
    assert "out of range" in refused(activity, [doc(1, location_point_latlon="91,0")])
    assert "missing required field: iati_activities_document_hash" in refused(
        activity, [{"id": "x", "iati_activities_document_id": "D"}]
    )
    assert "missing mandatory uniqueKey field: id" in refused(
        activity, [{"iati_activities_document_id": "D"}]
    )
    assert "immense term" in refused(activity, [doc(1, iati_activities_document_hash="x" * 40000)])
    # Values Solr accepts: the field types' own parsing, stored as Solr returns them.
    activity.add(
        [
            doc(
                1,
                budget_value=["1000", "2.5e3", " 7 "],
                last_updated_datetime="2024-06-20T07:10:15.000Z",
                dataset_generated_datetime="2024-06-20T07:10:15.250Z",
                humanitarian="1",
                reporting_org_secondary_reporter="false",
                hierarchy="2",
                iati_identifier=["XM-1"],
                iati_xml="<iati-activity/>" * 5000,
            )
        ],
        commit=True,
    )
    (stored,) = clean.documents("activity")
    assert stored["budget_value"] == [1000.0, 2500.0, 7.0]
    assert stored["last_updated_datetime"] == "2024-06-20T07:10:15Z"
    assert stored["dataset_generated_datetime"] == "2024-06-20T07:10:15.250Z"
    assert (stored["humanitarian"], stored["reporting_org_secondary_reporter"], stored["hierarchy"]) == (
        True,
        False,
        2,
    )
    assert stored["iati_identifier"] == "XM-1" and stored["iati_identifier_exact"] == "XM-1"  # copyField
    assert stored["indexed_datetime"].endswith("Z")  # default NOW
    assert "iati_text" not in stored  # copy target, not stored


def test_a_refused_document_stops_its_batch_after_the_earlier_ones(clean: SolrStandIn) -> None:
    activity = core(clean, "activity")
    refused(activity, [doc(1), doc(2, budget_value="n/a"), doc(3)])
    assert [d["id"] for d in clean.pending("activity")] == ["doc-1"]


def test_unknown_fields_are_refused_and_dynamic_fields_honoured(tmp_path: Path) -> None:
    (tmp_path / "strict" / "conf").mkdir(parents=True)
    (tmp_path / "strict" / "conf" / "managed-schema.xml").write_text(MINIMAL_SCHEMA, encoding="utf-8")
    with SolrStandIn({"things": "strict"}, configsets=tmp_path) as server:
        things = core(server, "things")
        assert "unknown field 'colour'" in refused(things, [{"id": "1", "colour": "red"}])
        assert "multiple values" in refused(things, [{"id": "1", "colour_s": ["a", "b"]}])
        assert "'num_size'='big'" in refused(things, [{"id": "1", "num_size": "big"}])
        things.add([{"id": "1", "colour_s": "red", "tags_ss": ["a", "b"], "num_size": "3"}], commit=True)
        assert server.documents("things") == [
            {"id": "1", "colour_s": "red", "tags_ss": ["a", "b"], "num_size": 3.0, "_version_": 1}
        ]
        response = requests.get(f"{server.url}/things/select", params={"q": "colour:red"}, timeout=10)
        assert response.status_code == 400 and "undefined field colour" in response.json()["error"]["msg"]


def test_the_production_schema_stores_extension_keys_but_does_not_search_them(clean: SolrStandIn) -> None:
    activity = core(clean, "activity")
    activity.add([doc(1, **{"usg_treasury_main_account_code": "95", "{http_//e/ns}ext": "x"})], commit=True)
    (stored,) = clean.documents("activity")
    assert stored["usg_treasury_main_account_code"] == ["95"] and stored["{http_//e/ns}ext"] == ["x"]
    assert activity.search("usg_treasury_main_account_code:95").hits == 0  # indexed="false"


def test_typed_dynamic_fields_refuse_and_keep_values_as_the_datastore(clean: SolrStandIn) -> None:
    """Issue 11 item 11: a key the field table does not list is typed by Solr's default dynamic
    fields, as in the Datastore: a value of the wrong kind refuses the document."""
    activity = core(clean, "activity")
    assert "Error adding field 'count_i'='many'" in refused(activity, [doc(1, count_i="many")])
    assert "multiple values encountered for non multiValued field notes_t" in refused(
        activity, [doc(1, notes_t=["a", "b"])]
    )
    assert "Invalid Date String" in refused(activity, [doc(1, when_dt="2024-06-20")])
    assert "out of range" in refused(activity, [doc(1, where_p="91,0")])
    # A boolean takes any text (only t… / 1… is true); a long no decimal.
    assert "Error adding field 'size_l'='1.5'" in refused(activity, [doc(1, flag_b="no", size_l="1.5")])
    activity.add(
        [
            doc(
                1,
                count_i="7",
                tags_ss=["a", "b"],
                when_dt="2024-06-20T00:00:00Z",
                where_p="1.5,2.5",
                area_srpt="3 4",
                flag_b="yes",
                ignored_note="dropped",
                random_1="never shown",
                usg_treasury_main_account_code="95",
            )
        ],
        commit=True,
    )
    (stored,) = clean.documents("activity")
    assert {k: stored[k] for k in ("count_i", "tags_ss", "when_dt", "where_p", "area_srpt", "flag_b")} == {
        "count_i": 7,
        "tags_ss": ["a", "b"],
        "when_dt": "2024-06-20T00:00:00Z",
        "where_p": "1.5,2.5",
        "area_srpt": "3 4",
        "flag_b": False,
    }
    assert "ignored_note" not in stored and "random_1" not in stored
    assert stored["usg_treasury_main_account_code"] == ["95"]  # the catch-all, last


def test_search_handlers_apply_the_configsets_defaults(clean: SolrStandIn) -> None:
    """/select returns the Datastore's default field list unless fl says otherwise; /query every
    stored field; /iati_json the activity JSON as JSON. /search (edismax) and /iati (XSLT) are
    refused by the stand-in, which cannot answer them, rather than answered wrongly."""
    activity = core(clean, "activity")
    activity.add(
        [
            doc(
                1,
                iati_identifier="XM-1",
                title_narrative="Water",
                iati_xml="<iati-activity/>",
                iati_json='{"iati-activity": [{"text()": "x"}]}',
            )
        ],
        commit=True,
    )
    assert select(clean, "activity", q="*:*")["docs"] == [
        {"iati_identifier": "XM-1", "title_narrative": ["Water"]}
    ]
    everything = select(clean, "activity", q="*:*", fl="*")["docs"][0]
    assert {"id", "iati_xml", "iati_json", "iati_activities_document_id"} <= set(everything)
    assert select(clean, "activity", q="*:*", fl="id,iati_*")["docs"] == [
        {
            "id": "doc-1",
            "iati_xml": "<iati-activity/>",
            "iati_json": '{"iati-activity": [{"text()": "x"}]}',
            "iati_activities_document_id": "D1",
            "iati_activities_document_hash": "H1",
            "iati_identifier": "XM-1",
            "iati_identifier_exact": "XM-1",
        }
    ]
    assert [d["id"] for d in activity.search("*:*", fl="id").docs] == ["doc-1"]
    query = requests.get(f"{clean.url}/activity/query", params={"q": "*:*"}, timeout=10).json()
    assert query["response"]["docs"][0]["iati_xml"] == "<iati-activity/>"
    as_json = requests.get(f"{clean.url}/activity/iati_json", params={"q": "*:*", "fl": "id"}, timeout=10)
    assert as_json.json()["response"]["docs"] == [{"iati_json": {"iati-activity": [{"text()": "x"}]}}]
    for name, reason in (("search", "edismax"), ("iati", "wt=xslt")):
        answer = requests.get(f"{clean.url}/activity/{name}", params={"q": "water"}, timeout=10)
        assert answer.status_code == 400 and reason in answer.json()["error"]["msg"]
    assert requests.get(f"{clean.url}/budget/iati_json", params={"q": "*:*"}, timeout=10).status_code == 404


# -- select ----------------------------------------------------------------------------------------


def test_select_q_fq_rows_start_fl_and_sort(clean: SolrStandIn) -> None:
    transaction = core(clean, "transaction")
    transaction.add(
        [
            doc(
                n,
                iati_activities_document_id=f"D{n % 2}",
                title_narrative=f"Water project {n}",
                hierarchy=str(n),
            )
            for n in range(5)
        ],
        commit=True,
    )
    everything = select(
        clean, "transaction", q="*:*", rows=2, start=1, sort="hierarchy desc", fl="id,hierarchy"
    )
    assert everything["numFound"] == 5 and everything["start"] == 1
    assert everything["docs"] == [{"id": "doc-3", "hierarchy": 3}, {"id": "doc-2", "hierarchy": 2}]
    assert select(clean, "transaction", q='iati_activities_document_id:"D0"')["numFound"] == 3
    assert (
        select(clean, "transaction", q="*:*", fq=["iati_activities_document_id:D1", "hierarchy:3"])[
            "numFound"
        ]
        == 1
    )
    assert select(clean, "transaction", q="title_narrative:WATER")["numFound"] == 5  # analysed text
    assert select(clean, "transaction", q='title_narrative:"project 4"')["numFound"] == 1
    assert select(clean, "transaction", q="iati_text:water")["numFound"] == 0  # only *_narrative is copied
    assert select(clean, "transaction", q="title_narrative:*")["numFound"] == 5
    assert select(clean, "transaction")["numFound"] == 0  # no q matches nothing, as in Solr
    assert transaction.search('iati_activities_document_id:"D0"', rows=0).hits == 3
    response = requests.get(f"{clean.url}/transaction/select", params={"q": "a:b AND c:d"}, timeout=10)
    assert response.status_code == 400 and "stand-in" in response.json()["error"]["msg"]
    # Any other name is the catch-all dynamic field, which is not indexed.
    assert select(clean, "transaction", q="nosuchfield:x")["numFound"] == 0


def test_ping_unknown_collections_auth_and_injected_failures(tmp_path: Path) -> None:
    with SolrStandIn(auth=("solr", "secret")) as server:
        assert requests.get(f"{server.url}/activity/admin/ping", timeout=10).status_code == 401
        authed = pysolr.Solr(f"{server.url}/activity", auth=("solr", "secret"), timeout=10)
        assert json.loads(authed.ping())["status"] == "OK"
        assert (
            requests.get(f"{server.url}/nothing/select", auth=("solr", "secret"), timeout=10).status_code
            == 404
        )
        server.fail_next("activity", 503, handler="admin/ping")
        with pytest.raises(pysolr.SolrError, match="HTTP 503"):
            authed.ping()
        assert json.loads(authed.ping())["status"] == "OK"


def test_committed_documents_survive_a_restart_with_a_data_dir(tmp_path: Path) -> None:
    with SolrStandIn(data_dir=tmp_path) as first:
        activity = core(first, "activity")
        activity.add([doc(1)], commit=True)
        activity.add([doc(2)])  # never committed: lost, as in Solr without its transaction log
        version = first.documents("activity")[0]["_version_"]
    with SolrStandIn(data_dir=tmp_path) as second:
        assert [d["id"] for d in second.documents("activity")] == ["doc-1"]
        core(second, "activity").add([doc(3)], commit=True)
        assert second.documents("activity")[1]["_version_"] > version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["activity.json"]  # written on commit


def test_the_demo_stand_in_starts_stops_and_keeps_its_index(tmp_path: Path) -> None:
    demo = SolrDemo(data_dir=tmp_path)
    with demo as env:
        assert env["SOLR_URL"].startswith("http://127.0.0.1:") and env["SOLR_URL"].endswith("/solr")
        assert json.loads(pysolr.Solr(env["SOLR_URL"] + "/budget").ping())["status"] == "OK"
        core_url = pysolr.Solr(env["SOLR_URL"] + "/activity", always_commit=True)
        core_url.add([doc(1)])
        assert demo.summary() == {"activity": 1, "transaction": 0, "budget": 0}
    assert demo.summary() == {}
    assert demo.start()["SOLR_URL"] != ""
    assert demo.summary()["activity"] == 1
    demo.stop()
