"""Exit statuses, as a scheduler or a cron wrapper sees them: 0 done, 1 failed (retry later),
2 usage or configuration, 3 verification failed (bad data: page someone), 130 interrupted.

Each code path runs as the ``snaparchive`` console script: ``archive --local``, ``archive
--wait`` with a worker, ``worker`` itself.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import uuid

import pytest

from tests.integration.pipeline_env import (
    SNAPARCHIVE,
    ZONE,
    bucket_is_clean,
    cli,
    forget_queue,
    pipeline_env,
    sigint_default,
    status_json,
    wait_for,
    worker_process,
)
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

#: A database of this module's own; keys live under each test's queue name.
REDIS_URL = "redis://127.0.0.1:6379/9"


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket):
    values = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    yield values
    forget_queue(values)


@pytest.fixture
def snapshot_id() -> str:
    return str(uuid.uuid4())


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("snaparchive:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_local_archive_with_a_wrong_md5_exits_3(
    env, simulator, moto_endpoint, s3_bucket, snapshot_id
):
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    simulator.set_faults(Faults(wrong_md5=True), snapshot_id=snapshot_id)
    done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--local")
    assert done.returncode == 3, done.stderr
    assert _one_line(done.stderr).startswith("snaparchive: verification failed: md5 mismatch")
    assert bucket_is_clean(moto_endpoint, s3_bucket)
    # The job record says what kind of failure it was.
    record = status_json(env, snapshot_id)
    assert record is not None and record["status"] == "failed"
    assert record["error_kind"] == "verification"


def test_queued_archive_with_a_wrong_md5_exits_3(env, simulator, snapshot_id):
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    simulator.set_faults(Faults(wrong_md5=True), snapshot_id=snapshot_id)
    with worker_process(env):
        done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--wait", "--json")
    assert done.returncode == 3, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "failed" and outcome["error_kind"] == "verification"
    assert outcome["error"].startswith("md5 mismatch: expected")
    assert _one_line(done.stderr).startswith("snaparchive: verification failed: md5 mismatch")


def test_a_download_the_server_keeps_refusing_exits_1(env, simulator, snapshot_id):
    # Every presigned URL has expired by the time it is used: fresh ones are refused too, and
    # the download gives up. A failure, not bad data.
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE, state="exported")
    simulator.set_faults(Faults(url_ttl=0.001), snapshot_id=snapshot_id)
    done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert done.returncode == 1, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "failed" and outcome["error_kind"] == "permanent"
    assert "even with a fresh presigned URL" in outcome["error"]
    assert _one_line(done.stderr).startswith("snaparchive: error: download from 127.0.0.1")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SNAPARCHIVE_LOG_FORMAT", "xml", "SNAPARCHIVE_LOG_FORMAT: text or json, not 'xml'"),
        (
            "SNAPARCHIVE_METRICS_PORT",
            "port",
            "SNAPARCHIVE_METRICS_PORT: not a whole number: 'port'",
        ),
        ("SNAPARCHIVE_LEASE_TTL", "5", "SNAPARCHIVE_LEASE_TTL: must be at least 11, got 5"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(env, snapshot_id, variable, value, message):
    for argv in (["archive", snapshot_id, "--zone", ZONE, "--local"], ["worker"]):
        done = cli({**env, variable: value}, *argv, timeout=60)
        assert done.returncode == 2, done.stderr
        assert _one_line(done.stderr) == f"snaparchive: configuration error: {message}"


def test_a_worker_on_a_metrics_port_in_use_exits_2(env):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli(env, "worker", "--metrics-port", str(port), timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on port {port}" in _one_line(done.stderr)


def _interrupt(argv: list[str], env: dict[str, str], ready) -> subprocess.CompletedProcess:
    """Run ``snaparchive ARGV``, send SIGINT once ``ready()``, return how it ended."""
    process = subprocess.Popen(
        [SNAPARCHIVE, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    try:
        wait_for(ready, timeout=60)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def test_sigint_exits_130_in_a_local_archive(env, simulator, snapshot_id):
    simulator.add_snapshot(snapshot_id, 40 * MiB, zone=ZONE, state="exported")
    simulator.set_faults(Faults(slow_rate=2 * MiB), snapshot_id=snapshot_id)
    done = _interrupt(
        ["archive", snapshot_id, "--zone", ZONE, "--local"],
        env,
        lambda: simulator.bytes_served(snapshot_id) > MiB,
    )
    assert done.returncode == 130, done.stderr
    assert _one_line(done.stderr) == "snaparchive: interrupted"


def test_sigint_exits_130_while_waiting_for_a_queued_job(env, simulator, snapshot_id):
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    # No worker: the job stays queued, and --wait waits.
    done = _interrupt(
        ["archive", snapshot_id, "--zone", ZONE, "--wait"],
        env,
        lambda: (status_json(env, snapshot_id) or {}).get("status") == "queued",
    )
    assert done.returncode == 130, done.stderr
    assert _one_line(done.stderr) == "snaparchive: interrupted"


def test_a_worker_exits_130_on_sigint_and_0_on_sigterm(env, tmp_path):
    for stop, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        log = tmp_path / f"{stop.name}.log"
        with worker_process(env, log=log, shutdown_timeout=5) as worker:
            wait_for(lambda log=log: "is ready for action" in log.read_text(), timeout=60)
            worker.send_signal(stop)
            assert worker.wait(timeout=60) == expected, log.read_text()[-2000:]
