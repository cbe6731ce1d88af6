"""Object storage: S3 (through dagster-aws / boto3) in production, a local folder by default.

Both back ends offer the same small interface, and every method streams: nothing here reads a
whole object into memory unless the caller asks for bytes. Keys are ``/``-separated relative
paths such as ``iati/source/<hash>.xml``.
"""

import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO
from urllib.parse import urlparse

from ecr_pipelines.lib.settings import ecr_home

CHUNK = 1024 * 1024


class BlobNotFound(KeyError):
    """No object under that key."""


class BlobKeyError(ValueError):
    """A key that would escape the store (absolute, ``..``, empty)."""


def check_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise BlobKeyError(f"invalid blob key {key!r}")
    return str(path)


class _CountingReader:
    """Wraps a readable stream and counts what passed through (for sizes of streamed uploads)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


class BlobStore(ABC):
    """What every stage needs from object storage."""

    @abstractmethod
    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> int:
        """Store everything readable from ``stream`` under ``key``; return the byte count.

        The object appears whole or not at all: a failing stream leaves any previous object.
        """

    @abstractmethod
    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """A readable stream of the object."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in lexical order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None: ...

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """Where the object (or, without a key, the store) lives, for metadata and messages."""

    def presigned_url(self, key: str, seconds: int) -> str | None:
        """A URL anyone may GET the object from for ``seconds``; None when the store has none
        (a local folder: the caller builds a link from its own template)."""
        return None

    def put_bytes(
        self, key: str, data: bytes, content_type: str | None = None, *, atomic: bool = True
    ) -> int:
        """Store ``data``. ``atomic=False`` allows a store to skip what makes a write all-or-nothing
        (a local folder writes in place instead of renaming a temporary file): only for keys that
        nothing reads until the writer says they are complete."""
        import io

        return self.put_stream(key, io.BytesIO(data), content_type)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> int:
        with open(path, "rb") as fh:
            return self.put_stream(key, fh, content_type)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def download_to(self, key: str, path: str | Path) -> int:
        with self.open(key) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            return dst.tell()

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)


INCOMING = ".incoming"
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


class LocalBlobStore(BlobStore):
    """A folder on disk; writes go to a temporary file and are renamed into place.

    Temporary files live in ``<root>/.incoming/<pid>-...`` (same file system, so the rename is
    atomic), never beside the blobs: a process killed mid-write leaves nothing in the key space,
    and the next store opened on the folder removes what dead processes left in ``.incoming``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(exist_ok=True)
        from ecr_pipelines.lib.scratch import sweep

        sweep(self.incoming)

    def __reduce__(self) -> tuple[Any, ...]:
        # A worker process opens the same folder (and sweeps what dead writers left).
        return (LocalBlobStore, (str(self.root),))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(
        self, key: str, data: bytes, content_type: str | None = None, *, atomic: bool = True
    ) -> int:
        if atomic:
            return super().put_bytes(key, data, content_type)
        # In place: a file creation costs half of a temporary file plus a rename, and a store of
        # many small blobs (the activity lake) is bound by exactly that.
        target = os.path.join(self.root, check_key(key))
        try:
            handle = open(target, "wb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            handle = open(target, "wb")  # noqa: SIM115
        with handle:
            return handle.write(data)

    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.incoming, prefix=f"{os.getpid()}-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
                written = out.tell()
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return written

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115 - closed by the `with` below
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        with fh:
            yield fh

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the folder the prefix names, then filter the last, partial component.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return
        keys = []
        for dirpath, dirs, files in os.walk(start):
            if Path(dirpath) == self.root and INCOMING in dirs:
                dirs.remove(INCOMING)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def copy(self, src: str, dst: str) -> None:
        with self.open(src) as fh:
            self.put_stream(dst, fh)

    def uri(self, key: str = "") -> str:
        return (self._path(key) if key else self.root).as_uri()


# An S3 store's endpoint and region, when its maker does not say: what its client was built with.
_ASK_CLIENT: Any = object()


class S3BlobStore(BlobStore):
    """A bucket (and optional key prefix) on S3 or an S3-compatible server.

    Picklable: a worker process gets a store on the same bucket and prefix with a client of its
    own (same endpoint and region, credentials from boto3's default chain); a client cannot be
    shared across processes. ``endpoint_url`` / ``region`` are what the client was built with
    (None: AWS's own endpoint); unless given, what the client says.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: object,
        *,
        endpoint_url: Any = _ASK_CLIENT,
        region: Any = _ASK_CLIENT,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        meta = getattr(client, "meta", None)
        self.endpoint_url: str | None = (
            getattr(meta, "endpoint_url", None) if endpoint_url is _ASK_CLIENT else endpoint_url
        )
        self.region: str | None = getattr(meta, "region_name", None) if region is _ASK_CLIENT else region
        self._signer: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_s3_store, (self.bucket, self.prefix, self.endpoint_url, self.region))

    def _key(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def put_stream(self, key: str, stream: IO[bytes], content_type: str | None = None) -> int:
        counting = _CountingReader(stream)
        extra = {"ContentType": content_type} if content_type else {}
        # upload_fileobj streams in parts (multipart above 8 MiB) and aborts the upload on error,
        # so a failed stream never leaves a partial object.
        self.client.upload_fileobj(counting, self.bucket, self._key(key), ExtraArgs=extra or None)
        return counting.count

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise BlobNotFound(key) from None
        try:
            yield body
        finally:
            body.close()

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise BlobNotFound(key)
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield self._strip(item["Key"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        # One request per 1,000 keys instead of one per key.
        count = 0
        batch: list[dict[str, str]] = []
        for key in self.list(prefix):
            batch.append({"Key": self._key(key)})
            if len(batch) == 1000:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                count += len(batch)
                batch = []
        if batch:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            count += len(batch)
        return count

    def copy(self, src: str, dst: str) -> None:
        if not self.exists(src):
            raise BlobNotFound(src)
        # The managed copy is server-side and switches to multipart copy for large objects.
        self.client.copy({"Bucket": self.bucket, "Key": self._key(src)}, self.bucket, self._key(dst))

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key) if key else self.prefix}"

    def presigned_url(self, key: str, seconds: int) -> str | None:
        # Signature V4, which every region accepts (boto3 presigns V2 by default); its URLs live at
        # most 7 days. The signing client has the store client's endpoint and region, and its
        # credentials from the same standard chain (the store's client is built from it too).
        if self._signer is None:
            import boto3
            from botocore.config import Config

            meta = self.client.meta
            self._signer = boto3.client(
                "s3",
                endpoint_url=meta.endpoint_url,
                region_name=meta.region_name,
                config=meta.config.merge(Config(signature_version="s3v4")),
            )
        return self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=max(1, min(int(seconds), MAX_PRESIGNED_SECONDS)),
        )


def _s3_store(bucket: str, prefix: str, endpoint_url: str | None, region: str | None) -> S3BlobStore:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1")
    return S3BlobStore(bucket, prefix, client, endpoint_url=endpoint_url, region=region)


def open_blob_store(
    url: str | None, s3_endpoint_url: str | None = None, region: str | None = None, s3_client: Any = None
) -> BlobStore:
    """The store a ``BLOB_STORE_URL`` names: ``s3://bucket/prefix``, ``file:///path``, a path, or the default."""
    if not url:
        return LocalBlobStore(ecr_home() / "blobs")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError("BLOB_STORE_URL s3:// needs a bucket: s3://bucket/prefix")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3", endpoint_url=s3_endpoint_url, region_name=region or "us-east-1")
        return S3BlobStore(
            parsed.netloc, parsed.path, s3_client, endpoint_url=s3_endpoint_url, region=region or "us-east-1"
        )
    if parsed.scheme == "file":
        return LocalBlobStore(parsed.path)
    if parsed.scheme == "":
        return LocalBlobStore(url)
    raise ValueError(f"BLOB_STORE_URL must be s3://, file:// or a path, not {parsed.scheme}://")
