"""Package requests as the legacy validated them, the cache key and the fast/slow rule."""

from typing import Any

import pytest

from ecr_pipelines.ckan.package import (
    BadRequest,
    cache_key,
    canonical_request,
    request_speed,
    url_entry_name,
    validate_request,
)

DATASTORE = {
    "api_url": "https://ckan.test/api/3/action/datastore_search",
    "resource_id": "r1",
    "email": "a@b.c",
}


def test_required_parameters_are_named() -> None:
    with pytest.raises(BadRequest, match="^Parameter api_url is required$"):
        validate_request("datastore", {"resource_id": "r1", "email": "a@b.c"})
    with pytest.raises(BadRequest, match="^Parameters resource_id, email, resource_url are required$"):
        validate_request("url", {})
    with pytest.raises(BadRequest, match="Parameter email is required"):
        validate_request("datastore", {**DATASTORE, "email": " "})
    # The command line mails nobody.
    assert validate_request("url", {"resource_id": "r", "resource_url": "http://x/f"}, require_email=False)


def test_unknown_parameters_are_dropped_and_defaults_filled() -> None:
    pkg = validate_request("datastore", {**DATASTORE, "secret": "s", "colour": "red", "q": None})
    assert dict(pkg.params) == {**DATASTORE, "format": "csv"}
    assert pkg.forwarded == {"resource_id": "r1"}


def test_filters_are_parsed_as_json() -> None:
    pkg = validate_request("datastore", {**DATASTORE, "filters": '{"country": ["DK", "SE"]}'})
    assert pkg.params["filters"] == {"country": ["DK", "SE"]}
    assert pkg.forwarded["filters"] == {"country": ["DK", "SE"]}
    assert validate_request("datastore", {**DATASTORE, "filters": {"a": 1}}).params["filters"] == {"a": 1}
    with pytest.raises(BadRequest, match="Parameter filters is not valid JSON"):
        validate_request("datastore", {**DATASTORE, "filters": "{country"})
    with pytest.raises(BadRequest, match="Parameter filters must be a JSON object"):
        validate_request("datastore", {**DATASTORE, "filters": "[1, 2]"})


def test_numbers_formats_and_kinds_are_checked() -> None:
    pkg = validate_request("datastore", {**DATASTORE, "limit": "100", "offset": "0", "format": "TSV"})
    assert pkg.params["limit"] == 100 and "offset" not in pkg.params and pkg.format == "tsv"
    assert "limit" not in validate_request("datastore", {**DATASTORE, "limit": 0}).params  # 0 = no limit
    for bad in ("ten", "-1", True):
        with pytest.raises(BadRequest, match="Parameter limit must"):
            validate_request("datastore", {**DATASTORE, "limit": bad})
    with pytest.raises(BadRequest, match="Parameter format must be one of csv, tsv, xlsx"):
        validate_request("datastore", {**DATASTORE, "format": "json"})
    with pytest.raises(BadRequest, match="Unknown kind 'zip'"):
        validate_request("zip", DATASTORE)


def test_forwarded_parameters_are_the_legacy_ones() -> None:
    raw = {
        **DATASTORE,
        "q": "x",
        "plain": "false",
        "language": "english",
        "fields": "a,b",
        "sort": "a desc",
        "limit": 5,
        "offset": 2,
        "format": "xlsx",
        "doi": "10.1/x",
        "key": "api-key",
    }
    pkg = validate_request("datastore", raw)
    assert set(pkg.forwarded) == {
        "resource_id",
        "q",
        "plain",
        "language",
        "fields",
        "sort",
        "limit",
        "offset",
    }
    assert "api-key" not in repr(pkg)


def test_dwc_and_url_schemas() -> None:
    dwc = validate_request("dwc", {**DATASTORE, "eml": "<eml/>", "for_gbif": "1", "extra": 1})
    assert dwc.params["eml"] == "<eml/>" and "extra" not in dwc.params
    url = validate_request(
        "url", {"resource_id": "r", "email": "e", "resource_url": "http://x/f.csv", "format": "x"}
    )
    assert dict(url.params) == {"resource_id": "r", "email": "e", "resource_url": "http://x/f.csv"}


def test_the_cache_key_ignores_email_and_order() -> None:
    one = validate_request("datastore", {**DATASTORE, "filters": '{"b": 1, "a": [2, 3]}', "limit": "10"})
    other = validate_request(
        "datastore",
        {
            "limit": 10,
            "filters": {"a": [2, 3], "b": 1},
            "email": "someone@else",
            **{k: DATASTORE[k] for k in ("resource_id", "api_url")},
        },
    )
    assert one.cache_key == other.cache_key
    assert len(one.cache_key) == 64
    # Every other parameter counts, the kind too.
    assert validate_request("datastore", {**DATASTORE, "limit": 11}).cache_key != one.cache_key
    assert (
        validate_request("datastore", {**DATASTORE, "format": "tsv"}).cache_key
        != validate_request("datastore", DATASTORE).cache_key
    )
    assert validate_request("dwc", DATASTORE).cache_key != validate_request("datastore", DATASTORE).cache_key
    # An absent format is the default format: one cache entry.
    assert (
        validate_request("datastore", DATASTORE).cache_key
        == validate_request("datastore", {**DATASTORE, "format": "csv"}).cache_key
    )


def test_the_canonical_form_hashes_the_api_key() -> None:
    params: dict[str, Any] = {
        "resource_id": "r",
        "key": "private-key",
        "email": "a@b.c",
        "filters": {"z": 1, "a": 2},
    }
    text = canonical_request("datastore", params)
    assert "private-key" not in text and "a@b.c" not in text
    assert text.startswith('{"filters":{"a":2,"z":1},"key_sha256":"')
    assert cache_key("datastore", params) != cache_key("datastore", {**params, "key": "other"})


@pytest.mark.parametrize(
    ("kind", "params", "cached", "speed"),
    [
        ("url", {}, False, "fast"),
        ("datastore", {}, False, "slow"),  # no limit
        ("datastore", {}, True, "fast"),  # cached
        ("datastore", {"limit": 50_000}, False, "fast"),
        ("datastore", {"limit": 50_001}, False, "slow"),
        ("datastore", {"limit": 60_000, "offset": 20_000}, False, "fast"),  # the legacy's limit - offset
        ("dwc", {"limit": 100_000}, False, "slow"),
    ],
)
def test_the_speed_rule(kind: str, params: dict[str, int], cached: bool, speed: str) -> None:
    assert request_speed(kind, params, cached=cached) == speed


def test_speed_from_validation_and_the_threshold() -> None:
    assert validate_request("datastore", {**DATASTORE, "limit": 3}, slow_request=2).speed == "slow"
    assert validate_request("datastore", {**DATASTORE, "limit": 1}, slow_request=2).speed == "fast"
    assert validate_request("datastore", DATASTORE, cached=True).speed == "fast"
    assert validate_request("datastore", {**DATASTORE, "limit": 0}).speed == "slow"


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://ckan.test/dataset/x/resource/r/download/data.csv?token=1#top", "data.csv"),
        ("https://ckan.test/files/report%20final.pdf", "report final.pdf"),
        ("https://ckan.test/files/folder/", "folder"),
        ("https://ckan.test", "r-id"),
        ("https://ckan.test/?file=a.csv", "r-id"),
        ("https://ckan.test/a/..%2F..%2Fetc%2Fpasswd", ".._.._etc_passwd"),
        ("https://ckan.test/a/..", "r-id"),
    ],
)
def test_url_entry_names(url: str, name: str) -> None:
    assert url_entry_name(url, "r-id") == name
