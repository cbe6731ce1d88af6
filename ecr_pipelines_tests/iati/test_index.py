"""Index parsing, mapping and the safety valve (pure: no database, no network)."""

import hashlib
import json
from typing import Any

import pytest

from ecr_pipelines.dev.iati_demo import RECORDINGS
from ecr_pipelines.iati.index import (
    IndexFormatError,
    IndexMismatchError,
    apply_limits,
    bds_snapshot,
    load_json,
    normalise_hash,
    parse_datasets,
    parse_name_list,
    registry_documents,
    registry_snapshot,
    safety_valve,
)


def recorded(name: str) -> Any:
    text = (RECORDINGS / name).read_text(encoding="utf-8").replace("{{base_url}}", "http://cache.test")
    return json.loads(text)


def dataset(doc_id: str, org: str = "org-1", **good: Any) -> dict[str, Any]:
    return {
        "id": doc_id,
        "short_name": f"{doc_id}-name",
        "reporting_org_id": org,
        "source_url": f"http://publisher.test/{doc_id}.xml",
        "last_known_good_dataset": good or None,
    }


def index(datasets: list[Any], stamp: int = 1) -> dict[str, Any]:
    return {"datasets": datasets, "index_created_unix_timestamp": stamp}


def orgs(*ids: str, stamp: int = 1) -> dict[str, Any]:
    return {
        "reporting_orgs": [
            {
                "id": i,
                "short_name": f"{i}-short",
                "human_readable_name": f"{i} title",
                "iati_identifier": f"XM-{i}",
            }
            for i in ids
        ],
        "index_created_unix_timestamp": stamp,
    }


def test_recorded_bds_indices_map_to_publishers_and_documents() -> None:
    snapshot = bds_snapshot(recorded("datasets-minimal.json"), recorded("reporting-orgs.json"))
    assert (len(snapshot.publishers), len(snapshot.documents), snapshot.rejected) == (4, 9, [])
    assert snapshot.created is not None and snapshot.created.year == 2026
    by_name = {d.name: d for d in snapshot.documents}
    fcdo = by_name["fcdo-activities"]
    raw = next(
        d for d in recorded("datasets-minimal.json")["datasets"] if d["short_name"] == "fcdo-activities"
    )
    good = raw["last_known_good_dataset"]
    # The hash that ignores the generated timestamp, the cached URL, the publisher's own URL.
    assert fcdo.hash == good["hash_excluding_generated_timestamp"] != good["hash"]
    assert fcdo.cached_dataset_url == "http://cache.test/iati/cache/fcdo-activity.xml"
    assert fcdo.url == "https://publisher.example/fcdo/fcdo-activities.xml"
    never = by_name["3f-never-cached"]
    assert (never.hash, never.cached_dataset_url) == ("", None)
    publisher = next(p for p in snapshot.publishers if p.name == "3f")
    assert (publisher.iati_id, publisher.package_count) == ("DK-CVR-31378028", 3)
    assert publisher.title.startswith("3F")


def test_indices_from_different_runs_are_refused() -> None:
    with pytest.raises(IndexMismatchError, match="different Bulk Data Service runs"):
        bds_snapshot(index([dataset("d1")], stamp=100), orgs("org-1", stamp=200))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "is empty"),
        (b'{"datasets": [{"id": "a"}, {"id": "b"', "truncated"),
        (b'{"datasets": [}, "x": 1}', "malformed JSON"),
        (b"<html>Bad gateway</html>", "malformed JSON"),
    ],
)
def test_unreadable_json_says_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(IndexFormatError, match=message):
        load_json(raw, "dataset index")


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(IndexFormatError, match="no 'datasets' list"):
        parse_datasets({"results": []})
    with pytest.raises(IndexFormatError, match="not a JSON object"):
        parse_datasets([1, 2])
    with pytest.raises(IndexFormatError, match="index_created_unix_timestamp"):
        bds_snapshot({"datasets": []}, orgs("org-1"))


def test_bad_records_are_rejected_alone() -> None:
    datasets = [
        dataset("ok-1", hash_excluding_generated_timestamp="AB" * 20, cached_dataset_url_xml="http://c/1"),
        {"short_name": "no id", "reporting_org_id": "org-1"},
        dataset("../escape"),
        dataset("ok-1"),
        dataset("orphan", org="org-unknown"),
        dataset("no-org", org=""),
        "not an object",
    ]
    snapshot = bds_snapshot(index(datasets), orgs("org-1"))
    assert [d.id for d in snapshot.documents] == ["ok-1"]
    assert snapshot.documents[0].hash == "ab" * 20
    reasons = {r.key: r.reason for r in snapshot.rejected}
    assert reasons["#1"] == "no id"
    assert "'/'" in reasons["../escape"]
    assert reasons["ok-1"] == "duplicate id"
    assert reasons["orphan"] == "publisher org-unknown is not in the publisher index"
    assert reasons["no-org"] == "no reporting_org_id"
    assert reasons["#6"] == "not a JSON object"
    assert snapshot.publishers[0].package_count == 1


def test_a_hash_that_is_not_hex_cannot_name_a_folder() -> None:
    assert normalise_hash(" ABCDEF0123456789 ") == "abcdef0123456789"
    assert normalise_hash(None) == normalise_hash("") == ""
    assert normalise_hash("../../etc/passwd") == hashlib.sha1(b"../../etc/passwd").hexdigest()


def test_registry_recordings_map_one_document_per_resource() -> None:
    organizations = [
        recorded(f"registry/organization_show-{name}.json")["result"]
        for name in recorded("registry/organization_list-0.json")["result"]
    ]
    packages = [
        *recorded("registry/package_search-0.json")["result"]["results"],
        *recorded("registry/package_search-5.json")["result"]["results"],
    ]
    snapshot = registry_snapshot(organizations, packages)
    assert (len(snapshot.publishers), len(snapshot.documents), snapshot.rejected) == (4, 8, [])
    ftp = next(d for d in snapshot.documents if d.name == "3f-never-cached")
    assert ftp.cached_dataset_url == ftp.url and ftp.url.startswith("ftp://")
    fcdo = next(p for p in snapshot.publishers if p.name == "fcdo")
    assert (fcdo.country_code, fcdo.package_count, fcdo.iati_id) == ("GB", 2, "GB-GOV-1")
    assert fcdo.description and fcdo.state == "active"


def test_a_package_with_several_resources_keeps_every_resource() -> None:
    package = {
        "id": "pkg",
        "name": "pkg-name",
        "owner_org": "org-1",
        "resources": [{"id": "r1", "url": "http://a", "hash": "aa" * 20}, {"id": "r2", "url": "http://b"}],
    }
    docs = registry_documents(package)
    assert [(d.id, d.url, d.hash) for d in docs] == [
        ("pkg", "http://a", "aa" * 20),
        ("pkg:r2", "http://b", ""),
    ]  # type: ignore[union-attr]
    rejected = registry_documents({"id": "pkg", "name": "x", "resources": []})
    assert rejected[0].reason == "no owner_org"  # type: ignore[union-attr]


def test_duplicated_packages_from_shifting_pages_count_once() -> None:
    org = {"id": "org-1", "name": "one", "title": "One"}
    package = {"id": "pkg", "name": "p", "owner_org": "org-1", "resources": [{"url": "http://a", "hash": ""}]}
    snapshot = registry_snapshot([org], [package, package])
    assert len(snapshot.documents) == 1 and snapshot.rejected == []


def test_limits_keep_named_publishers_and_datasets() -> None:
    snapshot = bds_snapshot(recorded("datasets-minimal.json"), recorded("reporting-orgs.json"))
    only_3f = apply_limits(snapshot, parse_name_list(" 3f , "), frozenset())
    assert [p.name for p in only_3f.publishers] == ["3f"]
    assert {d.name for d in only_3f.documents} == {"3f-activities", "3f-mixed-validity", "3f-never-cached"}
    one = apply_limits(snapshot, frozenset(), parse_name_list("fcdo-activities"))
    assert [d.name for d in one.documents] == ["fcdo-activities"] and [p.name for p in one.publishers] == [
        "fcdo"
    ]
    assert apply_limits(snapshot, frozenset(), frozenset()) is snapshot


@pytest.mark.parametrize(
    ("incoming", "stored", "percentage", "tripped"),
    [
        (0, 0, 50, False),  # first sync
        (49, 100, 50, True),
        (50, 100, 50, False),
        (1, 100, 0, False),  # 0 % switches the valve off
        (89, 100, 90, True),
        (0, 1, 50, True),
    ],
)
def test_safety_valve(incoming: int, stored: int, percentage: float, tripped: bool) -> None:
    decision = safety_valve("documents", incoming, stored, percentage)
    assert decision.tripped is tripped
    assert f"{incoming} documents" in decision.message and "nothing was changed" in decision.message
