"""Publisher "black flag" safety check decision (pure logic).

A publisher is flagged when more than ``threshold`` of its documents failed the schema check
(``file_schema_valid = false``) among those downloaded in the last ``period_hours`` hours. A flagged
publisher's schema-invalid documents are then held back from full validation, cleaning and
indexing until the flag is removed by hand; its valid documents proceed normally.
"""

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

SAFETY_CHECK_THRESHOLD = 100
SAFETY_CHECK_PERIOD_HOURS = 2


def count_recent_invalid(
    documents: Iterable[tuple[str, bool | None, datetime | None]],
    now: datetime,
    period_hours: float = SAFETY_CHECK_PERIOD_HOURS,
) -> dict[str, int]:
    """Count, per publisher, documents with ``file_schema_valid is False`` downloaded recently.

    ``documents`` yields ``(publisher, file_schema_valid, downloaded)``; "recently" means
    ``now - downloaded < period_hours`` (documents never downloaded are ignored).
    """
    window = timedelta(hours=period_hours)
    counts: Counter[str] = Counter(
        publisher
        for publisher, schema_valid, downloaded in documents
        if schema_valid is False and downloaded is not None and now - downloaded < window
    )
    return dict(counts)


def publishers_to_flag(counts: Mapping[str, int], threshold: int = SAFETY_CHECK_THRESHOLD) -> list[str]:
    """Return the publishers whose recent schema-invalid count is strictly above ``threshold``."""
    return sorted(publisher for publisher, count in counts.items() if count > threshold)


def flag_reason(
    threshold: int = SAFETY_CHECK_THRESHOLD, period_hours: float = SAFETY_CHECK_PERIOD_HOURS
) -> str:
    """Human-readable reason sent with a new black-flag notification."""
    return f"Over {threshold} critical documents in the last {period_hours:g} hours."
