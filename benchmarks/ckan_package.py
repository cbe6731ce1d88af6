"""CKAN packager throughput and memory: datastore rows → CSV ZIP, ours against the legacy algorithm.

The stand-in CKAN (``ecr_pipelines.dev.standins.ckan``) serves a generated 10-column resource
from this process; each packaging runs in a child process of its own, so its peak RSS is its
own and the stand-in has its own core. Both sides read the same rows in pages of 5,000:

* ours: ``ecr_pipelines.ckan.package.store_package`` into a local blob store (pages fetched and
  encoded as CSV by two worker processes, put in order and deflated into the ZIP entry, the ZIP
  streamed into the store);
* legacy (ckanpackager re-implemented here as its code did it): one ``requests.post`` per page,
  ``response.json()``, ``[record.get(f) for f in fields]`` through the ``csv`` module into
  ``resource.csv`` on disk, then ``zip -j`` on the file.

Prints seconds, rows/s, the speed-up over the legacy, the CPU seconds of the packaging (the
legacy's including ``zip``, ours including its workers) and of the stand-in meanwhile, peak RSS
(for the legacy the larger of the Python process and ``zip``; for ours the packaging process,
and its workers' apart) and, for ours, the RSS after each quarter of the rows (flat means
streaming). No asserts on time: the figures are for reading. Run it on an otherwise
idle machine: ours spreads fetching, encoding and deflating over two cores, which other work
takes away (the CPU seconds show the difference in work either way).

    .venv/bin/python benchmarks/ckan_package.py               # 300,000 and 3,000,000 rows
    .venv/bin/python benchmarks/ckan_package.py --rows 50000  # a quick run
"""

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAGE_SIZE = 5000


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


# -- the two children -------------------------------------------------------------------------------
def child_ours(api_url: str, resource_id: str, workdir: Path, compresslevel: int) -> dict[str, object]:
    from ecr_pipelines.ckan.package import PackageReport, store_package, validate_request
    from ecr_pipelines.lib.blobstore import LocalBlobStore
    from ecr_pipelines.lib.http import make_session

    store = LocalBlobStore(workdir / "blobs")
    pkg = validate_request("datastore", {"api_url": api_url, "resource_id": resource_id}, require_email=False)
    samples: list[tuple[int, float]] = []

    def progress(report: PackageReport) -> None:
        samples.append((report.rows, _rss_mb()))

    key = f"ckan/{pkg.cache_key}.zip"
    report = store_package(
        pkg, make_session(), store, key, page_size=PAGE_SIZE, progress=progress, compresslevel=compresslevel
    )
    total = report.rows
    quarters = []
    for q in (1, 2, 3, 4):
        at = next((rss for rows, rss in samples if rows >= total * q / 4), samples[-1][1])
        quarters.append(round(at, 1))
    return {
        "rows": report.rows,
        "seconds": report.seconds,
        "cpu": _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN),
        "zip_bytes": report.zip_bytes,
        "peak_mb": _peak_mb(),
        "workers": report.workers,
        "worker_peak_mb": _peak_mb(resource.RUSAGE_CHILDREN),
        "cpu_workers": _cpu(resource.RUSAGE_CHILDREN),
        "quarters_mb": quarters,
        "calls": report.calls,
    }


def child_legacy(api_url: str, resource_id: str, workdir: Path, compresslevel: int) -> dict[str, object]:
    import requests

    started = time.perf_counter()
    params = {"resource_id": resource_id}
    first = requests.post(api_url, json={**params, "offset": 0, "limit": 0}).json()["result"]
    fields = [f["id"] for f in first["fields"]]
    csv_path = workdir / "resource.csv"
    rows = calls = 0
    offset = 0
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, quotechar='"', lineterminator="\n")
        writer.writerow(fields)
        while True:
            response = requests.post(api_url, json={**params, "offset": offset, "limit": PAGE_SIZE})
            calls += 1
            response.raise_for_status()
            records = response.json()["result"]["records"]
            if not records:
                break
            for record in records:
                writer.writerow([record.get(f) for f in fields])
            rows += len(records)
            offset += PAGE_SIZE
    zip_path = workdir / "legacy.zip"
    subprocess.run(["zip", "-q", f"-{compresslevel}", "-j", str(zip_path), str(csv_path)], check=True)
    csv_path.unlink()
    return {
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "cpu": _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN),
        "zip_bytes": zip_path.stat().st_size,
        "peak_mb": max(_peak_mb(), _peak_mb(resource.RUSAGE_CHILDREN)),
        "calls": calls + 1,
    }


# -- the parent -------------------------------------------------------------------------------------
def _run_child(which: str, api_url: str, resource_id: str, compresslevel: int) -> dict[str, object]:
    server_cpu = _cpu(resource.RUSAGE_SELF)  # this process only serves the stand-in meanwhile
    with tempfile.TemporaryDirectory(prefix="ckan-bench-") as tmp:
        env = dict(os.environ, ECR_HOME=str(Path(tmp) / "home"))
        command = [sys.executable, __file__, "--child", which, "--api-url", api_url]
        command += ["--resource-id", resource_id, "--workdir", tmp, "--compresslevel", str(compresslevel)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{which} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["server_cpu"] = _cpu(resource.RUSAGE_SELF) - server_cpu
    return figures


HEADER = (
    f"{'rows':>10}  {'side':<6} {'seconds':>8} {'rows/s':>9} {'speed-up':>8} {'CPU s':>6} {'server':>6}"
    f" {'peak RSS':>9} {'ZIP':>8}  RSS after each quarter of the rows (packaging process)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000, 3_000_000], help="resource sizes")
    parser.add_argument(
        "--compresslevel", type=int, default=6, help="deflate level of both sides (default 6, zip's default)"
    )
    parser.add_argument("--child", choices=("ours", "legacy"), help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--resource-id", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = child_ours if args.child == "ours" else child_legacy
        print(json.dumps(child(args.api_url, args.resource_id, args.workdir, args.compresslevel)), flush=True)
        return
    if shutil.which("zip") is None:
        raise SystemExit("the legacy side needs the `zip` command (apt-get install zip)")

    from ecr_pipelines.dev.standins.ckan import CkanStandIn, synthetic_table

    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before the run, "
        f"deflate level {args.compresslevel}",
        flush=True,
    )
    print(HEADER, flush=True)
    with CkanStandIn() as ckan:
        for rows in args.rows:
            resource_id = f"bench-{rows}"
            ckan.add_table(resource_id, synthetic_table(rows))
            legacy = _run_child("legacy", ckan.api_url, resource_id, args.compresslevel)
            ours = _run_child("ours", ckan.api_url, resource_id, args.compresslevel)
            assert ours["rows"] == legacy["rows"] == rows, (ours["rows"], legacy["rows"], rows)
            for side, figures in (("legacy", legacy), ("ours", ours)):
                seconds = float(figures["seconds"])  # type: ignore[arg-type]
                speedup = float(legacy["seconds"]) / seconds  # type: ignore[arg-type]
                quarters = " ".join(f"{q:.0f}" for q in figures.get("quarters_mb", []))  # type: ignore[attr-defined]
                quarters = f"{quarters} MB" if quarters else "(zip: one file at the end)"
                if figures.get("workers"):
                    quarters += f"; {figures['workers']} worker processes, peak {figures['worker_peak_mb']:.0f} MB each"
                print(
                    f"{rows:>10,}  {side:<6} {seconds:>8.1f} {rows / seconds:>9,.0f} {speedup:>7.2f}x"
                    f" {figures['cpu']:>6.1f} {figures['server_cpu']:>6.1f}"
                    f" {figures['peak_mb']:>6.0f} MB {int(figures['zip_bytes']) / 1e6:>5.1f} MB  {quarters}",  # type: ignore[call-overload]
                    flush=True,
                )
    print(f"load average {os.getloadavg()[0]:.2f} after the run (other work on the machine slows both sides)")


if __name__ == "__main__":
    main()
