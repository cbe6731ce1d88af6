"""Where the IATI stages keep their files in the blob store (content-addressed where possible)."""

BLOB_PREFIX = "iati"


def source_key(doc_hash: str) -> str:
    """The downloaded file, as the publisher serves it."""
    return f"{BLOB_PREFIX}/source/{doc_hash}.xml"


def clean_key(doc_hash: str) -> str:
    """The clean file: valid activities only, what flatten, lake and Solr read."""
    return f"{BLOB_PREFIX}/clean/{doc_hash}.xml"


def lake_prefix(document_id: str) -> str:
    """One XML and one JSON blob per activity of the document, keyed by its identifier."""
    return f"{BLOB_PREFIX}/lake/{document_id}/"
