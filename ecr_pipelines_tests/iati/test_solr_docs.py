"""Solr documents of the activity, transaction and budget collections, as the refresher built them."""

import csv
import hashlib
import io
import json
import random
from importlib import resources

import pytest

from ecr_pipelines.iati.flatten import flatten_file
from ecr_pipelines.iati.lake import LakeRecord, identifier_stem, iter_lake_records
from ecr_pipelines.iati.solr_docs import (
    COLLECTIONS,
    LakeRecordMissing,
    SolrDocError,
    activity_docs,
    budget_docs,
    explode,
    jsonb_key_order,
    lake_index,
    lat_lon,
    transaction_docs,
)
from ecr_pipelines_tests.iati.iati_samples import SAMPLES
from ecr_pipelines_tests.iati.test_flatten import WORKED_EXAMPLE

DOC_ID = "aaaaaaaa-9bc5-41dd-9b16-9d9ea28cdf0a"
DOC_HASH = "fbd23a51c3cc20d6fd53bd3d5c8b1568ec802170"
STEM = identifier_stem("XM-EX-1")


@pytest.fixture(scope="module")
def worked() -> tuple[list[dict], dict[str, LakeRecord]]:
    return flatten_file(io.BytesIO(WORKED_EXAMPLE)), lake_index(iter_lake_records(WORKED_EXAMPLE))


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def test_activity_doc(worked: tuple[list[dict], dict[str, LakeRecord]]) -> None:
    flattened, lake = worked
    [doc] = activity_docs(DOC_ID, flattened, document_hash=DOC_HASH, lake=lake.get)
    expected_flat = {k: v for k, v in flattened[0].items() if not k.startswith("@")}
    assert {k: doc[k] for k in expected_flat} == expected_flat
    assert doc["iati_xml"] == lake[STEM].xml.decode()
    assert doc["iati_json"] == lake[STEM].json_text
    assert doc["iati_activities_document_id"] == DOC_ID
    assert doc["iati_activities_document_hash"] == DOC_HASH
    assert doc["location_point_latlon"] == ["-1.29,36.82"]
    assert doc["id"] == f"{DOC_ID}--{STEM}--0"
    assert "@transaction" not in doc and "@budget" not in doc
    # Flattened keys in Postgres jsonb order (length, then bytes), then the added keys in order.
    keys = list(doc)
    assert keys[: len(expected_flat)] == sorted(expected_flat, key=lambda k: (len(k), k))
    assert keys[len(expected_flat) :] == [
        "iati_xml",
        "iati_json",
        "iati_activities_document_id",
        "iati_activities_document_hash",
        "location_point_latlon",
        "id",
    ]


def test_transaction_docs(worked: tuple[list[dict], dict[str, LakeRecord]]) -> None:
    flattened, _ = worked
    docs = transaction_docs(DOC_ID, flattened, document_hash=DOC_HASH)
    assert len(docs) == 2
    activity_id = f"{DOC_ID}--{STEM}--0"
    for index, (doc, sub) in enumerate(zip(docs, flattened[0]["@transaction"], strict=True)):
        # Per-transaction values replace the aggregated ones; nothing of the other transaction leaks in.
        assert {k: v for k, v in doc.items() if k.startswith("transaction_")} == sub
        # Activity fields, including the aggregated budget lists, are copied; the lake fields are not.
        assert doc["budget_value"] == "1000"
        assert doc["iati_identifier"] == "XM-EX-1"
        assert doc["iati_activities_document_id"] == DOC_ID
        assert "iati_xml" not in doc and "iati_json" not in doc
        # The id hashes the document as it was with the activity id still in place, plus the index.
        assert doc["id"] == sha1(json.dumps({**doc, "id": activity_id}) + str(index))
    assert docs[0]["id"] != docs[1]["id"]
    # Pinned so a change of key order (which changes every id) cannot go unnoticed.
    assert [doc["id"] for doc in docs] == [
        "c33e55a73674f2ff1758a053c1ef66dae2480d71",
        "b8a6de3369c836fdbbc19ddd550ac29ff1342a07",
    ]


def test_budget_docs(worked: tuple[list[dict], dict[str, LakeRecord]]) -> None:
    flattened, _ = worked
    extra = dict(flattened[0], budget_not_provided="1")
    [doc] = budget_docs(DOC_ID, [extra], document_hash=DOC_HASH)
    assert {k: v for k, v in doc.items() if k.startswith("budget_")} == flattened[0]["@budget"][0]
    assert doc["transaction_value"] == ["250.50", "100"]
    assert doc["id"] == sha1(json.dumps({**doc, "id": f"{DOC_ID}--{STEM}--0"}) + "0")
    [plain] = budget_docs(DOC_ID, flattened, document_hash=DOC_HASH)
    assert plain["id"] == "3c4c949090fec13df27deac7f63da5bd93c8a13e"


def test_explode_matches_the_refreshers_own_vectors() -> None:
    # Inputs and ids from the refresher's unit tests for its explode step.
    activity = {"transaction_sector_code": 1, "transaction_value": [100, 200], "iati_identifier": "ID"}
    subs = [{"transaction_value": 100, "transaction_sector_code": 1}, {"transaction_value": 200}]
    assert explode("transaction", activity, subs) == [
        {
            "iati_identifier": "ID",
            "transaction_value": 100,
            "transaction_sector_code": 1,
            "id": "8c9c0d8144b6a0a68b85d0d672c10f52afe290fc",
        },
        {"iati_identifier": "ID", "transaction_value": 200, "id": "721c2cd56dedbf5b8e11e21464bc381084ef70fb"},
    ]
    same = [{"transaction_value": 100}, {"transaction_value": 100}]
    assert [
        d["id"]
        for d in explode("transaction", {"transaction_value": [100, 100], "iati_identifier": "ID"}, same)
    ] == [
        "8deb2daf9d100142370b844168e08e312fe400aa",
        "71f347cd714d5fc249367dfbe5979fa33f9c0e14",
    ]


def test_ids_do_not_depend_on_how_the_flattened_json_was_stored(
    worked: tuple[list[dict], dict[str, LakeRecord]],
) -> None:
    flattened, lake = worked
    items = list(flattened[0].items())
    random.Random(7).shuffle(items)
    shuffled = [dict(items)]
    for build in (transaction_docs, budget_docs):
        assert build(DOC_ID, shuffled, document_hash=DOC_HASH) == build(
            DOC_ID, flattened, document_hash=DOC_HASH
        )
    stored = json.loads(json.dumps(jsonb_key_order(flattened)))
    assert activity_docs(DOC_ID, stored, document_hash=DOC_HASH, lake=lake.get) == activity_docs(
        DOC_ID, flattened, document_hash=DOC_HASH, lake=lake.get
    )


def test_jsonb_key_order_sorts_by_byte_length_then_bytes() -> None:
    ordered = jsonb_key_order({"bb": 1, "é": 2, "a": 3, "ab": 4, "@x": [{"zz": 1, "y": 2}]})
    assert list(ordered) == ["a", "@x", "ab", "bb", "é"]
    assert list(ordered["@x"][0]) == ["y", "zz"]


@pytest.mark.parametrize(
    ("pos", "expected"),
    [
        ("1 1", "1.0,1.0"),
        ("-1.29 36.82", "-1.29,36.82"),
        ("90 -180", "90.0,-180.0"),
        ("1 1000", None),
        ("91 0", None),
        ("nan 0", None),
        ("inf 0", None),
        ("1", None),
        ("1 2 3", None),
        ("a b", None),
        ("", None),
    ],
)
def test_lat_lon(pos: str, expected: str | None) -> None:
    assert lat_lon(pos) == expected


def test_location_point_latlon_keeps_valid_points_only() -> None:
    lake = {identifier_stem("L"): LakeRecord("L", identifier_stem("L"), b"<x/>", "{}")}
    many = {"iati_identifier": "L", "location_point_pos": ["1 1", "1 1000", "-5 5"]}
    [doc] = activity_docs(DOC_ID, [many], document_hash=DOC_HASH, lake=lake.get)
    assert doc["location_point_latlon"] == ["1.0,1.0", "-5.0,5.0"]
    [doc] = activity_docs(
        DOC_ID,
        [{"iati_identifier": "L", "location_point_pos": "0 999"}],
        document_hash=DOC_HASH,
        lake=lake.get,
    )
    assert "location_point_latlon" not in doc


def test_duplicate_identifiers_are_numbered_and_missing_ones_skipped() -> None:
    stem_a, stem_b = identifier_stem("A"), identifier_stem("B")
    lake = {stem: LakeRecord("?", stem, b"<x/>", "{}") for stem in (stem_a, stem_b)}
    flattened = [
        {"dataset_version": "2.03", "iati_identifier": "A"},
        {"dataset_version": "2.03", "title_narrative": "no identifier"},
        {"dataset_version": "2.03", "iati_identifier": "B"},
        {"dataset_version": "2.03", "iati_identifier": "A"},
    ]
    docs = activity_docs(DOC_ID, flattened, document_hash=DOC_HASH, lake=lake.get)
    assert [doc["id"] for doc in docs] == [
        f"{DOC_ID}--{stem_a}--0",
        f"{DOC_ID}--{stem_b}--0",
        f"{DOC_ID}--{stem_a}--1",
    ]
    assert transaction_docs(DOC_ID, flattened, document_hash=DOC_HASH) == []


def test_empty_string_values_are_dropped_after_the_id_is_computed() -> None:
    flattened = [
        {
            "dataset_version": "",
            "iati_identifier": "E",
            "participating_org_ref": ["X", ""],
            "transaction_ref": "",
            "@transaction": [{"transaction_ref": "", "transaction_value": "1"}],
        }
    ]
    lake = {identifier_stem("E"): LakeRecord("E", identifier_stem("E"), b"<x/>", "{}")}
    [activity] = activity_docs(DOC_ID, flattened, document_hash=DOC_HASH, lake=lake.get)
    assert "dataset_version" not in activity and "transaction_ref" not in activity
    assert activity["participating_org_ref"] == ["X", ""]
    [transaction] = transaction_docs(DOC_ID, flattened, document_hash=DOC_HASH)
    assert "transaction_ref" not in transaction and "dataset_version" not in transaction
    # The id is computed on the full document: jsonb-ordered base, then the transaction's keys.
    full = {
        "dataset_version": "",
        "iati_identifier": "E",
        "participating_org_ref": ["X", ""],
        "iati_activities_document_id": DOC_ID,
        "iati_activities_document_hash": DOC_HASH,
        "id": f"{DOC_ID}--{identifier_stem('E')}--0",
        "transaction_ref": "",
        "transaction_value": "1",
    }
    assert transaction["id"] == sha1(json.dumps(full) + "0")


def test_missing_lake_record_raises() -> None:
    with pytest.raises(LakeRecordMissing) as info:
        activity_docs(DOC_ID, [{"iati_identifier": "NOPE"}], document_hash=DOC_HASH, lake={}.get)
    assert info.value.stem == identifier_stem("NOPE")


def test_multi_valued_identifier_fails_the_document() -> None:
    with pytest.raises(SolrDocError):
        transaction_docs(DOC_ID, [{"iati_identifier": ["A", "B"]}], document_hash=DOC_HASH)


def test_sample_documents_only_use_schema_fields() -> None:
    fields_dir = resources.files("ecr_pipelines.iati") / "solr_fields"
    collections = json.loads((fields_dir / "collections.json").read_text())
    assert {c["collectionName"] for c in collections} == set(COLLECTIONS)
    rows = list(csv.DictReader(io.StringIO((fields_dir / "fields.tsv").read_text()), delimiter="\t"))
    fields = {name: {r["name"] for r in rows if r["collection"] == name} for name in COLLECTIONS}

    path = SAMPLES / "official/activity-standard-example-annotated.xml"
    flattened = flatten_file(path)
    lake = lake_index(iter_lake_records(path))
    built = {
        "activity": activity_docs(DOC_ID, flattened, document_hash=DOC_HASH, lake=lake.get),
        "transaction": transaction_docs(DOC_ID, flattened, document_hash=DOC_HASH),
        "budget": budget_docs(DOC_ID, flattened, document_hash=DOC_HASH),
    }
    for name, docs in built.items():
        assert len(docs) == 1
        assert set(docs[0]) <= fields[name], name
