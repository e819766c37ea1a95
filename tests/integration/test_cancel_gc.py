"""``snaparchive cancel`` and ``snaparchive gc`` end to end: a real Redis broker and job store,
``snaparchive worker`` subprocesses, the simulator, and moto."""

from __future__ import annotations

import json
import os
import signal
import uuid

import boto3
import pytest
import redis

from tests.integration.pipeline_env import (
    ZONE,
    bucket_is_clean,
    cli,
    forget_queue,
    pipeline_env,
    status_json,
    wait_for,
    worker_process,
)
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/7"
SIZE = 60 * MiB
#: Slow enough that the transfer is still running when the test cancels it.
RATE = 8 * MiB


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    yield env
    forget_queue(env)


@pytest.fixture
def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def _checkpoint_key(env, snapshot_id: str) -> str:
    return f"{env['SNAPARCHIVE_QUEUE']}:checkpoint:{ZONE}:{snapshot_id}"


def _transferring(env, snapshot_id: str):
    """A predicate for wait_for: the job has checkpointed (an upload is open)."""
    client = redis.Redis.from_url(REDIS_URL)

    def checkpointed() -> bool:
        return bool(client.exists(_checkpoint_key(env, snapshot_id)))

    try:
        wait_for(checkpointed, timeout=60)
    finally:
        client.close()


def _start_slow_job(env, simulator) -> str:
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, SIZE, zone=ZONE, state="exported")
    simulator.set_faults(Faults(slow_rate=RATE), snapshot_id=snapshot_id)
    queued = cli(env, "archive", snapshot_id, "--zone", ZONE)
    assert queued.returncode == 0, queued.stderr
    return snapshot_id


def test_cancel_stops_a_running_transfer_and_leaves_nothing(
    env, simulator, moto_endpoint, s3_bucket, s3, tmp_path
):
    snapshot_id = _start_slow_job(env, simulator)
    with worker_process(env, log=tmp_path / "worker.log", stop_signal=signal.SIGKILL) as worker:
        _transferring(env, snapshot_id)
        assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

        cancelled = cli(env, "cancel", snapshot_id)  # the zone is found from the job

        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled; its multipart uploads are aborted" in cancelled.stdout
        record = status_json(env, snapshot_id)
        assert record["status"] == "cancelled"
        assert bucket_is_clean(moto_endpoint, s3_bucket)
        # The worker stopped downloading and lives on for other jobs.
        wait_for(lambda: simulator.downloads_sending(snapshot_id) == 0, timeout=30)
        assert worker.poll() is None
    served = simulator.bytes_served(snapshot_id)
    assert served < SIZE
    client = redis.Redis.from_url(REDIS_URL)
    assert not client.exists(_checkpoint_key(env, snapshot_id))
    client.close()

    again = cli(env, "cancel", snapshot_id, "--zone", ZONE)
    assert again.returncode == 0
    assert "nothing to cancel, the job is cancelled" in again.stdout


def test_cancel_of_a_job_whose_worker_died_aborts_its_uploads(
    env, simulator, moto_endpoint, s3_bucket, s3, tmp_path
):
    snapshot_id = _start_slow_job(env, simulator)
    with worker_process(env, log=tmp_path / "worker.log") as worker:
        _transferring(env, snapshot_id)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

    # Nobody acknowledges the cancel: once the dead worker's lease has expired
    # (SNAPARCHIVE_LEASE_TTL), the command aborts the uploads itself.
    cancelled = cli(env, "cancel", snapshot_id, "--zone", ZONE)

    assert cancelled.returncode == 0, cancelled.stderr
    assert status_json(env, snapshot_id)["status"] == "cancelled"
    assert bucket_is_clean(moto_endpoint, s3_bucket)


def test_cancel_refuses_what_is_not_a_running_job(env):
    unknown = cli(env, "cancel", str(uuid.uuid4()))
    assert unknown.returncode == 1
    assert "no job for snapshot" in unknown.stderr
    malformed = cli(env, "cancel", "not-a-uuid")
    assert malformed.returncode == 2


def _open_upload(s3, bucket: str, key: str) -> str:
    """Start a multipart upload of ``key`` with one small part; return its upload id."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    return upload_id


def _open_ids(s3, bucket: str) -> set[str]:
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_gc_lists_and_aborts_abandoned_uploads_only(env, s3, s3_bucket):
    # Abandoned: an archive's upload with no job (a job failed or lost with its Redis).
    abandoned_id = str(uuid.uuid4())
    abandoned = _open_upload(
        s3, s3_bucket, f"snaparchive/exoscale/{ZONE}/{abandoned_id}/image.seg00001"
    )
    # Owned: the upload of a job that is still active (queued here: no worker runs).
    running_id = str(uuid.uuid4())
    queued = cli(env, "archive", running_id, "--zone", ZONE)
    assert queued.returncode == 0, queued.stderr
    running = _open_upload(s3, s3_bucket, f"snaparchive/exoscale/{ZONE}/{running_id}/image")
    # Outside the prefix: not snaparchive's.
    foreign = _open_upload(s3, s3_bucket, "backups/other-tool/blob")

    # moto reports every upload as started in 2010: an age limit of ~23 years keeps them all,
    # as an hour would keep the uploads of a real store that were started minutes ago.
    listed = cli(env, "gc", "--dry-run", "--older-than", "200000")
    assert listed.returncode == 0, listed.stderr
    assert "kept: too recent" in _line(listed.stdout, abandoned_id)
    assert "kept: its job is running" in _line(listed.stdout, running_id)
    assert "backups/" not in listed.stdout
    assert "2 open upload(s), 0 aborted" in listed.stdout

    dry = cli(env, "gc", "--dry-run", "--older-than", "0")
    assert dry.returncode == 0, dry.stderr
    assert "would abort" in _line(dry.stdout, abandoned_id)
    assert "kept: its job is running" in _line(dry.stdout, running_id)
    assert _open_ids(s3, s3_bucket) == {abandoned, running, foreign}

    swept = cli(env, "gc", "--older-than", "0")
    assert swept.returncode == 0, swept.stderr
    assert "aborted" in _line(swept.stdout, abandoned_id)
    assert "2 open upload(s), 1 aborted" in swept.stdout
    assert _open_ids(s3, s3_bucket) == {running, foreign}

    assert cli(env, "gc", "--older-than", "-1").returncode == 2
    assert cli(env, "gc", "--older-than", "soon").returncode == 2
    unconfigured = cli({**env, "SNAPARCHIVE_S3_BUCKET": ""}, "gc")
    assert unconfigured.returncode == 2
    assert "SNAPARCHIVE_S3_BUCKET" in unconfigured.stderr


def _line(output: str, snapshot_id: str) -> str:
    """The one line of ``gc`` output about the upload of ``snapshot_id``."""
    lines = [line for line in output.splitlines() if snapshot_id in line]
    assert len(lines) == 1, output
    return lines[0]


def test_cancel_json(env):
    unknown_id = str(uuid.uuid4())
    unknown = cli(env, "cancel", unknown_id, "--json")
    assert unknown.returncode == 1
    body = json.loads(unknown.stdout)
    assert (body["snapshot_id"], body["status"]) == (unknown_id, None)
    assert body["error"] == f"no job for snapshot {unknown_id}"
    assert unknown.stderr == f"snaparchive: error: no job for snapshot {unknown_id}\n"

    # A queued job (no worker runs): the command takes the free lease and cancels it itself.
    queued_id = str(uuid.uuid4())
    assert cli(env, "archive", queued_id, "--zone", ZONE).returncode == 0
    cancelled = cli(env, "cancel", queued_id, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    body = json.loads(cancelled.stdout)
    assert body["job"] == f"{ZONE}/{queued_id}"
    assert (body["zone"], body["status"]) == (ZONE, "cancelled")
    assert body["note"] == "cancelled; its multipart uploads are aborted"
    again = cli(env, "cancel", queued_id, "--zone", ZONE, "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["note"] == "nothing to cancel, the job is cancelled"


def test_gc_json(env, s3, s3_bucket):
    abandoned_id = str(uuid.uuid4())
    key = f"snaparchive/exoscale/{ZONE}/{abandoned_id}/image"
    abandoned = _open_upload(s3, s3_bucket, key)
    running_id = str(uuid.uuid4())
    assert cli(env, "archive", running_id, "--zone", ZONE).returncode == 0
    running = _open_upload(s3, s3_bucket, f"snaparchive/exoscale/{ZONE}/{running_id}/image")

    dry = cli(env, "gc", "--dry-run", "--older-than", "0", "--json")
    assert dry.returncode == 0, dry.stderr
    body = json.loads(dry.stdout)
    assert (body["job_store"], body["dry_run"], body["open"], body["aborted"]) == (
        True,
        True,
        2,
        0,
    )
    rows = {row["upload_id"]: row for row in body["uploads"]}
    assert (rows[abandoned]["key"], rows[abandoned]["action"]) == (key, "would_abort")
    assert (rows[running]["action"], rows[running]["reason"]) == ("kept", "job_running")
    assert rows[abandoned]["initiated"] and rows[abandoned]["age_seconds"] > 0

    swept = json.loads(cli(env, "gc", "--older-than", "0", "--json").stdout)
    assert swept["aborted"] == 1
    assert _open_ids(s3, s3_bucket) == {running}


def test_gc_without_a_job_store_goes_by_the_bucket_alone(env, s3, s3_bucket):
    # An archive --local laptop: no Redis at all (a closed port).
    laptop = {**env, "SNAPARCHIVE_REDIS_URL": "redis://127.0.0.1:1/0"}
    laptop["SNAPARCHIVE_BROKER_URL"] = laptop["SNAPARCHIVE_REDIS_URL"]
    abandoned_id = str(uuid.uuid4())
    abandoned = _open_upload(s3, s3_bucket, f"snaparchive/exoscale/{ZONE}/{abandoned_id}/image")

    # moto's uploads all started in 2010: ~23 years keeps them, as the age guard keeps a
    # running --local transfer's upload.
    kept = cli(laptop, "gc", "--older-than", "200000")
    assert kept.returncode == 0, kept.stderr
    assert "does not answer; going by the bucket alone" in kept.stderr
    assert kept.stderr.count("\n") == 1 and "Traceback" not in kept.stderr
    assert "kept: too recent" in _line(kept.stdout, abandoned_id)
    assert _open_ids(s3, s3_bucket) == {abandoned}

    # An image object a --local run just completed, its manifest not written yet.
    committing_id = str(uuid.uuid4())
    image = f"snaparchive/exoscale/{ZONE}/{committing_id}/image"
    s3.put_object(Bucket=s3_bucket, Key=image, Body=b"x")

    swept = cli(laptop, "gc", "--older-than", "1", "--json")
    assert swept.returncode == 0, swept.stderr
    body = json.loads(swept.stdout)
    assert (body["job_store"], body["aborted"]) == (False, 1)
    assert body["orphans"] == []  # younger than the guard: kept
    assert _open_ids(s3, s3_bucket) == set()

    dry = json.loads(cli(laptop, "gc", "--older-than", "0", "--dry-run", "--json").stdout)
    assert dry["orphans"] == [
        {"folder": image.removesuffix("image"), "keys": [image], "action": "would_delete"}
    ]
    assert s3.head_object(Bucket=s3_bucket, Key=image)
