"""Local IATI validation throughput: the sample activities concatenated into one ~100 MB file.

Every activity of the schema-valid sample files is repeated, each copy with its own identifier
(real files do not repeat identifiers, and duplicates would make the report grow), under one
``<iati-activities version="2.03">`` root, and streamed to a temporary file. The file is then
validated from disk as the validate stage does (``validate_file(path)``). Prints MB/s,
activities/s and the peak RSS growth during the validation, to show that memory stays at one
activity (plus the report) whatever the file size.

A second file, the same with every 20th activity made schema-invalid, is validated and then
cleaned (``clean_document``: rebuilt with the valid activities only), as an invalid file goes
through the validate and clean stages.
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree

from ecr_pipelines.iati.clean import clean_document
from ecr_pipelines.iati.validate import validate_file

TARGET_MB = 100
SAMPLES = Path(__file__).resolve().parents[1] / "ecr_pipelines_tests" / "iati" / "fixtures" / "samples"
SOURCES = [
    "official/activity-standard-example-annotated.xml",
    "real-world/3fi-activity.xml",
    "real-world/fcdo-activity.xml",
    "real-world/beis-activity.xml",
    "real-world/gdihub-activity.xml",
]
PLACEHOLDER = b"@@IDENTIFIER@@"
BROKEN_EVERY = 20


def activity_templates() -> list[bytes]:
    """Each sample activity serialised once, its identifier replaced by a placeholder."""
    templates = []
    for name in SOURCES:
        root = etree.parse(str(SAMPLES / name)).getroot()
        for activity in root.iter("iati-activity"):
            activity.find("iati-identifier").text = PLACEHOLDER.decode()
            templates.append(etree.tostring(activity, encoding="utf-8", with_tail=False))
    return templates


def write_file(path: Path, target_bytes: int, broken_every: int = 0) -> tuple[int, int]:
    """Write the concatenated file; returns (bytes, activities)."""
    templates = activity_templates()
    count = 0
    with open(path, "wb") as out:
        out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(b'<iati-activities version="2.03" generated-datetime="2026-01-01T00:00:00Z">\n')
        while out.tell() < target_bytes:
            template = templates[count % len(templates)]
            if broken_every and count % broken_every == 0:
                # An element the schema does not allow, right after the identifier.
                template = template.replace(b"</iati-identifier>", b"</iati-identifier><not-iati/>", 1)
            out.write(template.replace(PLACEHOLDER, f"XM-BENCH-{count:07d}".encode()))
            out.write(b"\n")
            count += 1
        out.write(b"</iati-activities>\n")
        return out.tell(), count


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.xml"
        size, activities = write_file(path, TARGET_MB * 1024 * 1024)
        validate_file(SAMPLES / SOURCES[1])  # compile the 2.03 schema outside the timing
        before = rss_mb()  # the package import loads Dagster: most of this baseline
        started = time.perf_counter()
        report = validate_file(path)
        seconds = time.perf_counter() - started
        peak = rss_mb()
        meta = report["iati-activities"]
        assert report["valid"] is True and len(meta) == activities, report["summary"]
        print(
            f"valid file: {size / 1e6:.1f} MB, {activities:,} activities ({len(SOURCES)} sample files repeated)"
        )
        print(
            f"  validated in {seconds:.2f} s: {size / 1e6 / seconds:.1f} MB/s, {activities / seconds:,.0f} activities/s"
        )
        print(f"  peak RSS growth during validation: {peak - before:.1f} MB (RSS before: {before:.1f} MB)")

        path.unlink()
        size, activities = write_file(path, TARGET_MB * 1024 * 1024, broken_every=BROKEN_EVERY)
        started = time.perf_counter()
        report = validate_file(path)
        validated = time.perf_counter() - started
        result = clean_document(path, report)
        cleaned = time.perf_counter() - started - validated
        peak_invalid = rss_mb()
        broken = -(-activities // BROKEN_EVERY)
        assert report["valid"] is False and (result.kept, result.dropped) == (activities - broken, broken)
        print(f"invalid file: {size / 1e6:.1f} MB, {broken:,} of {activities:,} activities schema-invalid")
        print(f"  validated in {validated:.2f} s: {size / 1e6 / validated:.1f} MB/s")
        print(
            f"  cleaned in {cleaned:.2f} s: {size / 1e6 / cleaned:.1f} MB/s, {result.kept:,} activities kept, "
            f"{len(result.data or b'') / 1e6:.1f} MB written"
        )
        print(
            f"  peak RSS growth since the first validation: {peak_invalid - before:.1f} MB (clean output held in memory)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
