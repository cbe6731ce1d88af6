"""Flatten throughput and memory on a 200 MB IATI file built by repeating the sample activities.

The flatten runs in a child process doing what the ``iati_flattened_activities`` asset does per
document: stream the activities out of the file (``iter_flattened_activities``) and write each one
as JSON to a temporary file (the asset then hands that file to Postgres with ``COPY``). The child
reports its peak resident set size (``VmHWM``), which must stay under 300 MB: memory must not grow
with the file.

The command line (``python -m ecr_pipelines.iati.flatten FILE``, output discarded) runs on the same
file too, and its own peak RSS is printed: it streams, so it stays flat as well.

    .venv/bin/python benchmarks/iati_flatten.py [--size-mb 200] [--keep FILE]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "ecr_pipelines_tests" / "iati" / "fixtures" / "samples"
SAMPLE_FILES = [
    "official/activity-standard-example-annotated.xml",
    "real-world/3fi-activity.xml",
    "real-world/beis-activity.xml",
    "real-world/fcdo-activity.xml",
    "real-world/gdihub-activity.xml",
]
LIMIT_MB = 300


def sample_activities() -> list[bytes]:
    activities = []
    for name in SAMPLE_FILES:
        root = etree.parse(str(SAMPLES / name)).getroot()
        for activity in root.iter("iati-activity"):
            activities.append(etree.tostring(activity, encoding="utf-8", with_tail=False) + b"\n")
    return activities


def build_file(path: Path, size_mb: int) -> tuple[int, int]:
    """Write the test file; returns (bytes, activities)."""
    activities = sample_activities()
    target = size_mb * 1024 * 1024
    count = 0
    with path.open("wb") as out:
        out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(
            b'<iati-activities version="2.03" generated-datetime="2024-06-20T07:10:17+00:00" '
            b'xmlns:usg="http://foreignassistance.gov/iati#">\n'
        )
        while out.tell() < target:
            for activity in activities:
                out.write(activity)
                count += 1
        out.write(b"</iati-activities>\n")
        return out.tell(), count


def vm_hwm_mb() -> float:
    """Peak resident set size of this process so far (Linux ``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(path: str) -> None:
    """Flatten ``path`` as the asset does and print the figures as JSON."""
    from ecr_pipelines.iati.flatten import iter_flattened_activities, write_json

    baseline = vm_hwm_mb()
    started = time.perf_counter()
    with tempfile.TemporaryFile("w", encoding="ascii") as out, open(path, "rb") as source:
        activities = write_json(iter_flattened_activities(source), out)
        json_bytes = out.tell()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "activities": activities,
                "json_bytes": json_bytes,
                "baseline_mb": baseline,
                "peak_mb": vm_hwm_mb(),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="write the test file here and keep it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "big-activities.xml"
        started = time.perf_counter()
        size, count = build_file(path, args.size_mb)
        print(
            f"built {path.name}: {size / 1e6:.0f} MB, {count} activities in {time.perf_counter() - started:.1f} s"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        cli_peak = cli_peak_mb(path)
    mb_per_s = size / 1e6 / figures["seconds"]
    peak = figures["peak_mb"]
    print(
        f"flattened {figures['activities']} activities ({figures['json_bytes'] / 1e6:.0f} MB of JSON) "
        f"in {figures['seconds']:.1f} s: {mb_per_s:.1f} MB/s, {figures['activities'] / figures['seconds']:.0f} activities/s"
    )
    print(
        f"peak RSS of the flattening process: {peak:.0f} MB ({figures['baseline_mb']:.0f} MB after imports); "
        f"{'under' if peak < LIMIT_MB else 'OVER'} the {LIMIT_MB} MB limit"
    )
    print(
        f"peak RSS of `python -m ecr_pipelines.iati.flatten FILE > /dev/null` on the same file: {cli_peak:.0f} MB"
    )
    return 0 if peak < LIMIT_MB else 1


def cli_peak_mb(path: Path) -> float:
    """The command line's own peak RSS (``wait4``'s ``ru_maxrss`` of that one child), output discarded."""
    with open(os.devnull, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "ecr_pipelines.iati.flatten", str(path)], stdout=sink
        )
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"the command failed ({status})")
    return usage.ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
