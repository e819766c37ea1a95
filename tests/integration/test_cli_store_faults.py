"""The CLI against a job store and a broker that fail: records that are lost or unreadable,
a Redis that restarts under ``archive --wait``, a broker that is down when a job is queued, a
done record whose archive was deleted, and ``archive --local`` taking part in the shared store
(visible job, lease that ``gc`` respects). Real Redis, the simulator, moto; the CLI runs as
subprocesses."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from tests.integration.pipeline_env import (
    SNAPARCHIVE,
    ZONE,
    cli,
    forget_queue,
    pipeline_env,
    status_json,
    wait_for,
)
from tests.integration.test_crash_recovery import own_redis  # noqa: F401  (fixture)
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/6"
RESULT = {"bucket": "b", "manifest": "m", "md5": "0" * 32, "size": 1, "objects": []}


@pytest.fixture
def env(simulator, moto_endpoint, s3_bucket):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, REDIS_URL, REDIS_URL)
    yield env
    forget_queue(env)


@pytest.fixture
def client():
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once closed


def _job_key(env, snapshot_id: str) -> str:
    return f"{env['SNAPARCHIVE_QUEUE']}:job:{ZONE}:{snapshot_id}"


def _write_record(client: redis.Redis, env, snapshot_id: str, fields: dict) -> None:
    """Write job record fields as a process other than ours would (raw values)."""
    client.hset(_job_key(env, snapshot_id), mapping=fields)
    client.zadd(f"{env['SNAPARCHIVE_QUEUE']}:jobs", {f"{ZONE}:{snapshot_id}": time.time()})


def _record(snapshot_id: str, **changes) -> dict[str, str]:
    """A whole, readable record, JSON-encoded as the store writes it."""
    now = time.time()
    values = {
        "zone": ZONE,
        "snapshot_id": snapshot_id,
        "step": "queued",
        "created_at": now,
        "updated_at": now,
        "bytes_done": 0,
        "cancel_requested": False,
        **changes,
    }
    return {name: json.dumps(value) for name, value in values.items()}


def _messages(env) -> list[dict]:
    """The messages waiting in the Redis broker's queue of the test."""
    client = redis.Redis.from_url(env["SNAPARCHIVE_BROKER_URL"])
    try:
        raw = client.hvals(f"dramatiq:{env['SNAPARCHIVE_QUEUE']}.msgs")
    finally:
        client.close()
    return [json.loads(message) for message in raw]


# -- records lost or unreadable ---------------------------------------------------------------


def test_commands_report_an_unreadable_record_in_one_line(env, client):
    # What a progress write left after a Redis restart without persistence (before updates
    # were guarded), and a record with a value that is not JSON.
    partial, garbled = str(uuid.uuid4()), str(uuid.uuid4())
    _write_record(client, env, partial, {"bytes_done": "5", "bytes_total": "10"})
    _write_record(client, env, garbled, {**_record(garbled), "result": "{not json"})

    listed = cli(env, "status")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    for snapshot_id in (partial, garbled):
        [row] = [line for line in listed.stdout.splitlines() if snapshot_id in line]
        assert "unreadable" in row and "archiving it again replaces it" in row

    one = cli(env, "status", partial, "--json")
    assert one.returncode == 0, one.stderr
    body = json.loads(one.stdout)
    assert body["status"] == "unreadable"
    assert body["error"].startswith("unreadable job record (missing zone, snapshot_id, step")

    cancelled = cli(env, "cancel", garbled)
    assert cancelled.returncode == 1
    [line] = _lines(cancelled.stderr, 1)
    assert "unreadable job record (invalid result)" in line

    swept = cli(env, "gc", "--dry-run")
    assert swept.returncode == 0, swept.stderr
    assert "0 open upload(s)" in swept.stdout and "Traceback" not in swept.stderr

    # A new claim replaces it: the job is queued again.
    queued = cli(env, "archive", partial, "--zone", ZONE)
    assert queued.returncode == 0, queued.stderr
    assert status_json(env, partial)["status"] == "queued"


def test_archive_wait_whose_record_vanishes_ends_in_one_line(env, client, tmp_path):
    snapshot_id = str(uuid.uuid4())
    with _background(env, tmp_path, "archive", snapshot_id, "--zone", ZONE, "--wait") as run:
        wait_for(lambda: client.exists(_job_key(env, snapshot_id)), timeout=60)
        client.delete(_job_key(env, snapshot_id))  # Redis restarted without persistence
        code = run.process.wait(timeout=60)
    assert code == 1
    queued, error = _lines(run.stderr(), 2)
    assert queued == f"{ZONE}/{snapshot_id}: queued"
    assert error.startswith(f"snaparchive: error: the job of {ZONE}/{snapshot_id} is gone")


def _lines(text: str, count: int) -> list[str]:
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == count, text
    return lines


class _Run:
    """A command running in the background (:func:`_background`)."""

    def __init__(self, process: subprocess.Popen, stderr: Path) -> None:
        self.process = process
        self._stderr = stderr

    def stderr(self) -> str:
        """What it wrote to stderr so far."""
        return self._stderr.read_text()


@contextlib.contextmanager
def _background(env, tmp_path: Path, *args: str) -> Iterator[_Run]:
    """``snaparchive ARGS`` in the background, its stderr in a file; killed at the end if it
    is still running."""
    path = tmp_path / f"stderr-{uuid.uuid4().hex[:6]}"
    with open(path, "w") as stderr:
        process = subprocess.Popen(
            [SNAPARCHIVE, *args], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            yield _Run(process, path)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()


# -- a Redis that restarts under archive --wait -----------------------------------------------


def test_archive_wait_rides_through_a_redis_restart(
    simulator,
    moto_endpoint,
    s3_bucket,
    own_redis,  # noqa: F811
    tmp_path,
):
    env = pipeline_env(simulator, moto_endpoint, s3_bucket, own_redis.url, own_redis.url)
    snapshot_id = str(uuid.uuid4())
    key = _job_key(env, snapshot_id)
    manifest = f"snaparchive/exoscale/{ZONE}/{snapshot_id}/manifest.json"
    with _background(env, tmp_path, "archive", snapshot_id, "--zone", ZONE, "--wait") as run:
        with contextlib.closing(redis.Redis.from_url(own_redis.url)) as own:
            wait_for(lambda: own.exists(key), timeout=60)
        own_redis.stop()
        wait_for(lambda: "unreachable" in run.stderr() or run.process.poll() is not None)
        assert run.process.poll() is None, run.stderr()  # still following
        own_redis.start()  # the record comes back from the append-only file
        with contextlib.closing(redis.Redis.from_url(own_redis.url)) as own:
            # A worker finishes the job meanwhile.
            result = json.dumps({**RESULT, "manifest": manifest})
            own.hset(key, mapping={"step": '"done"', "result": result})
        code = run.process.wait(timeout=120)
        out = run.process.stdout.read()

    assert code == 0, run.stderr()
    assert f"manifest: s3://b/{manifest}" in out
    queued, unreachable, back = _lines(run.stderr(), 3)
    assert queued == f"{ZONE}/{snapshot_id}: queued"
    assert unreachable.startswith(f"{ZONE}/{snapshot_id}: the job store is unreachable (")
    assert back == f"{ZONE}/{snapshot_id}: the job store answers again"


# -- a broker that is down when a job is queued -----------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_send_that_fails_leaves_no_claimed_job(env, scheme):
    snapshot_id = str(uuid.uuid4())
    down = {**env, "SNAPARCHIVE_BROKER_URL": f"{scheme}://127.0.0.1:{_closed_port()}/0"}

    failed = cli(down, "archive", snapshot_id, "--zone", ZONE)

    assert failed.returncode == 1
    [line] = _lines(failed.stderr, 1)
    assert line.startswith(f"snaparchive: error: cannot queue {ZONE}/{snapshot_id}: ")
    assert status_json(env, snapshot_id) is None  # the claim was undone
    # The broker is back: the next call queues it.
    queued = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["note"] == "queued"
    assert [m["args"] for m in _messages(env)] == [[ZONE, snapshot_id]]


def test_a_queued_job_without_a_message_is_sent_again(env, client):
    # A claim whose send never completed (the process died between the two).
    snapshot_id = str(uuid.uuid4())
    _write_record(client, env, snapshot_id, _record(snapshot_id))

    again = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")

    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert body["status"] == "queued"
    assert body["note"] == "sent again: no message was ever sent for the job (queued)"
    assert [(m["actor_name"], m["args"]) for m in _messages(env)] == [
        ("start_export", [ZONE, snapshot_id])
    ]
    sent_at = status_json(env, snapshot_id)  # readable, and the send is noted
    assert sent_at["status"] == "queued"
    assert json.loads(client.hget(_job_key(env, snapshot_id), "sent_at")) > 0

    # Its message is on its way now: a later call joins the job without sending another.
    joined = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    assert json.loads(joined.stdout)["note"] == "joined the running job (queued)"
    assert len(_messages(env)) == 1

    # Still queued long after its message: the message may be lost; it is sent again.
    client.hset(_job_key(env, snapshot_id), "sent_at", json.dumps(time.time() - 3600))
    late = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    assert json.loads(late.stdout)["note"] == "sent again: still queued 10 min after its message"
    assert len(_messages(env)) == 2


# -- a done record whose archive was deleted --------------------------------------------------


def test_a_done_job_whose_archive_is_gone_is_archived_again(
    env, simulator, moto_endpoint, s3_bucket, s3
):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    made = cli(env, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert made.returncode == 0, made.stderr
    manifest = json.loads(made.stdout)["manifest"]
    assert status_json(env, snapshot_id)["status"] == "done"  # --local used the shared store

    kept = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["note"] == "already archived"
    assert _messages(env) == []

    s3.delete_object(Bucket=s3_bucket, Key=manifest)
    again = cli(env, "archive", snapshot_id, "--zone", ZONE, "--json")

    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert body["status"] == "queued"
    assert body["note"] == "its archive is gone from the bucket: archiving it again"
    assert [m["args"] for m in _messages(env)] == [[ZONE, snapshot_id]]
    # No worker runs here: a local run joins the queued job and makes the archive again.
    remade = cli(env, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert remade.returncode == 0, remade.stderr
    assert json.loads(remade.stdout)["manifest"] == manifest
    s3.head_object(Bucket=s3_bucket, Key=manifest)
    assert status_json(env, snapshot_id)["status"] == "done"


# -- archive --local in the shared store; gc and leases ---------------------------------------


def _open_upload(s3, bucket: str, key: str) -> str:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    return upload_id


def _gc_line(output: str, snapshot_id: str) -> str:
    [line] = [line for line in output.splitlines() if snapshot_id in line]
    return line


def test_gc_keeps_an_upload_whose_archive_is_leased(env, client, s3, s3_bucket):
    # A transfer the job store has no active job for (a --local run, a job record lost with
    # Redis) but whose lease is live.
    snapshot_id = str(uuid.uuid4())
    _open_upload(s3, s3_bucket, f"snaparchive/exoscale/{ZONE}/{snapshot_id}/image")
    lease = f"{env['SNAPARCHIVE_QUEUE']}:lease:{ZONE}:{snapshot_id}"
    client.set(lease, "host:1:run", px=60_000)

    swept = cli(env, "gc", "--older-than", "0")

    assert swept.returncode == 0, swept.stderr
    assert "kept: leased by a transfer" in _gc_line(swept.stdout, snapshot_id)
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    client.delete(lease)  # the transfer ended (or died and its lease expired)
    swept = cli(env, "gc", "--older-than", "0")
    assert "aborted" in _gc_line(swept.stdout, snapshot_id)
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_a_local_run_shows_in_status_and_holds_the_lease(env, client, simulator, tmp_path):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 12 * MiB, zone=ZONE, state="exported")
    simulator.set_faults(Faults(slow_rate=4 * MiB), snapshot_id=snapshot_id)
    lease = f"{env['SNAPARCHIVE_QUEUE']}:lease:{ZONE}:{snapshot_id}"
    args = ("archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    with _background(env, tmp_path, *args) as run:
        wait_for(lambda: client.exists(lease) or run.process.poll() is not None, timeout=60)
        assert client.pttl(lease) > 0, run.stderr()
        seen = status_json(env, snapshot_id)
        assert seen["status"] in ("transferring", "done")
        code = run.process.wait(timeout=120)
        out = run.process.stdout.read()
    assert code == 0, run.stderr()
    assert json.loads(out)["status"] == "done"
    assert status_json(env, snapshot_id)["status"] == "done"
    assert not client.exists(lease)  # released at the end


def test_a_local_run_without_redis_says_so_once(env, simulator):
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 6 * MiB, zone=ZONE)
    alone = {**env, "SNAPARCHIVE_REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"}

    done = cli(alone, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "done"
    assert "Traceback" not in done.stderr
    [warning] = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warning.startswith("snaparchive: warning: the job store (SNAPARCHIVE_REDIS_URL)")
    assert "no lease protects this run" in warning
