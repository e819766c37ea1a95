"""The whole pipeline end to end: CLI → real broker → worker process → simulator → moto."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.pipeline_env import (
    ZONE,
    bucket_is_clean,
    cli,
    forget_queue,
    pipeline_env,
    status_json,
    stored_md5,
    wait_for,
    worker_process,
)
from worker.simulator import Faults
from worker.units import MiB

#: A database no other test module uses. Each test's keys live under its own queue name
#: (pipeline_env) and are deleted after it: no flush, which would wipe the jobs of a run
#: going on at the same time.
REDIS_URL = "redis://127.0.0.1:6379/3"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def snapshot_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(params=["redis", "rabbitmq"])
def env(request, simulator, moto_endpoint, s3_bucket, redis_url):
    if request.param == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        channel = connection.channel()
        for queue in ("snaparchive", "snaparchive.DQ", "snaparchive.XQ"):
            channel.queue_delete(queue=queue)
        connection.close()
    broker = RABBITMQ_URL if request.param == "rabbitmq" else redis_url
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, broker, redis_url)
    yield env
    forget_queue(env)


def test_archive_through_broker_and_worker(env, simulator, moto_endpoint, s3_bucket, snapshot_id):
    simulator.add_snapshot(snapshot_id, 24 * MiB, zone=ZONE)
    with worker_process(env):
        done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--wait", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["md5"] == simulator.image_md5(snapshot_id)
    assert result["size"] == 24 * MiB
    assert result["bucket"] == s3_bucket
    assert result["manifest"].endswith(f"exoscale/{ZONE}/{snapshot_id}/manifest.json")
    assert [o["key"] for o in result["objects"]] == [
        f"snaparchive/exoscale/{ZONE}/{snapshot_id}/image"
    ]
    assert stored_md5(moto_endpoint, s3_bucket, result) == result["md5"]


@pytest.mark.parametrize("env", ["redis"], indirect=True)
def test_duplicate_enqueue_joins_and_status_shows_progress(env, simulator, snapshot_id):
    simulator.add_snapshot(snapshot_id, 16 * MiB, zone=ZONE)
    simulator.set_faults(Faults(slow_rate=4 * MiB), snapshot_id=snapshot_id)
    first = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["note"] == "queued"
    with worker_process(env):
        moving = wait_for(
            lambda: (s := status_json(env, snapshot_id)) and s["bytes_done"] > 0 and s
        )
        assert moving["status"] == "transferring"
        assert 0 < moving["bytes_done"] < moving["bytes_total"] == 16 * MiB
        second = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
        assert json.loads(second.stdout)["note"].startswith("joined the running job")
        done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--wait", "--json")
    assert done.returncode == 0, done.stderr
    # One export, one download: the joined requests did not start another.
    assert simulator.bytes_served(snapshot_id) == 16 * MiB
    again = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    existing = json.loads(again.stdout)
    assert existing["note"] == "already archived"
    assert existing["md5"] == json.loads(done.stdout)["md5"] and existing["size"] == 16 * MiB


@pytest.mark.parametrize("env", ["redis"], indirect=True)
def test_wrong_md5_fails_with_exit_3_and_leaves_nothing(
    env, simulator, moto_endpoint, s3_bucket, snapshot_id
):
    simulator.add_snapshot(snapshot_id, 12 * MiB, zone=ZONE)
    simulator.set_faults(Faults(wrong_md5=True), snapshot_id=snapshot_id)
    with worker_process(env):
        done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--wait")
    assert done.returncode == 3  # verification failed: bad data, not a bad network
    assert "verification failed: md5 mismatch: expected" in done.stderr
    assert "Traceback" not in done.stderr
    assert bucket_is_clean(moto_endpoint, s3_bucket)
    assert status_json(env, snapshot_id)["status"] == "failed"
