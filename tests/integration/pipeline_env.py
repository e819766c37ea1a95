"""Helpers for end-to-end tests: the environment of a pipeline on the simulator and moto,
worker subprocesses, and reading an archive back from the bucket."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import boto3

from worker.settings import MIN_LEASE_TTL

SNAPARCHIVE = str(Path(sys.executable).with_name("snaparchive"))
ZONE = "ch-gva-2"


def pipeline_env(simulator, moto_endpoint: str, bucket: str, broker_url: str, redis_url: str):
    """The environment a worker and the CLI need to archive from the simulator into moto."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAPARCHIVE_", "EXOSCALE_"))}
    env.update(
        EXOSCALE_API_ENDPOINT=simulator.endpoint,
        EXOSCALE_API_KEY=simulator.key,
        EXOSCALE_API_SECRET=simulator.secret,
        SNAPARCHIVE_S3_ENDPOINT=moto_endpoint,
        SNAPARCHIVE_S3_BUCKET=bucket,
        SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS="127.0.0.1",
        SNAPARCHIVE_BROKER_URL=broker_url,
        SNAPARCHIVE_REDIS_URL=redis_url,
        SNAPARCHIVE_PART_SIZE="5MiB",
        # The shortest lease allowed: a dead worker's job is taken over soonest.
        SNAPARCHIVE_LEASE_TTL=str(MIN_LEASE_TTL),
        # Test runs sharing a broker (a developer's and CI's) never take each other's jobs.
        SNAPARCHIVE_QUEUE=f"test-{uuid.uuid4().hex[:12]}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


def sigint_default() -> None:
    """``preexec_fn`` of a child a test sends SIGINT: SIGINT back to its default action. A
    suite started in the background by a script (``pytest &``) runs with SIGINT ignored, and
    children inherit that; Python then installs no handler for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``snaparchive`` console script."""
    return subprocess.run(
        [SNAPARCHIVE, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def worker_process(
    env: dict[str, str],
    threads: int = 2,
    *,
    processes: int = 1,
    shutdown_timeout: int = 10,
    log: Path | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    options: Sequence[str] = (),
    before: Sequence[str] = (),
) -> Iterator[subprocess.Popen]:
    """A ``snaparchive worker`` subprocess in its own process group, stopped at the end.

    Parameters:
      env: Its environment (:func:`pipeline_env`).
      threads, processes, shutdown_timeout: Its options.
      log: A file for its stderr (its log), appended to; default: discarded.
      stop_signal: SIGTERM (default) to stop it gracefully at the end, SIGKILL when nothing
        is left to wait for.
      options: More options of ``worker`` (``--metrics-port``), after it.
      before: Options of ``snaparchive`` itself (``-vv``), before ``worker``.

    At the end a worker still running gets ``stop_signal`` (SIGTERM to the main process, which
    passes it on to its worker processes), then SIGKILL to the whole group after 30 s. A test
    may stop or kill it earlier itself.
    """
    stderr = open(log, "a") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [
            SNAPARCHIVE,
            *before,
            "worker",
            *options,
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            "--shutdown-timeout",
            str(shutdown_timeout),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=sigint_default,
    )
    try:
        yield process
    finally:
        if process.poll() is None and stop_signal == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        # Whatever is left of the group (all of it after a timeout, orphans after a SIGKILL).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if log is not None:
            stderr.close()


def stored_md5(moto_endpoint: str, bucket: str, result: dict) -> str:
    """MD5 of the archive's objects read back from the bucket and concatenated in order."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    digest = hashlib.md5()
    for obj in result["objects"]:
        body = s3.get_object(Bucket=bucket, Key=obj["key"])["Body"]
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def bucket_is_clean(moto_endpoint: str, bucket: str) -> bool:
    """No object and no open multipart upload in ``bucket``."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return not objects and not uploads


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def status_json(env: dict[str, str], snapshot_id: str) -> dict | None:
    done = cli(env, "status", snapshot_id, "--json")
    return json.loads(done.stdout) if done.returncode == 0 else None


def forget_queue(env: dict[str, str]) -> None:
    """Delete what a test left in Redis under its queue: job store keys and, with the Redis
    broker, its queues (messages nobody consumed)."""
    import redis

    queue = env["SNAPARCHIVE_QUEUE"]
    urls = {env["SNAPARCHIVE_REDIS_URL"], env["SNAPARCHIVE_BROKER_URL"]}
    for url in (u for u in urls if u.startswith("redis")):
        client = redis.Redis.from_url(url)
        try:
            patterns = (f"{queue}:*", f"dramatiq:{queue}*", f"dramatiq:__acks__.*.{queue}*")
            keys = [key for pattern in patterns for key in client.scan_iter(pattern)]
            if keys:
                client.delete(*keys)
        except redis.ConnectionError:
            pass  # a server of the test's own, stopped already
        finally:
            client.close()
