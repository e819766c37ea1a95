"""``snaparchive restore`` on damaged archives, a misbehaving store and bad output paths:
one line, the right exit status, nothing left behind. Over the moto server (and a proxy)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fixtures.manifests import manifest_document, put_manifest, put_object
from tests.fixtures.store_proxy import StoreProxy
from worker.cli import main
from worker.units import MiB

pytestmark = pytest.mark.integration

ZONE = "ch-gva-2"
SNAPARCHIVE = str(Path(sys.executable).with_name("snaparchive"))


@pytest.fixture
def env(monkeypatch, moto_endpoint, s3_bucket) -> dict[str, str]:
    values = {
        "SNAPARCHIVE_S3_ENDPOINT": moto_endpoint,
        "SNAPARCHIVE_S3_BUCKET": s3_bucket,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def folder(snapshot_id: str) -> str:
    return f"snaparchive/exoscale/{ZONE}/{snapshot_id}"


def make_archive(endpoint: str, bucket: str, sizes: tuple[int, ...] = (3,)) -> str:
    """Store an archive of ``x`` bytes in objects of ``sizes``; return its snapshot id."""
    snapshot_id = str(uuid.uuid4())
    document = put_manifest(endpoint, bucket, f"{folder(snapshot_id)}/manifest.json", sizes=sizes)
    for segment in document["segments"]:
        put_object(endpoint, bucket, segment["key"], b"x" * segment["size"])
    return snapshot_id


def restore(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["restore", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """Return the one line of ``err`` that is not a progress line (``[###   ] ...``)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_segmented_archive_is_restored_owner_only(
    env, capsys, tmp_path, moto_endpoint, s3_bucket
):
    snapshot_id = make_archive(moto_endpoint, s3_bucket, sizes=(MiB, MiB, 5))
    target = tmp_path / "disk.img"
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", str(target))
    assert code == 0, err
    assert target.read_bytes() == b"x" * (2 * MiB + 5)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["disk.img"]
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--verify")
    assert code == 0 and "verified in place" in err


def test_a_missing_object_is_one_line_naming_it(env, capsys, tmp_path, moto_endpoint, s3_bucket):
    snapshot_id = make_archive(moto_endpoint, s3_bucket, sizes=(MiB, 5))
    import boto3

    gone = f"{folder(snapshot_id)}/image.seg00001"
    boto3.client("s3", endpoint_url=moto_endpoint).delete_object(Bucket=s3_bucket, Key=gone)
    target = tmp_path / "disk.img"
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", str(target))
    # A store error, one line naming the object: exit status 1 (no bytes failed a check).
    assert code == 1
    assert one_line(err) == (
        f"snaparchive: error: {gone}: missing from the store, though the manifest lists it"
    )
    assert os.listdir(tmp_path) == []  # no image, no temporary file
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--verify")
    assert code == 1 and gone in one_line(err)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "segment 0 key '' is not"),
        ("tenant-b/exoscale/ch-gva-2/secret/image", "segment 0 key 'tenant-b/"),
        ("snaparchive/exoscale/ch-gva-2/../../tenant-b/image", "segment 0 key"),
    ],
    ids=["empty", "another tenant's", "climbing out"],
)
def test_a_manifest_with_a_foreign_or_malformed_key_is_refused(
    env, capsys, tmp_path, moto_endpoint, s3_bucket, key, problem
):
    snapshot_id = str(uuid.uuid4())
    manifest_key = f"{folder(snapshot_id)}/manifest.json"
    document = manifest_document(manifest_key)
    document["segments"][0]["key"] = key
    put_object(moto_endpoint, s3_bucket, manifest_key, document)
    put_object(moto_endpoint, s3_bucket, "tenant-b/exoscale/ch-gva-2/secret/image", b"xxx")
    code, out, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", "-")
    assert code == 3 and out == ""
    line = one_line(err)
    assert line.startswith(f"snaparchive: verification failed: malformed manifest {manifest_key}: ")
    assert problem in line


def test_a_manifest_of_another_snapshot_is_refused(env, capsys, moto_endpoint, s3_bucket):
    other = make_archive(moto_endpoint, s3_bucket)
    snapshot_id = str(uuid.uuid4())
    # A copy of another archive's manifest: it names that snapshot and its objects.
    document = manifest_document(f"{folder(other)}/manifest.json")
    put_object(moto_endpoint, s3_bucket, f"{folder(snapshot_id)}/manifest.json", document)
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--verify")
    assert code == 3
    assert f"snapshot_id '{other}' is not its key's '{snapshot_id}'" in one_line(err)


def test_an_archive_without_segments_is_refused(env, capsys, moto_endpoint, s3_bucket):
    snapshot_id = str(uuid.uuid4())
    put_manifest(moto_endpoint, s3_bucket, f"{folder(snapshot_id)}/manifest.json", segments=[])
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--verify")
    assert code == 3 and one_line(err).endswith(": no segments")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (".", "is a directory"),
        ("..", "is a directory"),
        ("{tmp}", "is a directory"),
        ("{tmp}/", "is a directory"),
        ("{tmp}/missing/disk.img", "directory {tmp}/missing does not exist"),
        ("{tmp}/file/disk.img", "{tmp}/file is not a directory"),
        ("/dev/null", "is not a regular file (write to a device or pipe with --output -)"),
    ],
)
def test_a_bad_output_path_is_a_usage_error_found_before_reading(
    env, capsys, tmp_path, moto_endpoint, s3_bucket, output, problem
):
    snapshot_id = make_archive(moto_endpoint, s3_bucket)
    (tmp_path / "file").write_bytes(b"not a directory")
    output = output.format(tmp=tmp_path)
    # A store nobody answers at: reading anything would be a different error.
    os.environ["SNAPARCHIVE_S3_ENDPOINT"] = "http://127.0.0.1:9"
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", output)
    assert code == 2
    assert one_line(err) == f"snaparchive: error: --output {output}: {problem.format(tmp=tmp_path)}"
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_planted_partial_symlink_is_not_followed(env, capsys, tmp_path, moto_endpoint, s3_bucket):
    snapshot_id = make_archive(moto_endpoint, s3_bucket)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / ".disk.img.partial").symlink_to(victim)
    code, _, err = restore(
        capsys, snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "disk.img")
    )
    assert code == 1
    assert "already exists" in one_line(err)
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / ".disk.img.partial").is_symlink()  # not ours: left alone
    assert not (tmp_path / "disk.img").exists()


def test_a_store_refusing_an_object_is_one_line(env, capsys, tmp_path, moto_endpoint, s3_bucket):
    snapshot_id = make_archive(moto_endpoint, s3_bucket, sizes=(MiB, 5))
    with StoreProxy(moto_endpoint) as proxy:
        proxy.deny.add("/image.seg00001")
        os.environ["SNAPARCHIVE_S3_ENDPOINT"] = proxy.url
        code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "d"))
    assert code == 1
    line = one_line(err)
    assert line.startswith(
        f"snaparchive: error: S3 GetObject {folder(snapshot_id)}/image.seg00001 failed: "
        "HTTP 403 AccessDenied ("
    )
    assert os.listdir(tmp_path) == []


def test_a_connection_cut_mid_object_is_one_line(env, capsys, tmp_path, moto_endpoint, s3_bucket):
    snapshot_id = make_archive(moto_endpoint, s3_bucket, sizes=(2 * MiB,))
    with StoreProxy(moto_endpoint) as proxy:
        proxy.cut_after["/image"] = MiB
        os.environ["SNAPARCHIVE_S3_ENDPOINT"] = proxy.url
        code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "d"))
    assert code == 1
    line = one_line(err)
    assert line.startswith(f"snaparchive: error: S3 GetObject {folder(snapshot_id)}/image failed")
    assert os.listdir(tmp_path) == []


def test_an_object_longer_than_the_manifest_says_is_refused(
    env, capsys, tmp_path, moto_endpoint, s3_bucket
):
    snapshot_id = make_archive(moto_endpoint, s3_bucket, sizes=(5,))
    put_object(moto_endpoint, s3_bucket, f"{folder(snapshot_id)}/image", b"x" * (3 * MiB))
    code, _, err = restore(capsys, snapshot_id, "--zone", ZONE, "--output", str(tmp_path / "d"))
    assert code == 3
    assert one_line(err) == (
        f"snaparchive: verification failed: {folder(snapshot_id)}/image: stored {3 * MiB} bytes, "
        "the manifest says 5"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_stdout_gets_the_image_and_a_reader_that_leaves_gets_one_line(
    env, moto_endpoint, s3_bucket, unbuffered
):
    # Unbuffered, stdout takes part of a write when the pipe's reader leaves mid-way.
    env = {**env, "PYTHONUNBUFFERED": unbuffered}
    snapshot_id = make_archive(moto_endpoint, s3_bucket, sizes=(3 * MiB,))
    argv = [SNAPARCHIVE, "restore", snapshot_id, "--zone", ZONE, "--output", "-"]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert hashlib.md5(done.stdout).hexdigest() == hashlib.md5(b"x" * 3 * MiB).hexdigest()
    # A reader that stops early (``| head -c 1``).
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(1) == b"x"
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert one_line(err) == "snaparchive: error: cannot write stdout: Broken pipe"
