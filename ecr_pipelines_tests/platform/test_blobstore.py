"""The same contract against the local folder and against S3 (moto's server on loopback)."""

import hashlib
import io
from pathlib import Path

import pytest

from ecr_pipelines.lib.blobstore import (
    BlobKeyError,
    BlobNotFound,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
)
from ecr_pipelines.resources import BlobStoreResource


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> BlobStore:
    resource: BlobStoreResource = request.getfixturevalue(f"{request.param}_blobs")
    return resource.store


class _Generated(io.RawIOBase):
    """``size`` pseudo-random bytes produced on demand, so the test never holds them all."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.digest = hashlib.sha1()
        self.block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        n = min(len(buffer), self.left, len(self.block))
        buffer[:n] = self.block[:n]
        self.digest.update(self.block[:n])
        self.left -= n
        return n


class _Failing(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        raise OSError("upstream went away")


def test_put_get_exists_size_delete(store: BlobStore) -> None:
    assert not store.exists("a/b.txt")
    assert store.put_bytes("a/b.txt", b"hello") == 5
    assert store.exists("a/b.txt")
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.size("a/b.txt") == 5
    store.put_bytes("a/b.txt", b"replaced")
    assert store.get_bytes("a/b.txt") == b"replaced"
    store.delete("a/b.txt")
    store.delete("a/b.txt")  # deleting twice is fine
    assert not store.exists("a/b.txt")
    with pytest.raises(BlobNotFound):
        store.get_bytes("a/b.txt")
    with pytest.raises(BlobNotFound):
        store.size("a/b.txt")


def test_streams_in_and_out_without_whole_objects(store: BlobStore, tmp_path: Path) -> None:
    source = _Generated(12 * 1024 * 1024 + 17)  # above S3's 8 MiB multipart threshold
    assert store.put_stream("big/file.bin", io.BufferedReader(source)) == 12 * 1024 * 1024 + 17
    digest = hashlib.sha1()
    with store.open("big/file.bin") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == source.digest.hexdigest()
    assert store.download_to("big/file.bin", tmp_path / "copy.bin") == 12 * 1024 * 1024 + 17


def test_a_failing_stream_keeps_the_previous_object(store: BlobStore) -> None:
    store.put_bytes("keep.txt", b"old")
    with pytest.raises(OSError):
        store.put_stream("keep.txt", io.BufferedReader(_Failing()))
    assert store.get_bytes("keep.txt") == b"old"
    assert list(store.list("keep")) == ["keep.txt"]  # no temporary leftovers


def test_list_by_prefix_copy_and_delete_prefix(store: BlobStore) -> None:
    for key in ["lake/d1/a.xml", "lake/d1/a.json", "lake/d2/b.xml", "lake/d10/c.xml", "clean/x.xml"]:
        store.put_bytes(key, key.encode())
    assert list(store.list("lake/d1/")) == ["lake/d1/a.json", "lake/d1/a.xml"]
    assert list(store.list("lake/d1")) == ["lake/d1/a.json", "lake/d1/a.xml", "lake/d10/c.xml"]
    assert len(list(store.list(""))) == 5
    store.copy("clean/x.xml", "source/x.xml")
    assert store.get_bytes("source/x.xml") == b"clean/x.xml"
    with pytest.raises(BlobNotFound):
        store.copy("missing.xml", "other.xml")
    assert store.delete_prefix("lake/d1/") == 2
    assert list(store.list("lake/")) == ["lake/d10/c.xml", "lake/d2/b.xml"]


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b"])
def test_keys_cannot_escape_the_store(store: BlobStore, key: str) -> None:
    with pytest.raises(BlobKeyError):
        store.put_bytes(key, b"x")


def test_urls_choose_the_back_end(tmp_path: Path, s3_endpoint: str) -> None:
    assert isinstance(BlobStoreResource(url=str(tmp_path)).store, LocalBlobStore)
    assert isinstance(BlobStoreResource(url=f"file://{tmp_path}").store, LocalBlobStore)
    s3 = BlobStoreResource(url="s3://bucket/some/prefix", s3_endpoint_url=s3_endpoint).store
    assert isinstance(s3, S3BlobStore) and s3.uri("k") == "s3://bucket/some/prefix/k"
    with pytest.raises(ValueError, match="s3://"):
        BlobStoreResource(url="gs://bucket").store  # noqa: B018


def test_non_atomic_puts_store_the_same_bytes(store: BlobStore) -> None:
    # The activity lake's writes: in place on a local folder, a plain PUT on S3.
    assert store.put_bytes("lake/doc/a.xml", b"<a/>", "application/xml", atomic=False) == 4
    assert store.put_bytes("lake/doc/a.xml", b"<b></b>", "application/xml", atomic=False) == 7
    assert store.get_bytes("lake/doc/a.xml") == b"<b></b>"
    assert list(store.list("lake/")) == ["lake/doc/a.xml"]
