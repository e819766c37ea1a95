"""``snaparchive restore … --genesis-region``: an archived qcow2 becomes a Genesis Cloud snapshot.

Over real sockets: the archive in moto, the job store in Redis, a fake Genesis Cloud that
downloads the presigned URL, decompresses it and checks size and MD5 before it says
``created``; in this process (``--local``) and through a ``snaparchive worker``."""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest

from tests.fixtures.qcow2 import qemu_image, qemu_img, store_as_archive, to_raw
from tests.integration.pipeline_env import cli, forget_queue, worker_process
from worker.archive import ArchiveStore
from worker.convert.manifest import RAW_IMAGE_NAME, RAW_MANIFEST_NAME
from worker.settings import S3Settings
from worker.units import MiB

pytestmark = pytest.mark.integration

ZONE = "ch-gva-2"
REGION = "NORD-NO-KRS-1"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def env(moto_endpoint, s3_bucket, genesis_api):
    values = {k: v for k, v in os.environ.items() if not k.startswith(("SNAPARCHIVE_", "EXO"))}
    values.update(
        SNAPARCHIVE_S3_ENDPOINT=moto_endpoint,
        SNAPARCHIVE_S3_BUCKET=s3_bucket,
        SNAPARCHIVE_REDIS_URL=REDIS_URL,
        SNAPARCHIVE_BROKER_URL=REDIS_URL,
        SNAPARCHIVE_PART_SIZE="5MiB",
        SNAPARCHIVE_QUEUE=f"test-{uuid.uuid4().hex[:12]}",
        GENESISCLOUD_TOKEN=genesis_api.token,
        GENESISCLOUD_API_ENDPOINT=genesis_api.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield values
    forget_queue(values)


async def archived(moto_endpoint, s3_bucket, image: bytes) -> str:
    """Store ``image`` as the archive of a new snapshot; return its id."""
    snapshot_id = str(uuid.uuid4())
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    async with ArchiveStore(S3Settings(endpoint=moto_endpoint, bucket=s3_bucket)) as store:
        await store_as_archive(store, client, image, snapshot_id)
    return snapshot_id


def restore(env, snapshot_id: str, *extra: str, timeout: float = 180):
    return cli(
        env,
        "-v",
        "restore",
        snapshot_id,
        "--zone",
        ZONE,
        "--genesis-region",
        REGION,
        *extra,
        timeout=timeout,
    )


async def test_local_restore_creates_a_verified_genesis_snapshot(
    env, genesis_api, moto_endpoint, s3_bucket, tmp_path
):
    path = qemu_image(tmp_path, "disk", 24 * MiB + 1536, compress="zstd")
    expected = to_raw(path, tmp_path / "disk.raw")
    import hashlib

    raw_md5 = hashlib.md5(expected).hexdigest()
    snapshot_id = await archived(moto_endpoint, s3_bucket, path.read_bytes())
    genesis_api.expect_md5["restored-disk"] = raw_md5

    done = restore(env, snapshot_id, "--name", "restored-disk", "--local", "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (created,) = genesis_api.created
    (genesis_id,) = genesis_api.imports
    assert result == {
        "provider": "genesiscloud",
        "region": REGION,
        "snapshot_id": genesis_id,
        "name": "restored-disk",
        "status": "created",
        "raw_size": len(expected),
        "raw_md5": raw_md5,
        "source": {
            "zone": ZONE,
            "snapshot_id": snapshot_id,
            "manifest": f"snaparchive/exoscale/{ZONE}/{snapshot_id}/manifest.json",
        },
    }
    imported = genesis_api.imports[genesis_id]
    assert (imported.raw_size, imported.raw_md5, imported.compressed) == (
        len(expected),
        raw_md5,
        True,
    )
    assert created["size"] == 1 and created["region"] == REGION
    url = created["url"]
    assert f"/{RAW_IMAGE_NAME}?" in url and "Signature=" in url
    signature = url.partition("?")[2]
    assert signature not in done.stdout + done.stderr  # never logged, not even with -v
    keys = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=s3_bucket)
    names = {item["Key"].rpartition("/")[2] for item in keys["Contents"]}
    assert {RAW_IMAGE_NAME, RAW_MANIFEST_NAME} <= names

    # Restored again: the verified raw image is reused, and a second snapshot made.
    again = restore(env, snapshot_id, "--name", "second", "--local", "--json")
    assert again.returncode == 0, again.stderr
    assert "reusing" in again.stderr
    assert len(genesis_api.created) == 2


async def test_genesis_error_is_one_line_and_exit_1(
    env, genesis_api, moto_endpoint, s3_bucket, tmp_path
):
    path = qemu_image(tmp_path, "disk", 8 * MiB)
    snapshot_id = await archived(moto_endpoint, s3_bucket, path.read_bytes())
    genesis_api.expect_md5["broken"] = "0" * 32  # the fake's import then ends in error

    done = restore(env, snapshot_id, "--name", "broken", "--local", "--json")

    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["status"] == "failed"
    assert "ended in error" in result["error"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("snaparchive: error")]
    assert len(errors) == 1 and "ended in error" in errors[0]
    assert "Traceback" not in done.stderr


async def test_an_image_with_a_backing_file_is_refused_before_any_upload(
    env, genesis_api, moto_endpoint, s3_bucket, tmp_path
):
    base = tmp_path / "base.qcow2"
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    qemu_img("create", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay), "16M")
    snapshot_id = await archived(moto_endpoint, s3_bucket, overlay.read_bytes())

    done = restore(env, snapshot_id, "--name", "overlay", "--local")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "snaparchive: error: cannot convert this qcow2 image to a raw disk: it has a backing file"
    )
    assert genesis_api.created == []
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [key for key in keys if RAW_IMAGE_NAME in key]


def test_usage_and_configuration_errors_exit_2_or_1(env):
    snapshot_id = str(uuid.uuid4())
    no_name = restore(env, snapshot_id, "--local")
    assert no_name.returncode == 2 and "--name" in no_name.stderr
    without_token = {k: v for k, v in env.items() if k != "GENESISCLOUD_TOKEN"}
    no_token = restore(without_token, snapshot_id, "--name", "x", "--local")
    assert no_token.returncode == 2 and "GENESISCLOUD_TOKEN" in no_token.stderr
    missing = restore(env, snapshot_id, "--name", "x", "--local")
    assert missing.returncode == 1 and "no verified archive" in missing.stderr


async def test_a_worker_runs_the_restore_steps(
    env, genesis_api, moto_endpoint, s3_bucket, tmp_path
):
    path = qemu_image(tmp_path, "disk", 12 * MiB, compress="zlib", cluster_size=4096)
    expected = to_raw(path, tmp_path / "disk.raw")
    import hashlib

    snapshot_id = await archived(moto_endpoint, s3_bucket, path.read_bytes())
    genesis_api.expect_md5["by-worker"] = hashlib.md5(expected).hexdigest()
    log = tmp_path / "worker.log"
    # A worker is the archive pipeline's too: it starts with Exoscale's variables, though a
    # restore calls no Exoscale API (an unreachable endpoint proves it).
    worker_env = {
        **env,
        "EXOSCALE_API_KEY": "EXOunused",
        "EXOSCALE_API_SECRET": "unused",
        "EXOSCALE_API_ENDPOINT": "http://127.0.0.1:9/{zone}/v2",
    }
    with worker_process(worker_env, threads=2, log=log):
        done = restore(env, snapshot_id, "--name", "by-worker", "--wait", "--json", timeout=120)
    assert done.returncode == 0, done.stderr + log.read_text()
    result = json.loads(done.stdout)
    assert result["status"] == "created"
    assert result["raw_md5"] == hashlib.md5(expected).hexdigest()
    shown = cli(env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    [job] = [j for j in json.loads(shown.stdout)["jobs"] if j["snapshot_id"] == snapshot_id]
    assert (job["kind"], job["status"]) == ("genesis", "done")
    assert job["result"]["snapshot_id"] == result["snapshot_id"]  # Genesis' id, kept apart
    assert f"Genesis snapshot 'by-worker' ({result['snapshot_id']})" in cli(env, "status").stdout


async def test_status_shows_a_queued_restore_and_cancel_ends_it(env, moto_endpoint, s3_bucket):
    snapshot_id = await archived(moto_endpoint, s3_bucket, b"\0" * MiB)
    queued = restore(env, snapshot_id, "--name", "never-run", "--json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["status"] == "queued"
    shown = cli(env, "status", "--json")
    [job] = [j for j in json.loads(shown.stdout)["jobs"] if j["snapshot_id"] == snapshot_id]
    assert (job["kind"], job["status"]) == ("genesis", "queued")
    joined = restore(env, snapshot_id, "--name", "never-run", "--json")
    assert joined.returncode == 0 and "joined the running restore" in joined.stdout
    other = restore(env, snapshot_id, "--name", "another-name")
    assert other.returncode == 1
    assert other.stderr.strip().endswith(
        "a restore is running already (as 'never-run' in NORD-NO-KRS-1); wait for it or "
        f"cancel it (snaparchive cancel {snapshot_id})"
    )
    # No worker runs: cancel takes the free lease and ends the job itself.
    cancelled = cli(env, "cancel", snapshot_id, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    again = cli(env, "status", "--json")
    [job] = [j for j in json.loads(again.stdout)["jobs"] if j["snapshot_id"] == snapshot_id]
    assert job["status"] == "cancelled"


def test_gc_keeps_the_conversion_upload_of_a_running_restore(env, moto_endpoint, s3_bucket):
    import redis

    snapshot_id = str(uuid.uuid4())
    key = f"snaparchive/exoscale/{ZONE}/{snapshot_id}/{RAW_IMAGE_NAME}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
    lease = f"{env['SNAPARCHIVE_QUEUE']}:genesis:lease:{ZONE}:{snapshot_id}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(lease, "a-restore", px=60_000)
        kept = cli(env, "gc", "--older-than", "0")
        assert kept.returncode == 0, kept.stderr
        assert "kept: leased by a transfer" in kept.stdout
        client.delete(lease)
        swept = cli(env, "gc", "--older-than", "0")
        assert "aborted" in swept.stdout
    finally:
        client.close()
    uploads = s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert upload not in [u["UploadId"] for u in uploads]
