"""Two runs of one snapshot at once: one archives, the other waits for it, and the archive
both report stays (issue 9: a concurrent run used to delete a verified archive)."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import redis

from tests.integration.pipeline_env import (
    SNAPARCHIVE,
    ZONE,
    cli,
    forget_queue,
    pipeline_env,
    stored_md5,
    worker_process,
)
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/8"


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    yield env
    forget_queue(env)


def _local(env: dict[str, str], snapshot_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [SNAPARCHIVE, "archive", snapshot_id, "--zone", ZONE, "--local", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    return json.loads(out)


def _assert_one_archive(env, simulator, moto_endpoint, s3_bucket, snapshot_id, results):
    md5 = simulator.image_md5(snapshot_id)
    assert {r["status"] for r in results} == {"done"}
    assert {r["md5"] for r in results} == {md5}
    assert stored_md5(moto_endpoint, s3_bucket, results[0]) == md5
    verified = cli(env, "restore", snapshot_id, "--zone", ZONE, "--verify")
    assert verified.returncode == 0, verified.stderr


def test_two_local_runs_of_one_snapshot_leave_one_verified_archive(
    env, simulator, moto_endpoint, s3_bucket
):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 24 * MiB, zone=ZONE, state="exported")
    simulator.set_faults(Faults(slow_rate=8 * MiB), snapshot_id=snapshot_id)

    runs = [_local(env, snapshot_id), _local(env, snapshot_id)]
    results = [_outcome(run) for run in runs]

    _assert_one_archive(env, simulator, moto_endpoint, s3_bucket, snapshot_id, results)


def test_a_local_run_beside_a_worker_leaves_one_verified_archive(
    env, simulator, moto_endpoint, s3_bucket
):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 24 * MiB, zone=ZONE, state="exported")
    simulator.set_faults(Faults(slow_rate=8 * MiB), snapshot_id=snapshot_id)

    with worker_process(env):
        queued = subprocess.Popen(
            [SNAPARCHIVE, "archive", snapshot_id, "--zone", ZONE, "--wait", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        local = _local(env, snapshot_id)
        results = [_outcome(queued), _outcome(local)]

    _assert_one_archive(env, simulator, moto_endpoint, s3_bucket, snapshot_id, results)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.exists(f"{env['SNAPARCHIVE_QUEUE']}:lease:{ZONE}:{snapshot_id}") == 0
    finally:
        client.close()
