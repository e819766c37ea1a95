"""``snaparchive restore --output`` reads by ranged GETs, several at a time, each retried on its
own (issue 12): a store that resets a connection mid-range, a bucket that is gone, a wrong MD5.
Over the moto server and a streaming proxy."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import Counter

import boto3
import pytest

from tests.fixtures.manifests import put_manifest, put_object
from tests.fixtures.store_proxy import StoreProxy
from worker.cli import main
from worker.reader import CHUNK_SIZE
from worker.units import MiB

pytestmark = pytest.mark.integration

ZONE = "ch-gva-2"


@pytest.fixture
def env(monkeypatch, moto_endpoint, s3_bucket) -> None:
    monkeypatch.setenv("SNAPARCHIVE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("SNAPARCHIVE_S3_BUCKET", s3_bucket)


def folder(snapshot_id: str) -> str:
    return f"snaparchive/exoscale/{ZONE}/{snapshot_id}"


def archive_of(endpoint: str, bucket: str, data: bytes, sizes: tuple[int, ...]) -> str:
    """Store ``data`` as an archive in objects of ``sizes``; return its snapshot id."""
    snapshot_id = str(uuid.uuid4())
    document = put_manifest(
        endpoint,
        bucket,
        f"{folder(snapshot_id)}/manifest.json",
        sizes=sizes,
        md5=hashlib.md5(data).hexdigest(),
    )
    for segment in document["segments"]:
        start = segment["offset"]
        put_object(endpoint, bucket, segment["key"], data[start : start + segment["size"]])
    return snapshot_id


def _size(header: str) -> int:
    first, last = header.removeprefix("bytes=").split("-")
    return int(last) - int(first) + 1


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_reset_mid_range_costs_that_range_only(
    env, capsys, tmp_path, moto_endpoint, s3_bucket, caplog
):
    caplog.set_level(logging.INFO, logger="worker.reader")
    data = os.urandom(3 * CHUNK_SIZE + 12345)
    snapshot_id = archive_of(
        moto_endpoint, s3_bucket, data, (2 * CHUNK_SIZE + 7, len(data) - 2 * CHUNK_SIZE - 7)
    )
    with StoreProxy(moto_endpoint) as proxy:
        proxy.cut_after["/image.seg00000"] = MiB
        proxy.cut_times, proxy.cut_reset = 1, True
        os.environ["SNAPARCHIVE_S3_ENDPOINT"] = proxy.url
        target = tmp_path / "disk.img"
        code = main(["restore", snapshot_id, "--zone", ZONE, "--output", str(target)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert target.read_bytes() == data
    assert os.listdir(tmp_path) == ["disk.img"]
    # Ranged GETs of at most one chunk each; the range that was reset was asked again alone.
    ranges = [(path, r) for path, r in proxy.ranges if "/image" in path]
    assert all(r is not None for _, r in ranges)
    sizes = [_size(r) for _, r in ranges]
    assert max(sizes) == CHUNK_SIZE and len(ranges) == 5 + 1
    [(again, times)] = [(r, n) for r, n in Counter(ranges).items() if n > 1]
    # Whichever of the segment's ranges came first was cut (they run at once).
    assert again[0] == f"/{s3_bucket}/{folder(snapshot_id)}/image.seg00000"
    assert times == 2
    assert "trying again" in caplog.text


def test_a_range_that_keeps_breaking_is_one_line_naming_the_object(
    env, capsys, tmp_path, moto_endpoint, s3_bucket
):
    data = os.urandom(2 * MiB)
    snapshot_id = archive_of(moto_endpoint, s3_bucket, data, (len(data),))
    with StoreProxy(moto_endpoint) as proxy:
        proxy.cut_after["/image"] = MiB
        os.environ["SNAPARCHIVE_S3_ENDPOINT"] = proxy.url
        code = main(["restore", snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "d")])
    _, err = capsys.readouterr()
    assert code == 1
    assert one_line(err).startswith(
        f"snaparchive: error: S3 GetObject {folder(snapshot_id)}/image failed: "
    )
    assert os.listdir(tmp_path) == []


def test_a_wrong_md5_is_exit_status_3_and_no_file(env, capsys, tmp_path, moto_endpoint, s3_bucket):
    snapshot_id = archive_of(moto_endpoint, s3_bucket, b"y" * (MiB + 3), (MiB + 3,))
    put_object(moto_endpoint, s3_bucket, f"{folder(snapshot_id)}/image", b"z" * (MiB + 3))
    code = main(["restore", snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "d")])
    _, err = capsys.readouterr()
    assert code == 3
    assert one_line(err).startswith("snaparchive: verification failed: md5 mismatch: expected ")
    assert os.listdir(tmp_path) == []


def test_a_bucket_that_is_gone_is_one_line_naming_the_manifest(
    env, capsys, tmp_path, moto_endpoint, s3_bucket
):
    snapshot_id = archive_of(moto_endpoint, s3_bucket, b"x" * 10, (10,))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for key in (f"{folder(snapshot_id)}/manifest.json", f"{folder(snapshot_id)}/image"):
        s3.delete_object(Bucket=s3_bucket, Key=key)
    s3.delete_bucket(Bucket=s3_bucket)
    code = main(["restore", snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "d")])
    _, err = capsys.readouterr()
    assert code == 1
    assert one_line(err).startswith(
        f"snaparchive: error: cannot read the manifest {folder(snapshot_id)}/manifest.json: "
        "S3 GetObject failed: HTTP 404 NoSuchBucket"
    )
    assert os.listdir(tmp_path) == []


def test_stdout_gets_the_image_read_in_ranges(env, capfdbinary, moto_endpoint, s3_bucket):
    data = os.urandom(CHUNK_SIZE + 99)
    snapshot_id = archive_of(moto_endpoint, s3_bucket, data, (len(data),))
    code = main(["restore", snapshot_id, "--zone", ZONE, "--output", "-"])
    out, err = capfdbinary.readouterr()
    assert code == 0, err
    assert out == data
