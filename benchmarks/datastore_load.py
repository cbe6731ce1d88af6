"""Data store loads of one generated CSV (20 columns: integers, decimals, dates, text): the upload
path, a snapshot source load, and the legacy-style pandas baseline, on a throwaway database.

* (a) upload: ``register_uploads`` + the check stage (``uploads.check_csv``: header rules, row
  lengths, types inferred from the first ``CSV_SAMPLE_INFER_LINES`` rows), then, verified with the
  inferred types, the load stage replacing ``"bench.upload"."L0"`` with one COPY. Printed as the
  check, the load, and both; the load once more with ``encoder="csv"`` (``normalised_csv``, the
  reference the text encoder is tested against), and the database's own floor: the same rows
  COPYed back from a file in COPY's text format, no Python on the way.
* (b) snapshot: ``datastore.load.load_file`` with a synthetic snapshot ``SourceSpec`` of the same
  columns and types, read by the sources' CSV reader (``_files.csv_source_rows``).
* (c) pandas: ``pandas.read_csv`` (the null tokens as NA) + ``DataFrame.to_sql(method=None,
  chunksize=10000)``, the legacy style.

Each path runs in a child process of its own, so its peak RSS (``VmHWM``) is its own; the
database server's work is not in it (its CPU seconds are printed apart). Prints seconds, rows/s,
peak RSS and the speed-up over (c); no asserts, the figures are for reading. Runs against
DATABASE_URL's server when set, else a throwaway embedded Postgres; either way in a database of
its own, dropped at the end.

    .venv/bin/python benchmarks/datastore_load.py                 # 1,000,000 rows
    .venv/bin/python benchmarks/datastore_load.py --rows 100000   # a quick run
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
from _database import benchmark_database

from ecr_pipelines.lib.database import ensure_database, with_database
from ecr_pipelines.lib.migrations import upgrade

KINDS = ["int"] * 6 + ["dec"] * 5 + ["date"] * 4 + ["text"] * 5
NAMES = [f"c{index:02}_{kind}" for index, kind in enumerate(KINDS)]
SQL_TYPES = {"int": "bigint", "dec": "numeric", "date": "date", "text": "text"}
NULL_TOKENS = ["NULL", "None", "N/A", ""]
UPLOAD_KEY = "datastore/uploads/bench/upload/bench.csv"
POOL = 50_000


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report at least
    # the parent's peak (the generated file's columns, some 200 MB).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pool(kind: str, rng: random.Random) -> list[str]:
    """Values of one column type; typed columns get some empty values (NULL for every path),
    text columns also the other null tokens, quoted commas and quotes."""
    if kind == "int":
        values = [str(rng.randrange(-(10**6), 10**10)) for _ in range(POOL)]
    elif kind == "dec":
        values = [f"{rng.uniform(-1e5, 1e6):.4f}" for _ in range(POOL)]
    elif kind == "date":
        start = date(1990, 1, 1)
        values = [(start + timedelta(days=rng.randrange(14_000))).isoformat() for _ in range(POOL)]
    else:
        words = ["alpha", "beta", "gamma", "delta", "Smith & Sons", "o'neil", "x" * 40]
        values = [" ".join(rng.choices(words, k=rng.randrange(1, 4))) for _ in range(POOL)]
        values += ['"Acme, Inc."', '"say ""hi"""', "NULL", "N/A", "NULLABLE"] * (POOL // 100)
    return values + [""] * (POOL // 50)


def generate(path: Path, rows: int, seed: int = 7) -> int:
    """The CSV: ``rows`` rows of the 20 columns; returns its size in bytes."""
    rng = random.Random(seed)
    pools = [_pool(kind, rng) for kind in KINDS]
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(NAMES) + "\n")
        step = 100_000
        for start in range(0, rows, step):
            count = min(step, rows - start)
            columns = [rng.choices(pool, k=count) for pool in pools]
            out.write("".join(",".join(row) + "\n" for row in zip(*columns, strict=True)))
    return path.stat().st_size


# -- the children -----------------------------------------------------------------------------------
def child_upload(url: str, workdir: Path, encoder: str, check: bool) -> dict[str, object]:
    """The upload path: register and check (unless ``check`` is off: the file is verified
    already), verify with the inferred types, load."""
    from ecr_pipelines.datastore.stages.uploads import (
        check_uploads,
        load_verified,
        register_uploads,
        verify_upload,
    )
    from ecr_pipelines.lib.blobstore import LocalBlobStore

    engine = sa.create_engine(url)
    store = LocalBlobStore(workdir / "blobs")
    started = time.perf_counter()
    if check:
        register_uploads(engine, store, progress=lambda _: None)
        report = check_uploads(engine, store, progress=lambda _: None)
        if report.errors:
            raise SystemExit(f"check failed: {report.error_rows}")
    checked = time.perf_counter()
    verify_upload(engine, UPLOAD_KEY)
    load = load_verified(engine, store, encoder=encoder, progress=lambda _: None)  # type: ignore[arg-type]
    loaded = time.perf_counter()
    if load.errors or not load.processed:
        raise SystemExit(f"load failed: {load.error_rows}")
    with engine.connect() as conn:
        rows = conn.scalar(sa.text('SELECT count(*) FROM "bench.upload"."L0"'))
    return {
        "rows": rows,
        "check_seconds": checked - started,
        "load_seconds": loaded - checked,
        "seconds": loaded - started,
        "cpu": _cpu(),
        "peak_mb": _peak_mb(),
    }


def child_floor(url: str, workdir: Path) -> dict[str, object]:
    """The database's own share: the rows of the uploaded L0, written out by COPY (not timed),
    COPYed back from that file into a table like L0 (timed), rolled back."""
    engine = sa.create_engine(url)
    dump = workdir / "l0.txt"
    with engine.begin() as conn:
        columns = [
            name
            for name in conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'bench.upload' "
                    "AND table_name = 'L0' AND column_name NOT IN ('id', 'datafile_created') ORDER BY ordinal_position"
                )
            ).scalars()
        ]
        names = ", ".join(f'"{name}"' for name in columns)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with open(dump, "wb") as out:
            cursor.copy_expert(
                f'COPY "bench.upload"."L0" ({names}) TO STDOUT WITH (FORMAT text, NULL \'\')', out
            )
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute('CREATE TABLE "bench.upload"."floor" (LIKE "bench.upload"."L0" INCLUDING DEFAULTS)')
        # As the load fills it (the load drops the default afterwards).
        cursor.execute(
            'ALTER TABLE "bench.upload"."floor" ALTER COLUMN datafile_created SET DEFAULT \'bench.csv\''
        )
        started = time.perf_counter()
        with open(dump, "rb") as source:
            cursor.copy_expert(
                f'COPY "bench.upload"."floor" ({names}) FROM STDIN WITH (FORMAT text, NULL \'\')',
                source,
                1 << 20,
            )
        seconds = time.perf_counter() - started
        rows = cursor.rowcount
        conn.rollback()
    dump.unlink()
    return {"rows": rows, "seconds": seconds, "cpu": _cpu(), "peak_mb": _peak_mb()}


def child_snapshot(url: str, path: Path) -> dict[str, object]:
    from ecr_pipelines.datastore.load import load_file
    from ecr_pipelines.datastore.sources._files import csv_source_rows
    from ecr_pipelines.datastore.sources.spec import Column, FileRows, SourceSpec, blob_prefix

    def read(stream: object, file_name: str) -> FileRows:
        return FileRows(rows=csv_source_rows(stream, file_name, header=NAMES))  # type: ignore[arg-type]

    spec = SourceSpec(
        id="bench.snapshot",
        group="bench.snapshot",
        loading="snapshot",
        schema="bench.snapshot",
        columns=tuple(Column(name, SQL_TYPES[kind]) for name, kind in zip(NAMES, KINDS, strict=True)),
        reader=read,
        blob_prefix=blob_prefix("bench", "snapshot"),
    )
    engine = sa.create_engine(url)
    started = time.perf_counter()
    with open(path, "rb") as stream:
        report = load_file(engine, spec, path.name, stream)
    seconds = time.perf_counter() - started
    if report.status != "loaded":
        raise SystemExit(f"snapshot load failed: {report.error}")
    return {"rows": report.l0_inserted, "seconds": seconds, "cpu": _cpu(), "peak_mb": _peak_mb()}


def child_pandas(url: str, path: Path) -> dict[str, object]:
    import pandas as pd

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA IF NOT EXISTS "bench.pandas"'))
    started = time.perf_counter()
    frame = pd.read_csv(path, na_values=NULL_TOKENS, keep_default_na=False, parse_dates=NAMES[11:15])
    read = time.perf_counter()
    frame.to_sql(
        "L0", engine, schema="bench.pandas", if_exists="replace", index=False, method=None, chunksize=10000
    )
    done = time.perf_counter()
    return {
        "rows": len(frame),
        "read_seconds": read - started,
        "seconds": done - started,
        "cpu": _cpu(),
        "peak_mb": _peak_mb(),
    }


# -- the parent -------------------------------------------------------------------------------------
def _stat(pid: int | str) -> list[str]:
    # The fields after the command name: [0] is field 3 of proc(5), so field n is [n - 3].
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _server_cpu(url: str) -> float:
    """CPU seconds of the database server so far: the postmaster's own and its children's, live
    ones and exited ones (reaped: counted in its cutime/cstime). 0 when it runs elsewhere."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            backend = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        postmaster = int(_stat(backend)[1])
        tick = os.sysconf("SC_CLK_TCK")
        own = _stat(postmaster)
        total = sum(int(value) for value in own[11:15]) / tick
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = _stat(entry.name)
                except OSError:
                    continue
                if int(fields[1]) == postmaster:
                    total += (int(fields[11]) + int(fields[12])) / tick
        return total
    except (OSError, ValueError, IndexError):
        return 0.0
    finally:
        engine.dispose()


def _run_child(which: str, url: str, workdir: Path, path: Path, *extra: str) -> dict[str, object]:
    before = _server_cpu(url)
    command = [sys.executable, __file__, "--child", which, "--url", url, "--workdir", str(workdir)]
    command += ["--file", str(path), *extra]
    done = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, ECR_HOME=str(workdir))
    )
    if done.returncode != 0:
        raise SystemExit(f"{which} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["server_cpu"] = _server_cpu(url) - before
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows of the generated CSV (default 1,000,000)"
    )
    parser.add_argument("--child", choices=("upload", "floor", "snapshot", "pandas"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--encoder", default="text", help=argparse.SUPPRESS)
    parser.add_argument("--no-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "upload":
        print(json.dumps(child_upload(args.url, args.workdir, args.encoder, not args.no_check)), flush=True)
        return
    if args.child == "floor":
        print(json.dumps(child_floor(args.url, args.workdir)), flush=True)
        return
    if args.child == "snapshot":
        print(json.dumps(child_snapshot(args.url, args.file)), flush=True)
        return
    if args.child == "pandas":
        print(json.dumps(child_pandas(args.url, args.file)), flush=True)
        return

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before the run", flush=True)
    with tempfile.TemporaryDirectory(prefix="ecr-bench-load-") as tmp, benchmark_database() as server:
        workdir = Path(tmp)
        path = workdir / "bench.csv"
        started = time.perf_counter()
        size = generate(path, args.rows)
        print(
            f"{args.rows:,} rows x {len(NAMES)} columns ({size / 1e6:.0f} MB) generated in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        from ecr_pipelines.lib.blobstore import LocalBlobStore

        LocalBlobStore(workdir / "blobs").put_file(UPLOAD_KEY, path)
        name = f"ecr_bench_load_{uuid.uuid4().hex[:8]}"
        url = ensure_database(server, name)
        engine = sa.create_engine(url)
        try:
            upgrade(engine)
            engine.dispose()
            upload = _run_child("upload", url, workdir, path)
            reference = _run_child("upload", url, workdir, path, "--encoder", "csv", "--no-check")
            floor = _run_child("floor", url, workdir, path)
            snapshot = _run_child("snapshot", url, workdir, path)
            pandas = _run_child("pandas", url, workdir, path)
        finally:
            engine.dispose()
            admin = sa.create_engine(with_database(server, "postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    baseline = float(pandas["seconds"])  # type: ignore[arg-type]
    print(
        f"{'path':<58} {'seconds':>8} {'rows/s':>9} {'vs (c)':>7} {'CPU s':>6} {'server':>6} {'peak RSS':>9}"
    )

    def line(label: str, figures: dict[str, object], seconds: float, rows: int) -> None:
        print(
            f"{label:<58} {seconds:>8.1f} {rows / seconds:>9,.0f} {baseline / seconds:>6.1f}x"
            f" {float(figures['cpu']):>6.1f} {float(figures['server_cpu']):>6.1f}"  # type: ignore[arg-type]
            f" {float(figures['peak_mb']):>6.0f} MB",  # type: ignore[arg-type]
            flush=True,
        )

    rows = int(upload["rows"])  # type: ignore[call-overload]
    line("(a) upload: check + load (text COPY)", upload, float(upload["seconds"]), rows)  # type: ignore[arg-type]
    line("    the check stage (check_csv)", upload, float(upload["check_seconds"]), rows)  # type: ignore[arg-type]
    line("    the load stage (text COPY into a new L0)", upload, float(upload["load_seconds"]), rows)  # type: ignore[arg-type]
    line(
        "    the load stage with normalised_csv (CSV COPY)",
        reference,
        float(reference["load_seconds"]),  # type: ignore[arg-type]
        int(reference["rows"]),  # type: ignore[call-overload]
    )
    line(
        "    floor: COPY of the same rows from a file, no Python",
        floor,
        float(floor["seconds"]),
        int(floor["rows"]),
    )  # type: ignore[arg-type, call-overload]
    line("(b) snapshot source: load.load_file", snapshot, float(snapshot["seconds"]), int(snapshot["rows"]))  # type: ignore[arg-type, call-overload]
    line("(c) pandas read_csv + to_sql(method=None, chunksize=10000)", pandas, baseline, int(pandas["rows"]))  # type: ignore[call-overload]
    print(f"    of which read_csv {float(pandas['read_seconds']):.1f} s")  # type: ignore[arg-type]
    print(
        f"load average {os.getloadavg()[0]:.2f} after the run; 'CPU s' is the child's, 'server' the "
        "database's meanwhile (0 when it runs elsewhere)"
    )


if __name__ == "__main__":
    main()
