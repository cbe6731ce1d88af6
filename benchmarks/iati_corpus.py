"""The IATI pipeline at corpus scale: every stage end to end on one instance, then a 1 % re-run.

A generated corpus (default: 10,000 documents and about 1,000,000 activities, sizes skewed as the
real corpus: most documents hold a few dozen activities, a few hold tens of thousands, the two
largest over 100 MB; 1 % of the documents carry one schema-invalid activity, one of the largest
among them, so the clean stage rebuilds them) is served over loopback by a stand-in Bulk Data
Service (the dataset and reporting-org indices and the cached files). Each stage then runs in a
child process on one database, one blob folder and one Solr stand-in (lean: it checks every
document against the schema, as Solr does, but keeps only ids):

    sync, download, validate (local), safety check, clean, flatten, lake, Solr

and the script prints, per stage: documents processed, activities, activities/s, seconds, the
stage process's peak RSS (and its worker processes', when it has any) and the SQL statements it
issued. Then 1 % of the documents change (new content, new hash in the index) and every stage runs
again: only the changed documents may be touched.

With ``--docs 1000,10000`` (the default) the corpus is built and run at both sizes, each in a fresh
database, so the peak RSS can be compared: it must not grow with the corpus.

Targets on a 2-core machine: the full run under 1 hour, the re-run under 5 minutes, peak RSS under
1 GB at both sizes.

    .venv/bin/python benchmarks/iati_corpus.py [--docs 1000,10000] [--processes 2] [--work DIR]

Runs against DATABASE_URL when set (database ``ecr_bench`` on that server), else a throwaway
embedded Postgres. Needs about 4 GB of disk per 10,000 documents in ``--work`` (default: a
temporary folder, deleted at the end) plus the database.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sync", "download", "validate", "safety", "clean", "flatten", "lake", "solr")
RSS_LIMIT_MB = 1024

ACTIVITY = """<iati-activity last-updated-datetime="2026-0{m}-1{d}T08:1{d}:00Z" xml:lang="en" \
default-currency="GBP" hierarchy="1">
  <iati-identifier>{ident}</iati-identifier>
  <reporting-org ref="{org}" type="10"><narrative>Publisher {pub}</narrative></reporting-org>
  <title><narrative>Activity {n} of document {doc}: water and sanitation, generation {gen}</narrative>\
<narrative xml:lang="fr">Activité {n}</narrative></title>
  <description type="1"><narrative>Improving access to safe water for {n} households in rural \
districts, with training and maintenance of {d} boreholes over three years.</narrative></description>
  <participating-org ref="{org}" role="1" type="10"><narrative>Publisher {pub}</narrative></participating-org>
  <participating-org role="4" type="22"><narrative>Implementing partner {d}</narrative></participating-org>
  <activity-status code="2"/>{bad}
  <activity-date iso-date="2024-0{m}-01" type="1"/>
  <activity-date iso-date="2027-0{m}-28" type="3"/>
  <recipient-country code="KE" percentage="100"/>
  <location><point srsName="http://www.opengis.net/def/crs/EPSG/0/4326"><pos>-1.{d}92 36.8{m}2</pos>\
</point></location>
  <sector vocabulary="1" code="14030" percentage="100"/>
  <budget type="1" status="1"><period-start iso-date="2025-01-01"/><period-end iso-date="2025-12-31"/>\
<value currency="GBP" value-date="2025-01-01">{b}</value></budget>
  <transaction><transaction-type code="2"/><transaction-date iso-date="2025-0{m}-15"/>\
<value currency="GBP" value-date="2025-0{m}-15">{t1}</value><description><narrative>Commitment</narrative>\
</description></transaction>
  <transaction><transaction-type code="3"/><transaction-date iso-date="2025-0{m}-20"/>\
<value currency="GBP" value-date="2025-0{m}-20">{t2}</value><description><narrative>Disbursement</narrative>\
</description></transaction>
</iati-activity>
"""


# -- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    number: int
    activities: int
    invalid: bool

    @property
    def name(self) -> str:
        return f"doc-{self.number:05d}"

    @property
    def publisher(self) -> int:
        return self.number % 500


def corpus_shape(documents: int, scale: float = 1.0) -> list[Doc]:
    """Activity counts per document: two of 60,000 (over 100 MB each), a few of 15,000 and 2,000,
    a tenth of 300, the rest a few dozen; 1 % with one invalid activity, one of the two largest
    among them. For 10,000 documents that is 1,000,000 activities; smaller corpora keep the two
    largest documents, so the peak memory of both sizes can be compared."""
    classes = [(2, 60_000), (max(1, documents // 1250), 15_000), (max(1, documents // 111), 2_000)]
    classes.append((documents // 11, 300))
    counts: list[int] = [size for number, size in classes for _ in range(number)]
    rest = documents - len(counts)
    target = documents * 100 - sum(counts) if documents >= 10_000 else rest * 35
    small = [1 + (i * 37) % 68 for i in range(rest)]  # a few dozen each, varied
    difference, position = target - sum(small), 0
    while difference and rest:
        step = 1 if difference > 0 else -1
        if small[position] + step >= 1:
            small[position] += step
            difference -= step
        position = (position + 1) % rest
    counts += small
    counts = [max(1, round(count * scale)) for count in counts]
    return [
        Doc(number, count, invalid=(number == 1 or (number > 10 and number % 100 == 7)))
        for number, count in enumerate(counts)
    ]


def write_document(path: Path, doc: Doc, generation: int) -> tuple[int, str]:
    """Write one activities file; returns its size and sha1 (the index's hash)."""
    digest = hashlib.sha1()
    size = 0
    with path.open("wb") as out:

        def put(text: str) -> None:
            nonlocal size
            data = text.encode("utf-8")
            digest.update(data)
            out.write(data)
            size += len(data)

        put(
            '<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities version="2.03" '
            f'generated-datetime="2026-11-20T05:41:1{generation % 10}Z">\n'
        )
        parts: list[str] = []
        for n in range(doc.activities):
            parts.append(
                ACTIVITY.format(
                    m=1 + n % 9,
                    d=n % 10,
                    ident=f"XM-DAC-{doc.number}-{n}",
                    org=f"XM-{doc.publisher}",
                    pub=doc.publisher,
                    n=n,
                    doc=doc.number,
                    gen=generation,
                    b=1000 + n,
                    t1=500 + n,
                    t2=250 + n,
                    bad="<not-iati/>" if doc.invalid and n == doc.activities // 2 else "",
                )
            )
            if len(parts) == 2000:
                put("".join(parts))
                parts = []
        put("".join(parts) + "</iati-activities>\n")
    return size, digest.hexdigest()


def build_corpus(folder: Path, docs: list[Doc], generation: dict[int, int]) -> dict[int, tuple[int, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        doc.number: write_document(folder / f"{doc.name}.xml", doc, generation.get(doc.number, 0))
        for doc in docs
    }


def indices(docs: list[Doc], files: dict[int, tuple[int, str]], base_url: str) -> tuple[bytes, bytes]:
    datasets = []
    for doc in docs:
        _size, sha = files[doc.number]
        datasets.append(
            {
                "id": f"d{doc.number:07x}-5b1e-4c39-8d1e-{doc.number:012x}",
                "short_name": f"pub-{doc.publisher}-{doc.name}",
                "reporting_org_id": _org_id(doc.publisher),
                "reporting_org_short_name": f"pub-{doc.publisher}",
                "source_url": f"https://publisher-{doc.publisher}.example/iati/{doc.name}.xml",
                "license_id": "cc-by",
                "last_update_check": "2026-11-20 05:41:12.000000+00:00",
                "last_known_good_dataset": {
                    "cached_dataset_url_xml": f"{base_url}/cache/{doc.name}.xml",
                    "cached_dataset_url_zip": f"{base_url}/cache/{doc.name}.xml.zip",
                    "hash": sha,
                    "hash_excluding_generated_timestamp": sha,
                    "downloaded": "2026-11-20 05:41:12.000000+00:00",
                },
            }
        )
    orgs = [
        {
            "id": _org_id(n),
            "short_name": f"pub-{n}",
            "human_readable_name": f"Publisher {n}",
            "iati_identifier": f"XM-{n}",
        }
        for n in sorted({doc.publisher for doc in docs})
    ]
    stamp = {"index_created": "2026-11-20 06:00:00+00:00", "index_created_unix_timestamp": 1_795_154_400}
    return json.dumps({"datasets": datasets, **stamp}).encode(), json.dumps(
        {"reporting_orgs": orgs, **stamp}
    ).encode()


def _org_id(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


# -- one stage in a child process ----------------------------------------------------------------


def stage_child(args: argparse.Namespace) -> None:
    """Run one stage (``args.stage``) and print its figures as JSON on the last line."""
    import sqlalchemy as sa

    from ecr_pipelines.iati.solr import SolrClient
    from ecr_pipelines.lib.blobstore import LocalBlobStore
    from ecr_pipelines.lib.http import make_session
    from ecr_pipelines.lib.sql import Sql

    statements = 0

    @sa.event.listens_for(sa.Engine, "before_cursor_execute")
    def count(*_args: Any) -> None:
        nonlocal statements
        statements += 1

    engine = sa.create_engine(args.database)
    store = LocalBlobStore(args.blobs)
    processes = {"processes": args.processes} if args.processes else {}
    figures: dict[str, Any] = {}

    def quiet(_message: str) -> None:
        return None

    if args.stage == "sync":
        from ecr_pipelines.iati.clients import BdsIndexClient
        from ecr_pipelines.iati.stages.sync import sync_index

        client = BdsIndexClient(make_session(), f"{args.bds}/datasets-minimal", f"{args.bds}/reporting-orgs")
        snapshot = client.snapshot()
        with engine.begin() as conn:
            report = sync_index(Sql(conn), snapshot, run_id="benchmark")
        figures = {
            "documents": report.new_documents + len(report.changed_documents),
            "detail": f"new {report.new_documents}, changed {len(report.changed_documents)}, "
            f"unchanged {report.unchanged_documents}, stale {len(report.stale_documents)}",
        }
    elif args.stage == "safety":
        from ecr_pipelines.iati.stages.safety import run_safety_check

        with engine.begin() as conn:
            flagged = run_safety_check(Sql(conn), 100, 24.0)
        figures = {"documents": 0, "detail": f"{len(flagged)} publishers flagged"}
    else:
        if args.stage == "download":
            from ecr_pipelines.iati.stages.download import download_due

            report, _ = download_due(engine, make_session(), store, workers=8, progress=quiet)
        elif args.stage == "validate":
            from ecr_pipelines.iati.stages.validate import validate_due
            from ecr_pipelines.iati.validator_api import LocalValidator

            report = validate_due(engine, store, LocalValidator(), hold_hours=0, progress=quiet, **processes)
        elif args.stage == "clean":
            from ecr_pipelines.iati.stages.clean import clean_due

            report = clean_due(engine, store, progress=quiet, **processes)
        elif args.stage == "flatten":
            from ecr_pipelines.iati.stages.flatten import run_flatten

            report = run_flatten(engine, store, progress=quiet, **processes)
        elif args.stage == "lake":
            from ecr_pipelines.iati.stages.lake import run_lake

            report = run_lake(engine, store, progress=quiet, **processes)
        elif args.stage == "solr":
            from ecr_pipelines.iati.stages.solr import run_solr

            report = run_solr(engine, store, SolrClient(args.solr), progress=quiet)
        else:
            raise SystemExit(f"unknown stage {args.stage}")
        counts = dict(report.counts)
        activities = counts.get("activities") or counts.get("records") or 0
        figures = {
            "documents": report.processed,
            "activities": activities,
            "errors": report.errors,
            "detail": ", ".join(f"{count} {kind}" for kind, count in sorted(report.kinds.items())),
        }
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures.update(statements=statements, workers_peak_mb=children, self_peak_mb=_vm_hwm_mb())
    print(json.dumps(figures))


def _vm_hwm_mb() -> float:
    """This process's peak resident set size (Linux ``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StageRun:
    stage: str
    seconds: float
    peak_mb: float
    figures: dict[str, Any]


def run_stage_child(stage: str, common: list[str]) -> StageRun:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--stage", stage, *common],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    # This process's RUSAGE_CHILDREN is a maximum over every child so far: the child reports its own.
    if process.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{err[-4000:]}")
    figures = json.loads(out.strip().splitlines()[-1])
    return StageRun(stage, seconds, float(figures.pop("self_peak_mb", 0.0)), figures)


HEADER = (
    f"  {'stage':<9}{'docs':>7}{'activities':>12}{'act/s':>9}{'seconds':>9}{'RSS MB':>8}"
    f"{'workers MB':>11}{'stmts':>8}  detail"
)


def stage_line(run: StageRun, activities_due: int, documents_due: int) -> str:
    """One stage's row; a stage that does not count activities is given those of the documents
    due when it processed all of them."""
    f = run.figures
    activities = int(f.get("activities") or 0)
    if not activities and run.stage not in ("sync", "safety") and f.get("documents") == documents_due:
        activities = activities_due
    rate = f"{activities / run.seconds:,.0f}" if activities and run.seconds else "-"
    workers = f"{f['workers_peak_mb']:.0f}" if f.get("workers_peak_mb") else "-"
    return (
        f"  {run.stage:<9}{f.get('documents', 0):>7,}{activities:>12,}{rate:>9}{run.seconds:>9.1f}"
        f"{run.peak_mb:>8.0f}{workers:>11}{f.get('statements', 0):>8,}  {f.get('detail', '')}"
    )


def run_all(
    title: str, common: list[str], activities_due: int, documents_due: int
) -> tuple[list[StageRun], float]:
    """Every stage in order, each row printed as soon as its stage ends."""
    print(f"\n{title}\n{HEADER}", flush=True)
    runs = []
    for stage in STAGES:
        run = run_stage_child(stage, common)
        runs.append(run)
        print(stage_line(run, activities_due, documents_due), flush=True)
    total = sum(run.seconds for run in runs)
    print(f"  {'total':<9}{'':>28}{total:>9.1f}   ({total / 60:.1f} min)", flush=True)
    return runs, total


# -- the whole run -------------------------------------------------------------------------------


def run_scale(documents: int, work: Path, database: str, processes: int, scale: float) -> dict[str, Any]:
    import sqlalchemy as sa

    from ecr_pipelines.dev.standins import Reply, StandInServer
    from ecr_pipelines.dev.standins.solr import SolrStandIn
    from ecr_pipelines.lib.migrations import upgrade

    engine = sa.create_engine(database)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE iati.document, iati.publisher, iati.refresh_log, iati.validation CASCADE"
        )
        conn.execute(sa.text("DELETE FROM pipeline.stage_claim WHERE stage LIKE 'iati.%'"))
    engine.dispose()

    folder = work / f"corpus-{documents}"
    blobs = work / f"blobs-{documents}"
    shutil.rmtree(blobs, ignore_errors=True)
    docs = corpus_shape(documents, scale)
    started = time.perf_counter()
    files = build_corpus(folder / "cache", docs, {})
    total_bytes = sum(size for size, _ in files.values())
    total_activities = sum(doc.activities for doc in docs)
    largest = sorted((size for size, _ in files.values()), reverse=True)[:3]
    print(
        f"\n== {documents:,} documents, {total_activities:,} activities, {total_bytes / 1e9:.2f} GB "
        f"(largest {', '.join(f'{s / 1e6:.0f} MB' for s in largest)}; {sum(d.invalid for d in docs)} with an "
        f"invalid activity), generated in {time.perf_counter() - started:.0f} s"
    )

    with StandInServer() as bds, SolrStandIn(lean=True) as solr:

        def serve(current: dict[int, tuple[int, str]]) -> None:
            datasets, orgs = indices(docs, current, bds.url())
            headers = {"Content-Type": "application/json"}
            bds.route("/datasets-minimal", handler=lambda _r, b=datasets: Reply(200, b, headers))
            bds.route("/reporting-orgs", handler=lambda _r, b=orgs: Reply(200, b, headers))
            bds.route("/cache/*", dir=folder / "cache")

        serve(files)
        common = [
            "--database",
            database,
            "--blobs",
            str(blobs),
            "--bds",
            bds.url(),
            "--solr",
            solr.url,
            "--processes",
            str(processes),
        ]
        full, full_total = run_all(f"full run, {documents:,} documents", common, total_activities, len(docs))
        indexed = len(solr.documents("activity"))
        print(f"  Solr activity collection: {indexed:,} committed documents")

        # 1 % of the documents change: new content, so a new hash in the index.
        changed = {doc.number: 1 for doc in docs[5::100]}
        started = time.perf_counter()
        for doc in docs:
            if doc.number in changed:
                files[doc.number] = write_document(folder / "cache" / f"{doc.name}.xml", doc, 1)
        print(f"\n{len(changed)} documents changed ({time.perf_counter() - started:.0f} s to write them)")
        serve(files)
        rerun, rerun_total = run_all(
            f"re-run after 1 % changed, {documents:,} documents",
            common,
            sum(doc.activities for doc in docs if doc.number in changed),
            len(changed),
        )
        touched = {run.stage: run.figures.get("documents", 0) for run in rerun}
        print(f"  documents touched per stage: {touched} (changed: {len(changed)})")
    peak = max(max(run.peak_mb, run.figures.get("workers_peak_mb", 0.0)) for run in full + rerun)
    return {
        "documents": documents,
        "activities": total_activities,
        "gb": total_bytes / 1e9,
        "full_s": full_total,
        "rerun_s": rerun_total,
        "peak_mb": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", default="1000,10000", help="corpus sizes, comma-separated")
    parser.add_argument("--processes", type=int, default=2, help="worker processes of the CPU-bound stages")
    parser.add_argument(
        "--activity-scale",
        type=float,
        default=1.0,
        help="multiply every document's activities (a quick try: 0.01)",
    )
    parser.add_argument("--work", type=Path, help="folder for the corpus and the blobs (kept)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    for hidden in ("--database", "--blobs", "--bds", "--solr"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage_child(args)
        return 0

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _database import benchmark_database

    work = args.work or Path(tempfile.mkdtemp(prefix="iati-corpus-"))
    results = []
    try:
        with benchmark_database() as url:
            for documents in (int(n) for n in args.docs.split(",")):
                results.append(run_scale(documents, work, url, args.processes, args.activity_scale))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\nsummary")
    ok = True
    for r in results:
        verdicts = [
            f"full {r['full_s'] / 60:.1f} min ({'under' if r['full_s'] < 3600 else 'OVER'} 1 h)",
            f"1 % re-run {r['rerun_s'] / 60:.1f} min ({'under' if r['rerun_s'] < 300 else 'OVER'} 5 min)",
            f"peak RSS {r['peak_mb']:.0f} MB ({'under' if r['peak_mb'] < RSS_LIMIT_MB else 'OVER'} 1 GB)",
        ]
        ok = ok and r["full_s"] < 3600 and r["rerun_s"] < 300 and r["peak_mb"] < RSS_LIMIT_MB
        print(
            f"  {r['documents']:>6,} documents, {r['activities']:>9,} activities, {r['gb']:.2f} GB: "
            + "; ".join(verdicts)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
