"""Streaming download throughput: stand-in server → shared HTTP client → local blob store.

Prints MB/s and the peak RSS growth while a 200 MB body streams through, to show downloads
never hold a whole file in memory.
"""

import resource
import sys
import tempfile
import time

from ecr_pipelines.dev.standins import Reply, StandInServer
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.http import download_to_blob, make_session

SIZE_MB = 200


def main() -> None:
    body = b"<iati-activity>" + b"x" * (1024 * 1024 - 32) + b"</iati-activity>\n"
    payload = body * SIZE_MB  # held once by the server thread, like an upstream's disk
    with StandInServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.route(
            "/big.xml", handler=lambda _req: Reply(200, payload, {"Content-Type": "application/xml"})
        )
        store = LocalBlobStore(tmp)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = download_to_blob(make_session(), server.url("/big.xml"), store, "big.xml", max_bytes=10**9)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"downloaded {result.size / 1e6:.0f} MB in {seconds:.2f} s: {result.size / 1e6 / seconds:.0f} MB/s")
    print(
        f"peak RSS growth during the download: {(peak - before) / 1024:.1f} MB (body held by the server: {len(payload) / 1e6:.0f} MB)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
