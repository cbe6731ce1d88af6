"""The Solr resource against the Solr stand-in: configuration from the environment, the three
collections, batching, the explicit commits, and how failures are classified."""

from typing import Any

import dagster as dg
import pytest

from ecr_pipelines.dev.standins.solr import SolrStandIn
from ecr_pipelines.iati.defs.resources import SolrResource, build_iati_resources, build_solr_resource
from ecr_pipelines.iati.solr import (
    DEFAULT_COLLECTION_NAMES,
    LEGACY_COLLECTION_NAMES,
    SolrClient,
    SolrRejected,
    SolrUnavailable,
    document_query,
)
from ecr_pipelines.iati.solr_docs import COLLECTIONS

ENV = (
    "SOLR_URL",
    "SOLR_API_URL",
    "SOLR_ACTIVITY_COLLECTION",
    "SOLR_TRANSACTION_COLLECTION",
    "SOLR_BUDGET_COLLECTION",
    "SOLR_USER",
    "SOLR_PASSWORD",
    "SOLR_TIMEOUT",
    "SOLR_CONNECT_TIMEOUT",
    "SOLR_RETRIES",
    "SOLR_BATCH_SIZE",
    "SOLR_MAX_BATCH_BYTES",
)


@pytest.fixture
def no_solr_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def entry(n: int, document_id: str = "D1", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{document_id}-{n}",
        "iati_activities_document_id": document_id,
        "iati_activities_document_hash": "H",
        **extra,
    }


def updates(server: SolrStandIn, collection: str) -> int:
    return sum(1 for r in server.requests if r.collection == collection and r.handler == "update")


def test_defaults_are_the_production_collections(no_solr_env: pytest.MonkeyPatch) -> None:
    resource = build_solr_resource()
    assert DEFAULT_COLLECTION_NAMES == {
        "activity": "activity",
        "transaction": "transaction",
        "budget": "budget",
    }
    assert resource.collection_names == DEFAULT_COLLECTION_NAMES
    assert (resource.url, resource.user, resource.timeout, resource.batch_size) == ("", None, 600.0, 500)
    assert not resource.configured and resource.describe() == "Solr (SOLR_URL not set)"
    built = build_iati_resources()
    assert set(built) == {"iati", "iati_validator", "solr"}
    assert isinstance(built["solr"], SolrResource) and not built["solr"].configured


def test_the_environment_configures_names_auth_and_limits(no_solr_env: pytest.MonkeyPatch) -> None:
    no_solr_env.setenv("SOLR_URL", "http://solr.example:8983/solr/")
    no_solr_env.setenv("SOLR_ACTIVITY_COLLECTION", "activity_solrize")
    no_solr_env.setenv("SOLR_BUDGET_COLLECTION", "budget_solrize")
    no_solr_env.setenv("SOLR_USER", "indexer")
    no_solr_env.setenv("SOLR_PASSWORD", "s3cret")
    no_solr_env.setenv("SOLR_BATCH_SIZE", "100")
    no_solr_env.setenv("SOLR_TIMEOUT", "30")

    resource = build_solr_resource()

    # Secrets (and the URL, which may carry credentials) stay environment references in run config.
    assert isinstance(resource.url, dg.EnvVar) and isinstance(resource.password, dg.EnvVar)
    with dg.build_resources({"solr": resource}) as built:
        bound = built.solr
    assert isinstance(bound, SolrResource)
    assert (bound.url, bound.user, bound.password) == ("http://solr.example:8983/solr/", "indexer", "s3cret")
    assert bound.collection_names == {
        "activity": "activity_solrize",
        "transaction": "transaction",
        "budget": "budget_solrize",
    }
    assert (bound.batch_size, bound.timeout) == (100, 30.0)
    no_solr_env.setenv("SOLR_BATCH_SIZE", "many")
    with pytest.raises(ValueError, match="SOLR_BATCH_SIZE"):
        build_solr_resource()


def test_the_refreshers_solr_settings_still_work(no_solr_env: pytest.MonkeyPatch) -> None:
    """Issue 11 item 12: a deployment that only carries the refresher's SOLR_API_URL (pysolr URL =
    SOLR_API_URL + "<name>_solrize/") indexes into the refresher's collections; SOLR_URL and the
    collection variables win when set."""
    assert LEGACY_COLLECTION_NAMES == {
        "activity": "activity_solrize",
        "transaction": "transaction_solrize",
        "budget": "budget_solrize",
    }
    no_solr_env.setenv("SOLR_API_URL", "https://solr.example/solr/")
    legacy = build_solr_resource()
    assert isinstance(legacy.url, dg.EnvVar) and legacy.url == "SOLR_API_URL"  # a secret, shown by name
    with dg.build_resources({"solr": legacy}) as built:
        bound = built.solr
    assert bound.url == "https://solr.example/solr/" and bound.configured
    assert bound.collection_names == LEGACY_COLLECTION_NAMES
    # The same URLs the refresher's pysolr used: no doubled or missing slash.
    assert bound.client().describe() == (
        "https://solr.example/solr (activity=activity_solrize, transaction=transaction_solrize, "
        "budget=budget_solrize)"
    )
    assert bound.client()._cores["budget"].url == "https://solr.example/solr/budget_solrize"

    no_solr_env.setenv("SOLR_BUDGET_COLLECTION", "budget_v2")
    renamed = build_solr_resource()
    assert renamed.collection_names == {**LEGACY_COLLECTION_NAMES, "budget": "budget_v2"}

    no_solr_env.setenv("SOLR_URL", "http://new.example/solr")
    new = build_solr_resource()
    assert new.url == "SOLR_URL"  # SOLR_URL wins, and with it the new default names
    assert new.collection_names == {**DEFAULT_COLLECTION_NAMES, "budget": "budget_v2"}


def test_indexing_with_only_the_refreshers_settings(no_solr_env: pytest.MonkeyPatch) -> None:
    names = {"activity_solrize": "activity", "transaction_solrize": "transaction", "budget_solrize": "budget"}
    with SolrStandIn(names) as server:
        no_solr_env.setenv("SOLR_API_URL", server.url + "/")  # the refresher's form, trailing slash
        with dg.build_resources({"solr": build_solr_resource()}) as built:
            resource = built.solr
            for collection in COLLECTIONS:
                resource.add(collection, [entry(1)])
            resource.commit()
        assert all([d["id"] for d in server.documents(name)] == ["D1-1"] for name in names)


def test_delete_add_and_commit_across_the_three_collections(solr: SolrStandIn) -> None:
    resource = SolrResource(url=solr.url, batch_size=2)
    resource.ping()
    for collection in COLLECTIONS:
        assert resource.add(collection, [entry(n) for n in range(5)] + [entry(0, "D2")]) == 6
    assert updates(solr, "activity") == 3  # 6 documents, 2 per request
    assert all(solr.documents(c) == [] for c in COLLECTIONS)  # nothing is committed implicitly

    resource.commit()
    assert all(len(solr.documents(c)) == 6 for c in COLLECTIONS)
    assert all(solr.commits(c) == 1 for c in COLLECTIONS)
    assert resource.count_document("budget", "D1") == 5

    resource.delete_document("D1")
    assert resource.count_document("budget", "D1") == 5  # until the commit
    resource.commit()
    for collection in COLLECTIONS:
        assert [d["id"] for d in solr.documents(collection)] == ["D2-0"]


def test_update_requests_are_bounded_in_bytes(solr: SolrStandIn) -> None:
    client = SolrClient(solr.url, batch_size=500, max_batch_bytes=30_000)
    big = [entry(n, iati_xml="x" * 10_000) for n in range(6)]
    assert client.add("activity", big) == 6
    assert updates(solr, "activity") == 3


def test_renamed_collections_and_basic_auth() -> None:
    names = {"activity_solrize": "activity", "transaction_solrize": "transaction", "budget_solrize": "budget"}
    with SolrStandIn(names, auth=("indexer", "s3cret")) as server:
        resource = SolrResource(
            url=server.url,
            activity_collection="activity_solrize",
            transaction_collection="transaction_solrize",
            budget_collection="budget_solrize",
            user="indexer",
            password="s3cret",
        )
        resource.add("transaction", [entry(1)])
        resource.commit()
        assert [d["id"] for d in server.documents("transaction_solrize")] == ["D1-1"]
        with pytest.raises(SolrUnavailable) as raised:
            SolrResource(url=server.url, activity_collection="activity_solrize", user="indexer").ping()
        assert raised.value.status == 401


def test_failures_are_split_into_the_documents_fault_and_solrs(solr: SolrStandIn) -> None:
    resource = SolrResource(url=solr.url, retries=0)
    with pytest.raises(SolrRejected) as rejected:
        resource.add("activity", [entry(1, budget_value="1,000.50")])
    assert rejected.value.status == 400 and rejected.value.collection == "activity"
    assert "1,000.50" in str(rejected.value)

    solr.fail_next("budget", 503)
    with pytest.raises(SolrUnavailable) as unavailable:
        resource.commit()
    assert unavailable.value.status == 503 and unavailable.value.collection == "budget"

    with pytest.raises(SolrUnavailable) as missing:
        SolrResource(url=solr.url, budget_collection="nope").ping()
    assert missing.value.status == 404

    with pytest.raises(SolrUnavailable, match="SOLR_URL is not set"):
        SolrResource().client()


def test_transient_server_errors_are_retried(solr: SolrStandIn) -> None:
    resource = SolrResource(url=solr.url, retries=2)
    solr.fail_next("activity", 503, times=2)
    resource.add("activity", [entry(1)])
    resource.commit()
    assert len(solr.documents("activity")) == 1


def test_a_stopped_server_is_unavailable() -> None:
    with SolrStandIn() as server:
        url = server.url
    with pytest.raises(SolrUnavailable) as raised:
        SolrResource(url=url, retries=0, connect_timeout=1).delete_document("D1")
    assert raised.value.status is None


def test_document_queries_quote_and_escape_the_id(solr: SolrStandIn) -> None:
    assert document_query('a"b\\c') == 'iati_activities_document_id:"a\\"b\\\\c"'
    resource = SolrResource(url=solr.url)
    odd = 'odd "id" with \\ and : colon'
    resource.add("activity", [entry(1, odd), entry(1, "plain")])
    resource.commit()
    assert resource.count_document("activity", odd) == 1
    resource.delete_document(odd)
    resource.commit()
    assert [d["iati_activities_document_id"] for d in solr.documents("activity")] == ["plain"]
