"""Tests for the publisher black-flag decision."""

from datetime import datetime, timedelta

from ecr_pipelines.iati.safety import count_recent_invalid, flag_reason, publishers_to_flag


def test_only_counts_strictly_above_threshold_are_flagged() -> None:
    counts = {"pub-a": 101, "pub-b": 100, "pub-c": 5000, "pub-d": 0}
    assert publishers_to_flag(counts) == ["pub-a", "pub-c"]
    assert publishers_to_flag(counts, threshold=5000) == []
    assert publishers_to_flag({}, threshold=0) == []


def test_counts_only_recent_schema_invalid_documents() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0)
    documents = [
        ("pub-a", False, now - timedelta(minutes=5)),
        ("pub-a", False, now - timedelta(hours=1, minutes=59)),
        ("pub-a", False, now - timedelta(hours=2)),  # outside the window: not "< 2 hours"
        ("pub-a", True, now),
        ("pub-a", None, now),  # not schema-checked yet
        ("pub-b", False, None),  # never downloaded
        ("pub-b", False, now - timedelta(minutes=1)),
    ]
    assert count_recent_invalid(documents, now) == {"pub-a": 2, "pub-b": 1}
    assert count_recent_invalid(documents, now, period_hours=3) == {"pub-a": 3, "pub-b": 1}
    assert publishers_to_flag(count_recent_invalid(documents, now), threshold=1) == ["pub-a"]


def test_flag_reason() -> None:
    assert flag_reason() == "Over 100 critical documents in the last 2 hours."
