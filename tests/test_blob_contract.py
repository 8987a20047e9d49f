"""The BlobStore contract, run against every backend: memory, local folder, Azure Blob (Azurite)
and S3 (SeaweedFS), the last two real servers started by the fixtures."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from dicomhub.errors import InvalidRequest, NotFound, Unavailable
from dicomhub.storage.urls import open_blobs

THRESHOLD = 6 * 1024 * 1024  # objects above it go up in parts on object storage


@pytest.fixture(params=["memory", "file", "azurite", "seaweedfs"])
def blobs(request, tmp_path):
    if request.param == "memory":
        url = "memory://"
    elif request.param == "file":
        url = f"file://{tmp_path / 'blobs'}"
    else:
        url = request.getfixturevalue(request.param).blob_url()
    store = open_blobs(url, multipart_threshold=THRESHOLD)
    asyncio.run(store.start())
    return store


def put(store, tmp_path: Path, key: str, data: bytes) -> Path:
    local = tmp_path / f"upload-{os.urandom(4).hex()}"
    local.write_bytes(data)
    asyncio.run(store.put(key, local))
    return local


async def collect(stream) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_put_read_ranges_and_stream(blobs, tmp_path):
    data = os.urandom(100_000)
    local = put(blobs, tmp_path, "ab/0001_1.dcm", data)
    assert not local.exists()  # the store took the file over
    assert asyncio.run(blobs.read("ab/0001_1.dcm")) == data
    assert asyncio.run(blobs.read("ab/0001_1.dcm", 10, 20)) == data[10:30]
    assert asyncio.run(blobs.read("ab/0001_1.dcm", 99_990)) == data[99_990:]
    assert asyncio.run(blobs.read("ab/0001_1.dcm", 5, 0)) == b""
    assert asyncio.run(collect(blobs.stream("ab/0001_1.dcm", chunk_size=4096))) == data
    ranged = asyncio.run(collect(blobs.stream("ab/0001_1.dcm", 1000, 50_000, chunk_size=8192)))
    assert ranged == data[1000:51_000]
    assert asyncio.run(collect(blobs.stream("ab/0001_1.dcm", 99_000))) == data[99_000:]


def test_conditional_create_never_overwrites(blobs, tmp_path):
    put(blobs, tmp_path, "cd/0002_2.dcm", b"first")
    with pytest.raises(Unavailable, match="already exists"):
        put(blobs, tmp_path, "cd/0002_2.dcm", b"second")
    assert asyncio.run(blobs.read("cd/0002_2.dcm")) == b"first"


def test_put_bytes(blobs):
    """Bytes in memory go in without a local file, and never over an existing object either."""
    data = os.urandom(70_000)
    asyncio.run(blobs.put("gh/0004_4.dcm", data))
    assert asyncio.run(blobs.read("gh/0004_4.dcm")) == data
    with pytest.raises(Unavailable, match="already exists"):
        asyncio.run(blobs.put("gh/0004_4.dcm", b"other"))
    assert asyncio.run(blobs.read("gh/0004_4.dcm")) == data


def test_large_object_in_parts(blobs, tmp_path):
    data = os.urandom(THRESHOLD + 5 * 1024 * 1024)
    put(blobs, tmp_path, "ef/0003_3.dcm", data)
    assert asyncio.run(blobs.read("ef/0003_3.dcm")) == data
    boundary = 8 * 1024 * 1024  # a part boundary on object storage
    piece = asyncio.run(blobs.read("ef/0003_3.dcm", boundary - 100, 200))
    assert piece == data[boundary - 100 : boundary + 100]
    with pytest.raises(Unavailable, match="already exists"):
        put(blobs, tmp_path, "ef/0003_3.dcm", data[:10] + os.urandom(THRESHOLD))
    assert asyncio.run(blobs.read("ef/0003_3.dcm", 0, 10)) == data[:10]


def test_missing_and_delete(blobs, tmp_path):
    with pytest.raises(NotFound):
        asyncio.run(blobs.read("00/missing.dcm"))
    with pytest.raises(NotFound):
        asyncio.run(collect(blobs.stream("00/missing.dcm")))
    asyncio.run(blobs.delete("00/missing.dcm"))  # not an error
    put(blobs, tmp_path, "gh/0004_4.dcm", b"gone soon")
    asyncio.run(blobs.delete("gh/0004_4.dcm"))
    with pytest.raises(NotFound):
        asyncio.run(blobs.read("gh/0004_4.dcm"))


def test_many_at_once_and_local_files(blobs, tmp_path):
    """A study's objects fetched together; local files (the file store only) for the kernel to
    send."""
    data = [os.urandom(n) for n in (10, 70_000, 3)]
    keys = [f"ij/000{n}_5.dcm" for n in range(len(data))]
    for key, value in zip(keys, data, strict=True):
        put(blobs, tmp_path, key, value)
    assert asyncio.run(blobs.read_many(keys)) == data
    assert asyncio.run(blobs.read_many([])) == []
    with pytest.raises(NotFound):
        asyncio.run(blobs.read_many([keys[0], "00/missing.dcm"]))
    files = asyncio.run(blobs.open_local(keys))
    assert (files is not None) == (blobs.__class__.__name__ == "FileBlobStore")
    if files is not None:
        for f, value in zip(files, data, strict=True):
            with f:
                assert f.read() == value
        assert asyncio.run(blobs.open_local([])) == []
        with pytest.raises(NotFound):
            asyncio.run(blobs.open_local([keys[0], "00/missing.dcm"]))


def test_check(blobs):
    asyncio.run(blobs.check())


@pytest.mark.parametrize("component", ["azurite", "seaweedfs"])
def test_unreachable_object_store_is_unavailable(request, component):
    store = request.getfixturevalue(component)
    url = store.blob_url()
    port = url.split("127.0.0.1:")[1].split("/")[0].split("&")[0]
    down = open_blobs(url.replace(f"127.0.0.1:{port}", "127.0.0.1:9"))
    started = time.monotonic()
    with pytest.raises(Unavailable) as failure:
        asyncio.run(down.check())
    assert failure.value.dependency == "blob store"
    assert time.monotonic() - started < 20  # a fast 503, not minutes of retries


def test_missing_bucket_fails_the_check(seaweedfs):
    url = seaweedfs.blob_url().replace("s3://dicom/", "s3://no-such-bucket/")
    with pytest.raises(Unavailable):
        asyncio.run(open_blobs(url).check())


@pytest.mark.parametrize(
    "url",
    ["s3://bucket/p?no_such_option=1", "ftp://host/x", "s3:///no-bucket"],
)
def test_bad_blob_urls(url):
    with pytest.raises(InvalidRequest):
        open_blobs(url)


@pytest.mark.parametrize(
    "url",
    [
        "gs://bucket/prefix",
        "az://container/prefix?account_name=acct",
        "s3://bucket?region=eu-west-1",
    ],
)
def test_object_store_urls(url):
    """Every object store is configured from its URL (GCS runs on the same obstore code path as
    the S3 and Azure stores tested above; no GCS server can run here)."""
    from dicomhub.storage.object_blobs import ObjectBlobStore

    assert isinstance(open_blobs(url), ObjectBlobStore)
