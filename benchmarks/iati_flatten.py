"""Flatten throughput and memory on a 200 MB IATI file built by repeating the real-world sample
activities (3FI, BEIS, FCDO, GDI Hub; ``--with-example`` adds the annotated standard example).

The flatten runs in a child process doing what the ``iati_flattened_activities`` asset does per
document: stream the activities out of the file (``iter_flattened_activities``) and write each one
as JSON to a temporary file (the asset then hands that file to Postgres with ``COPY``). The child
reports its peak resident set size (``VmHWM``), which must stay under 300 MB: memory must not grow
with the file.

Baseline, in the same run and on the same file: the flatten module as it was before issue 16
(commit ``BASELINE_COMMIT``, read with ``git show``), in the same kind of child. That code was
measured side by side with the refresher's ``Flattener`` on a 50 MB file of real activities at
1.34x the refresher's speed (8.2 against 6.1 MB/s), so the refresher's speed here is estimated as
the baseline's divided by 1.34: the refresher itself cannot be installed on this machine. The two
run alternately, best of ``--repeat`` each, so a busy machine hits both alike.

The command line (``python -m ecr_pipelines.iati.flatten FILE``, output discarded) runs on the same
file too, and its own peak RSS is printed: it streams, so it stays flat as well.

    .venv/bin/python benchmarks/iati_flatten.py [--size-mb 200] [--repeat 2] [--keep FILE]
"""

import argparse
import importlib.util
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
EXAMPLE_FILE = "official/activity-standard-example-annotated.xml"
SAMPLE_FILES = [
    "real-world/3fi-activity.xml",
    "real-world/beis-activity.xml",
    "real-world/fcdo-activity.xml",
    "real-world/gdihub-activity.xml",
]
LIMIT_MB = 300
BASELINE_COMMIT = "9a968ce"  # the flatten of before issue 16
REFRESHER_FACTOR = 1.34  # that code's speed over the refresher's, measured side by side


def sample_activities(with_example: bool = False) -> list[bytes]:
    activities = []
    for name in SAMPLE_FILES + ([EXAMPLE_FILE] if with_example else []):
        root = etree.parse(str(SAMPLES / name)).getroot()
        for activity in root.iter("iati-activity"):
            activities.append(etree.tostring(activity, encoding="utf-8", with_tail=False) + b"\n")
    return activities


def build_file(path: Path, size_mb: int, with_example: bool = False) -> tuple[int, int]:
    """Write the test file; returns (bytes, activities)."""
    activities = sample_activities(with_example)
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


def child(path: str, module_file: str | None) -> None:
    """Flatten ``path`` as the asset does and print the figures as JSON; with ``module_file``, the
    flatten module is that file (the baseline) instead of the current one."""
    from ecr_pipelines.iati.flatten import write_json

    if module_file:
        spec = importlib.util.spec_from_file_location("baseline_flatten", module_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        iter_flattened_activities = module.iter_flattened_activities
    else:
        from ecr_pipelines.iati.flatten import iter_flattened_activities

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


def run_child(path: Path, module_file: Path | None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, __file__, "--child", str(path)]
    if module_file is not None:
        command += ["--module", str(module_file)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_module(folder: Path) -> Path | None:
    """The pre-issue-16 flatten module, from git; None outside a git clone."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:ecr_pipelines/iati/flatten.py"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    path = folder / "baseline_flatten.py"
    path.write_text(done.stdout, encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each flatten; the best counts")
    parser.add_argument("--with-example", action="store_true", help="add the annotated example's activities")
    parser.add_argument("--keep", type=Path, help="write the test file here and keep it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.module)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "big-activities.xml"
        started = time.perf_counter()
        size, count = build_file(path, args.size_mb, args.with_example)
        print(
            f"built {path.name}: {size / 1e6:.0f} MB, {count} activities in {time.perf_counter() - started:.1f} s"
        )
        previous = baseline_module(Path(tmp))
        best: dict[str, dict[str, float]] = {}
        for _ in range(max(1, args.repeat)):
            for name, module in (("current", None), ("baseline", previous)):
                if name == "baseline" and module is None:
                    continue
                figures = run_child(path, module)
                if name not in best or figures["seconds"] < best[name]["seconds"]:
                    best[name] = figures
        cli_peak = cli_peak_mb(path)
    figures = best["current"]
    mb_per_s = size / 1e6 / figures["seconds"]
    peak = figures["peak_mb"]
    print(
        f"flattened {figures['activities']} activities ({figures['json_bytes'] / 1e6:.0f} MB of JSON) "
        f"in {figures['seconds']:.1f} s: {mb_per_s:.1f} MB/s, {figures['activities'] / figures['seconds']:.0f} activities/s"
    )
    if "baseline" in best:
        base = best["baseline"]
        base_mb_per_s = size / 1e6 / base["seconds"]
        ratio = base["seconds"] / figures["seconds"]
        print(
            f"baseline (flatten of {BASELINE_COMMIT}) on the same file: {base_mb_per_s:.1f} MB/s, "
            f"peak RSS {base['peak_mb']:.0f} MB; current/baseline {ratio:.2f}x"
        )
        print(
            f"refresher estimated at {base_mb_per_s / REFRESHER_FACTOR:.1f} MB/s (baseline / {REFRESHER_FACTOR}): "
            f"current = {ratio * REFRESHER_FACTOR:.2f}x the refresher"
        )
    else:
        print(f"baseline skipped: no git history with {BASELINE_COMMIT} here")
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
