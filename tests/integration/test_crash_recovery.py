"""Crash-safe archive jobs end to end: a worker killed (SIGKILL), stopped (SIGTERM) or cut off
from a restarting Redis in the middle of a transfer leaves a job that another worker finishes
from its checkpoint, without downloading the stored prefix again and without uploading stored
parts again.

Real brokers (Redis, RabbitMQ), ``snaparchive worker`` subprocesses, the simulator serving a
throttled download, and moto behind :class:`~tests.fixtures.s3.FaultyProxy`, which records
every UploadPart it forwards: that record is how a part sent twice is seen.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import redis

from tests.integration.pipeline_env import (
    ZONE,
    cli,
    forget_queue,
    pipeline_env,
    stored_md5,
    wait_for,
    worker_process,
)
from worker import settings as settings_module
from worker.parts import buffer_count
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/7"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
PART = 5 * MiB
#: Not a whole number of parts: the last one is short.
SIZE = 200 * MiB + 4321
#: The download's pace until the first worker is stopped: ~10 s for the image, so the stop
#: lands mid-transfer. The worker that resumes runs unthrottled: its speed proves nothing.
RATE = 20 * MiB
#: The first worker is stopped once a checkpoint is at least this far.
STOP_AT = SIZE // 4
#: Seconds a job may take to finish after its worker died (redelivery, lease expiry, rest).
FINISH_TIMEOUT = 120
SHUTDOWN_TIMEOUT = 10


@dataclass
class Scene:
    """One test's pipeline: its environment, the simulator, the counting proxy, the bucket."""

    env: dict[str, str]
    simulator: object
    proxy: object
    moto: str
    bucket: str
    snapshot_id: str
    logs: Path
    size: int = SIZE
    rate: int = RATE

    @property
    def parts(self) -> int:
        return -(-self.size // PART)

    def s3(self):
        return boto3.client("s3", endpoint_url=self.moto, region_name="us-east-1")

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["SNAPARCHIVE_REDIS_URL"])

    def key(self, kind: str) -> str:
        return f"{self.env['SNAPARCHIVE_QUEUE']}:{kind}:{ZONE}:{self.snapshot_id}"

    def job(self) -> dict:
        """The job record's fields as the job store holds them."""
        client = self.redis()
        try:
            fields = client.hgetall(self.key("job"))
        finally:
            client.close()
        return {k.decode(): json.loads(v) for k, v in fields.items()}

    def checkpoint(self) -> dict | None:
        """The job's transfer checkpoint as the job store holds it (None before the first)."""
        client = self.redis()
        try:
            raw = client.get(self.key("checkpoint"))
        finally:
            client.close()
        return json.loads(raw) if raw else None

    def wait_for_checkpoint(self, offset: int) -> dict:
        def reached():
            saved = self.checkpoint()
            return saved if saved and saved["offset"] >= offset else None

        return wait_for(reached, timeout=60)

    def queue_throttled_job(self) -> None:
        """An exported snapshot (no export to wait for) served at :attr:`rate`, queued."""
        self.simulator.add_snapshot(self.snapshot_id, self.size, zone=ZONE, state="exported")
        self.simulator.set_faults(Faults(slow_rate=self.rate), snapshot_id=self.snapshot_id)
        queued = cli(self.env, "archive", self.snapshot_id, "--zone", ZONE, "--json")
        assert queued.returncode == 0, queued.stderr
        assert json.loads(queued.stdout)["note"] == "queued"

    def worker(self, name: str, **options):
        return worker_process(self.env, log=self.logs / f"{name}.log", **options)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-4000:]

    def finish(self, name: str = "second") -> dict:
        """Lift the throttle, run a new worker until the job is done; return its outcome."""
        self.simulator.set_faults(None, snapshot_id=self.snapshot_id)
        # Killed at the end: its job is done, there is nothing to wait for.
        with self.worker(name, stop_signal=signal.SIGKILL):
            done = cli(
                self.env,
                *("archive", self.snapshot_id, "--zone", ZONE, "--wait", "--json"),
                timeout=FINISH_TIMEOUT,
            )
        assert done.returncode == 0, done.stderr + self.log(name)
        return json.loads(done.stdout)


@dataclass
class Left:
    """What a stopped worker left behind, once nothing it started is still moving."""

    served: int  # bytes the simulator had served
    uploads: int  # UploadPart requests the proxy had forwarded
    stored: set[int]  # part numbers the store held for the open upload
    offset: int  # the checkpoint's offset
    parts_done: int  # parts below it


def _left(scene: Scene, then: Callable[[], object] | None = None) -> Left:
    """What the stopped worker left. ``then`` runs after the simulator and the store are
    looked at and before the checkpoint is (with Redis down: it starts Redis)."""
    # The simulator counts bytes until it notices that the connection is gone.
    wait_for(lambda: scene.simulator.downloads_sending(scene.snapshot_id) == 0, timeout=30)
    # UploadParts sent whole before the end are forwarded and answered before we look.
    wait_for(lambda: scene.proxy.active == 0, timeout=30)
    s3 = scene.s3()
    (upload,) = s3.list_multipart_uploads(Bucket=scene.bucket)["Uploads"]
    parts = s3.list_parts(Bucket=scene.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    served, uploads = scene.simulator.bytes_served(scene.snapshot_id), len(scene.proxy.uploads)
    if then is not None:
        then()
    saved = scene.checkpoint()
    assert saved is not None and list(saved["segments"]) == ["0"]
    assert saved["segments"]["0"]["upload_id"] == upload["UploadId"]
    return Left(
        served=served,
        uploads=uploads,
        stored={p["PartNumber"] for p in parts.get("Parts", [])},
        offset=saved["offset"],
        parts_done=saved["segments"]["0"]["parts"],
    )


def _upload_slots(env: dict[str, str]) -> int:
    """Part buffers a transfer has in flight with these settings, by the engine's own rule
    (:func:`worker.parts.buffer_count`): ``upload_concurrency`` parts uploading plus one
    filling from the download, within the memory limit. Every byte downloaded but not yet
    checkpointed sits in one of them."""
    transfer = settings_module.load(env).transfer
    assert transfer.part_size == PART
    return buffer_count(PART, transfer)


def _assert_resumed(scene: Scene, left: Left, result: dict, saved_all: bool = True) -> None:
    """The job finished from where the stopped worker left it, with the right bytes.

    ``saved_all``: the worker could save its checkpoints up to its stop (its job store was
    there), so the saved one is at most one part per upload slot behind its download.
    """
    assert result["status"] == "done"
    assert result["md5"] == scene.simulator.image_md5(scene.snapshot_id)
    assert result["size"] == scene.size
    assert stored_md5(scene.moto, scene.bucket, result) == result["md5"]
    # The archive as a restore reads it back (manifest, objects in order) has the MD5.
    verified = cli(scene.env, "restore", scene.snapshot_id, "--zone", ZONE, "--verify")
    assert verified.returncode == 0, verified.stderr
    assert scene.s3().list_multipart_uploads(Bucket=scene.bucket).get("Uploads", []) == []

    # Not downloaded again: the resume read from the checkpoint's offset (a Range GET), and
    # the checkpoint was at most one part per upload slot behind what had been downloaded.
    wait_for(lambda: scene.simulator.downloads_sending(scene.snapshot_id) == 0, timeout=30)
    served_after = scene.simulator.bytes_served(scene.snapshot_id) - left.served
    remainder = scene.size - left.served
    assert served_after <= scene.size - left.offset
    if saved_all:
        assert served_after <= remainder + _upload_slots(scene.env) * PART

    # Not uploaded again: what the store held (the checkpointed parts, and any beyond them
    # that had landed) was kept; only the missing parts were sent afterwards.
    assert 0 < left.parts_done < scene.parts
    assert left.stored >= set(range(1, left.parts_done + 1))
    sent_after = scene.proxy.uploads[left.uploads :]
    assert not left.stored & set(sent_after), "parts stored before the stop were sent again"
    assert left.stored | set(sent_after) == set(range(1, scene.parts + 1))


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group: the main process and its forks."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _delete_rabbitmq_queues(queue: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(queue=name)
    finally:
        connection.close()


@pytest.fixture
def make_scene(simulator, s3_proxy, moto_endpoint, s3_bucket, tmp_path):
    """Makes the test's :class:`Scene` for a broker and a job store; cleans up after it."""
    made: list[Scene] = []

    def make(broker_url: str, redis_url: str) -> Scene:
        env = pipeline_env(simulator, s3_proxy.url, s3_bucket, broker_url, redis_url)
        # Redis broker: a worker silent this long counts as dead and its messages go back to
        # the queue (another worker's queue maintenance moves them). Short: tests need not wait.
        env["SNAPARCHIVE_HEARTBEAT_TIMEOUT"] = "2"
        made.append(
            Scene(env, simulator, s3_proxy, moto_endpoint, s3_bucket, str(uuid.uuid4()), tmp_path)
        )
        return made[-1]

    yield make
    for scene in made:
        forget_queue(scene.env)
        if scene.env["SNAPARCHIVE_BROKER_URL"].startswith("amqp"):
            _delete_rabbitmq_queues(scene.env["SNAPARCHIVE_QUEUE"])


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_killed_worker_s_transfer_is_finished_by_another(make_scene, broker):
    scene = make_scene(REDIS_URL if broker == "redis" else RABBITMQ_URL, REDIS_URL)
    scene.queue_throttled_job()
    with scene.worker("first") as first:
        scene.wait_for_checkpoint(STOP_AT)
        _kill(first)
    left = _left(scene)
    assert scene.job()["step"] == "transferring"

    # The dead worker's message comes back (RabbitMQ: its connection closed; Redis: its
    # heartbeat stopped); the new worker takes the lease over once it has expired.
    _assert_resumed(scene, left, scene.finish())


def _lease_holder(scene: Scene, *workers: subprocess.Popen) -> subprocess.Popen:
    """The worker (of ``workers``) whose process holds the transfer's lease: its owner token
    is ``host:pid:...``, and each worker's processes are in its process group."""
    client = scene.redis()
    try:
        owner = client.get(scene.key("lease"))
    finally:
        client.close()
    assert owner is not None
    group = os.getpgid(int(owner.decode().split(":")[1]))
    (holder,) = [worker for worker in workers if worker.pid == group]
    return holder


def test_a_standby_worker_takes_over_with_the_default_timings(make_scene, record_property):
    # SNAPARCHIVE_HEARTBEAT_TIMEOUT and SNAPARCHIVE_LEASE_TTL at their defaults, and a second
    # worker standing by when the first is killed. How long the job waits is reported, not
    # asserted (a loaded machine would fail a timed test): the README's "Dead workers" and
    # bench/RESULTS.md give the figures and their reasons.
    scene = make_scene(REDIS_URL, REDIS_URL)
    for name in ("SNAPARCHIVE_HEARTBEAT_TIMEOUT", "SNAPARCHIVE_LEASE_TTL"):
        scene.env.pop(name)
    with scene.worker("first") as first, scene.worker("standby") as standby:
        for name in ("first", "standby"):
            wait_for(lambda name=name: "is ready for action" in scene.log(name), timeout=60)
        scene.queue_throttled_job()
        scene.wait_for_checkpoint(STOP_AT)
        _kill(_lease_holder(scene, first, standby))
        killed = time.monotonic()
        # The dead connection is noticed at the simulator's next write; from then on nothing is
        # served until the new worker's first byte.
        wait_for(lambda: scene.simulator.downloads_sending(scene.snapshot_id) == 0, timeout=30)
        before = scene.simulator.bytes_served(scene.snapshot_id)
        scene.simulator.set_faults(None, snapshot_id=scene.snapshot_id)
        wait_for(
            lambda: scene.simulator.bytes_served(scene.snapshot_id) > before,
            timeout=FINISH_TIMEOUT,
            interval=0.02,
        )
        waited = time.monotonic() - killed
        record_property("seconds_from_kill_to_first_byte", round(waited, 1))
        print(f"\nkill -> first byte of the standby worker (default timings): {waited:.1f} s")
        done = cli(
            scene.env,
            *("archive", scene.snapshot_id, "--zone", ZONE, "--wait", "--json"),
            timeout=FINISH_TIMEOUT,
        )
    assert done.returncode == 0, done.stderr + scene.log("standby")
    result = json.loads(done.stdout)
    assert result["md5"] == scene.simulator.image_md5(scene.snapshot_id)
    assert stored_md5(scene.moto, scene.bucket, result) == result["md5"]


class RedisServer:
    """A redis-server of the test's own, with the append-only file on, that can be restarted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(shutil.which("redis-server") or "redis-server", "--port", str(self.port)),
                *("--bind", "127.0.0.1", "--dir", str(self.directory)),
                *("--appendonly", "yes", "--save", ""),
                *("--logfile", str(self.directory / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(lambda: self._answers(client), timeout=30, interval=0.05)
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        """Shut down as on SIGTERM: the append-only file is flushed, then the process ends."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (./dev.sh test installs it)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()


def test_a_job_survives_a_redis_restart_and_a_killed_worker(make_scene, own_redis):
    # One Redis as broker and job store, restarted under the running worker.
    scene = make_scene(own_redis.url, own_redis.url)
    scene.queue_throttled_job()
    with scene.worker("first") as first:
        before = scene.wait_for_checkpoint(SIZE // 5)["offset"]
        own_redis.stop()
        own_redis.start()
        # The transfer rode through the restart: checkpoints go on from where they were (the
        # job, its checkpoint and its lease came back from the append-only file).
        scene.wait_for_checkpoint(before + 4 * PART)
        _kill(first)
    left = _left(scene)
    assert left.offset < SIZE

    _assert_resumed(scene, left, scene.finish())


def test_a_job_waits_out_a_long_redis_outage_and_goes_on(make_scene, own_redis):
    # Redis (broker and job store) stays down longer than a lease: the worker cannot know
    # whether another took its job over, so its transfer stops, keeping its uploads. Its next
    # look must not be sent to the dead broker (it would be lost, and the job stuck): the
    # worker waits for Redis, then sends it, and finishes the job itself.
    scene = make_scene(own_redis.url, own_redis.url)
    # Smaller and slower: the transfer goes on for a few seconds before it stops, and it must
    # not end first: the lease may be lost up to SNAPARCHIVE_LEASE_TTL (11 s) after Redis went
    # down, when 80 MiB are still to come (20 s at this rate).
    scene.size, scene.rate = 100 * MiB + 4321, 4 * MiB
    scene.queue_throttled_job()
    with scene.worker("first"):
        scene.wait_for_checkpoint(scene.size // 5)
        own_redis.stop()
        wait_for(lambda: scene.simulator.downloads_sending(scene.snapshot_id) == 0, timeout=60)
        wait_for(lambda: "the job store is unreachable; waiting" in scene.log("first"), timeout=60)
        # What the stop left, seen before Redis is back and the job goes on; the checkpoint
        # right after (the job's next look comes a second later at the earliest).
        left = _left(scene, then=own_redis.start)
        scene.simulator.set_faults(None, snapshot_id=scene.snapshot_id)
        done = cli(
            scene.env,
            *("archive", scene.snapshot_id, "--zone", ZONE, "--wait", "--json"),
            timeout=FINISH_TIMEOUT,
        )
    assert done.returncode == 0, done.stderr + scene.log("first")
    # Its checkpoints of the seconds Redis was down were not saved: the resume downloads that
    # stretch again, but it finds those parts in the store and does not upload them again.
    _assert_resumed(scene, left, json.loads(done.stdout), saved_all=False)


def test_sigterm_checkpoints_and_another_worker_finishes(make_scene):
    scene = make_scene(REDIS_URL, REDIS_URL)
    scene.queue_throttled_job()
    with scene.worker("first", shutdown_timeout=SHUTDOWN_TIMEOUT) as first:
        scene.wait_for_checkpoint(STOP_AT)
        # As an operator or a container runtime stops it: SIGTERM to `snaparchive worker`.
        asked = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=SHUTDOWN_TIMEOUT + 30)
        took = time.monotonic() - asked
    # A functional bound, not a speed test: it must not overrun its shutdown timeout (the
    # slack is for dramatiq's once-a-second polling in its main and worker processes).
    assert took <= SHUTDOWN_TIMEOUT + 3, f"the worker took {took:.1f}s to stop"
    assert code == 0, scene.log("first")
    left = _left(scene)

    # Resumable, not failed: the parts in flight landed and are in the checkpoint, and the
    # lease is released for the next worker.
    record = scene.job()
    assert record["step"] == "transferring" and record["error"] is None
    assert 0 < left.offset < SIZE
    assert left.stored == set(range(1, left.parts_done + 1))
    client = scene.redis()
    assert not client.exists(scene.key("lease"))
    client.close()

    _assert_resumed(scene, left, scene.finish())


async def test_a_snapshot_asked_for_is_recorded_once_the_job_store_is_back(
    own_redis, simulator, s3_settings, small_transfer, caplog
):
    # The job store goes away while Exoscale makes the snapshot (its API asks to wait 2 s
    # first): failing the step then would ask for a second snapshot on the retry. The step
    # waits for the store instead, and records the one snapshot.
    from jobs.backup_steps import backup_snapshot
    from jobs.context import Context
    from tests.fixtures.simulator import signed_request
    from worker import backups
    from worker.jobstore import RedisJobStore
    from worker.policy import loads
    from worker.settings import Settings

    instance_id = str(uuid.uuid4())
    simulator.add_instance(instance_id, ZONE)
    policy = loads(
        f'[[policy]]\nname = "web"\nzone = "{ZONE}"\ninstances = ["{instance_id}"]\n'
        'schedule = "0 3 * * *"\nsnapshots_keep = 1\n[policy.keep]\nlast = 1\n'
    ).policies[0]
    settings = Settings(exoscale=simulator.settings(), s3=s3_settings, transfer=small_transfer)
    ctx = Context.create(settings, RedisJobStore(own_redis.url, namespace="outage"))
    try:
        await backups.start_run(ctx.store, "run-1", policy, [instance_id], "test")
        simulator.set_faults(Faults(rate_limits=1, retry_after=2))
        step = asyncio.create_task(backup_snapshot(ctx, "run-1", instance_id))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_redis.stop)
        await asyncio.sleep(3)
        await asyncio.to_thread(own_redis.start)
        following = await asyncio.wait_for(step, 60)
        state = await backups.load_instance(ctx.store, "run-1", instance_id)
    finally:
        await ctx.close()

    assert following is not None and following.step == "backup_await_snapshot"
    assert state is not None and state.operation_id is not None
    listed = signed_request(simulator, "GET", "/snapshot").json()["snapshots"]
    assert [s["instance"]["id"] for s in listed] == [instance_id]
    assert "the snapshot's operation" in caplog.text and "not recorded yet" in caplog.text
