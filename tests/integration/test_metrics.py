"""Prometheus metrics of a real ``snaparchive worker`` (two processes, Redis broker, the
simulator, moto), scraped over HTTP after it archived snapshots."""

from __future__ import annotations

import datetime
import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.pipeline_env import (
    ZONE,
    cli,
    forget_queue,
    pipeline_env,
    wait_for,
    worker_process,
)
from worker import metrics
from worker.errors import ConfigError
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/10"


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket):
    values = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    yield values
    forget_queue(values)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the exporter serves: (name, sorted labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _answers(port: int) -> bool:
    try:
        return bool(scrape(port))
    except OSError:
        return False


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _sum(samples, name: str, **labels: str) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    return sum(
        v for (n, found), v in samples.items() if n == name and set(labels.items()) <= set(found)
    )


@pytest.fixture
def port() -> Iterator[int]:
    yield _free_port()


def _timestamp(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_worker_serves_its_metrics_and_dramatiq_s(env, simulator, port, tmp_path):
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    body = simulator.add_snapshot(good, 12 * MiB, zone=ZONE)
    simulator.add_snapshot(bad, 6 * MiB, zone=ZONE)
    simulator.set_faults(Faults(wrong_md5=True), snapshot_id=bad)
    log = tmp_path / "worker.log"
    options = ("--metrics-port", str(port))
    with worker_process(env, processes=2, options=options, log=log):
        wait_for(lambda: _answers(port), timeout=60)
        done = cli(env, "archive", good, "--zone", ZONE, "--wait", "--json")
        assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
        failed = cli(env, "archive", bad, "--zone", ZONE, "--wait", "--json")
        assert failed.returncode == 3, failed.stderr
        restored = cli(env, "restore", good, "--zone", ZONE, "--template", "metered", "--wait")
        assert restored.returncode == 0, restored.stderr + log.read_text()[-3000:]
        # A second worker on the same host and port refuses to start.
        second = cli(env, "worker", "--metrics-port", str(port), timeout=60)
        assert second.returncode == 2 and f"port {port}" in second.stderr
        samples = scrape(port)

    assert value(samples, "snaparchive_archive_bytes_total") == 12 * MiB
    assert value(samples, "snaparchive_jobs_total", kind="archive", result="done") == 1
    assert value(samples, "snaparchive_jobs_total", kind="archive", result="failed") == 1
    assert value(samples, "snaparchive_jobs_total", kind="archive", result="cancelled") == 0
    assert value(samples, "snaparchive_jobs_total", kind="restore", result="done") == 1
    assert value(samples, "snaparchive_jobs_total", kind="genesis", result="done") == 0
    assert value(samples, "snaparchive_job_duration_seconds_count", kind="archive") == 2
    # Jobs of seconds land in the first bucket (a minute).
    assert value(samples, "snaparchive_job_duration_seconds_bucket", kind="archive", le="60.0") == 2
    assert value(samples, "snaparchive_verify_failures_total") == 1
    assert value(samples, "snaparchive_reread_bytes_total") == 0
    point = value(
        samples,
        "snaparchive_last_verified_archive_timestamp_seconds",
        zone=ZONE,
        instance=body["instance"]["id"],
    )
    assert point == _timestamp(body["created-at"])
    # Dramatiq's own, from both worker processes through the one exporter.
    assert _sum(samples, "dramatiq_messages_total", actor_name="start_export") == 2
    assert _sum(samples, "dramatiq_messages_total", actor_name="transfer_snapshot") >= 1
    assert json.loads(done.stdout)["size"] == 12 * MiB


def test_bytes_read_again_after_a_resume_are_counted(env, simulator, port, tmp_path):
    snapshot_id = str(uuid.uuid4())
    size = 40 * MiB
    simulator.add_snapshot(snapshot_id, size, zone=ZONE, state="exported")
    simulator.set_faults(Faults(slow_rate=4 * MiB), snapshot_id=snapshot_id)
    queued = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    assert queued.returncode == 0, queued.stderr

    import redis

    client = redis.Redis.from_url(REDIS_URL)
    key = f"{env['SNAPARCHIVE_QUEUE']}:%s:{ZONE}:{snapshot_id}"

    def checkpoint() -> dict | None:
        raw = client.get(key % "checkpoint")
        return json.loads(raw) if raw else None

    try:
        # Stopped (SIGTERM) mid-transfer: the parts in flight land and are checkpointed; the
        # part being downloaded is not, and its bytes are read again by the next run.
        with worker_process(env, log=tmp_path / "first.log"):
            wait_for(lambda: (checkpoint() or {}).get("offset", 0) >= 10 * MiB, timeout=60)
        saved = checkpoint()
        downloaded = json.loads(client.hget(key % "job", "bytes_done"))
    finally:
        client.close()
    assert saved is not None and saved["offset"] < size
    simulator.set_faults(None, snapshot_id=snapshot_id)
    with worker_process(env, options=("--metrics-port", str(port)), log=tmp_path / "second.log"):
        wait_for(lambda: _answers(port), timeout=60)
        done = cli(env, "archive", snapshot_id, "--zone", ZONE, "--wait", "--json")
        assert done.returncode == 0, done.stderr
        samples = scrape(port)
    # What the first run had downloaded beyond its checkpoint (the part it was reading when
    # it stopped: the download runs on at 4 MiB/s, parts are 5 MiB), no more, no less.
    assert downloaded > saved["offset"]
    assert value(samples, "snaparchive_reread_bytes_total") == downloaded - saved["offset"]
    assert value(samples, "snaparchive_archive_bytes_total") == size


def test_a_single_process_command_serves_its_own(port):
    # As the scheduler does: an exporter thread in the process, on a port of its own.
    stop = metrics.serve(port)
    try:
        before = value(scrape(port), "snaparchive_reread_bytes_total")
        metrics.reread(5)
        assert value(scrape(port), "snaparchive_reread_bytes_total") == before + 5
        with pytest.raises(ConfigError, match=f"cannot listen on port {port}"):
            metrics.serve(port)
    finally:
        stop()
    assert not _answers(port)
