"""What every IATI stage shares about ``iati.document`` rows (no Dagster).

Every final write is guarded by the document's ``hash``: if the sync changed the document while
a stage worked on it, the stale result is dropped (``superseded``).
"""

import codecs
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.lib.batch import Outcome, Stage, with_retry
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.workers import (
    ItemWorkers,
    StageResources,
    WorkerFailure,
    left_due,
    processes_setting,
    weighs_enough,
)

HEAD_BYTES = 4096
MESSAGE_CHARS = 500

# Sending a document back to an earlier stage (the refresher's rules).
RESET_TO_DOWNLOAD = "downloaded = NULL, clean_start = NULL, clean_end = NULL, clean_error = NULL"
RESET_TO_CLEAN = "clean_start = NULL, clean_end = NULL, clean_error = NULL"
RESET_LAKE = "lakify_start = NULL, lakify_end = NULL, lakify_error = NULL"
PROCESSES_VARIABLE = "IATI_PROCESSES"


def document_workers(
    task: Callable[[StageResources, Any], Outcome],
    engine: Engine,
    store: BlobStore,
    stage: Stage,
    processes: int | None,
    *,
    failed: Callable[[Any, WorkerFailure], Outcome] = left_due,
    **options: Any,
) -> ItemWorkers:
    """Worker processes for a stage's per-document work: ``processes`` (the run config) or
    ``IATI_PROCESSES``, started only when the due documents weigh enough (``download_size``)."""
    return ItemWorkers(
        task,
        StageResources(engine, store, **options),
        processes_setting(PROCESSES_VARIABLE, processes),
        failed=failed,
        pays=weighs_enough(engine, stage, "download_size"),
        name=stage.name,
    )


def update_document(engine: Engine, set_clause: str, doc_id: str, doc_hash: str, **params: Any) -> bool:
    """One guarded write; False when the document changed (or vanished) in the meantime."""
    sql = f"UPDATE iati.document SET {set_clause} WHERE id = :id AND hash = :hash"
    count = with_retry(
        engine, lambda conn: conn.execute(sa.text(sql), {"id": doc_id, "hash": doc_hash, **params}).rowcount
    )
    return bool(count)


# Source files: encodings, local copies, report text.
_UNICODE_CODECS = frozenset(
    {"utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "ascii"}
)
_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
_DECLARES_ENCODING = re.compile(rb"^\s*<\?xml[^>]*?\bencoding\s*=")


def needs_transcoding(head: bytes, encoding: str | None) -> bool:
    """Whether a file must be transcoded to UTF-8 before an XML parser can read it.

    ``encoding`` is what the download stage detected. Only a non-Unicode encoding in a file with
    neither a BOM nor an encoding declaration qualifies: XML parsers would read it as UTF-8.
    """
    if not encoding:
        return False
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    if name in _UNICODE_CODECS or head.startswith(_BOMS):
        return False
    return not _DECLARES_ENCODING.match(head)


def transcode_to_utf8(src: Path, dst: Path, encoding: str) -> None:
    """Stream ``src`` from ``encoding`` into UTF-8 at ``dst``; undecodable bytes become U+FFFD
    (the detection only saw the first bytes; the validator then judges what is left)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    with open(src, "rb") as source, open(dst, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(decoder.decode(chunk).encode("utf-8"))
        out.write(decoder.decode(b"", final=True).encode("utf-8"))


def fetch_source(store: BlobStore, doc_hash: str, encoding: str | None, folder: Path) -> Path:
    """Copy the source blob into ``folder`` (transcoded when needed) and return its path.

    Raises ``BlobNotFound`` when the blob is missing.
    """
    path = folder / f"{doc_hash}.xml"
    store.download_to(source_key(doc_hash), path)
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    if needs_transcoding(head, encoding):
        assert encoding is not None
        utf8 = folder / f"{doc_hash}.utf-8.xml"
        transcode_to_utf8(path, utf8, encoding)
        path.unlink()
        return utf8
    return path


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, Mapping):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def json_text(report: Mapping[str, Any]) -> str:
    text = json.dumps(report, ensure_ascii=False)
    # jsonb refuses U+0000 and UTF-8 refuses lone surrogates; an API report could quote either
    # from a broken file.
    if "\\u0000" in text:
        text = json.dumps(_without_nul(report), ensure_ascii=False)
    return text.encode("utf-8", "replace").decode("utf-8")
