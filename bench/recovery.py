"""Issue 14's figure: the time from a worker's SIGKILL to the first byte its successor downloads.

Each run uses the defaults of ``SNAPARCHIVE_HEARTBEAT_TIMEOUT`` and ``SNAPARCHIVE_LEASE_TTL``:

1. two ``snaparchive worker`` commands (one process, one thread each) on the Redis broker at
   127.0.0.1:6379 (a queue of the run's own), the image server's API and moto;
2. ``snaparchive archive`` queues an exported image (parts of 8 MiB: checkpoints come often);
   one worker takes it;
3. the download is throttled (:data:`RATE`) while the first worker runs, so that it is killed
   mid-download at a random moment of its lease's renewal cycle: once its first checkpoint is
   saved, after a random pause of up to a third of the lease TTL plus a second, the worker
   holding the transfer's lease gets SIGKILL (its whole process group); the other stands by;
4. the image server's byte count says when the dead connection is gone, and when the first
   byte goes to the new worker: the recovery time. The standby's log says when the job came
   back to it (its message, requeued after the heartbeat timeout, found the lease held);
5. ``archive --wait`` then follows the job to its verified end.

Nothing here decides anything: the figures are reported, medians over the runs.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.imageserver import KEY, SECRET, ZONE, Image, ImageServer
from bench.measure import median
from bench.moto import CREDENTIALS, MotoServer
from worker.settings import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_LEASE_TTL
from worker.units import MiB, format_size

SNAPARCHIVE = str(Path(sys.executable).with_name("snaparchive"))
#: A Redis database of the benchmark's own; each run's keys live under its queue name.
REDIS_URL = "redis://127.0.0.1:6379/15"
#: The download's pace until the kill (then full speed).
RATE = 8 * MiB
#: The part size of the runs (the timings do not depend on it).
PART_SIZE = 8 * MiB
#: Seconds any one wait of a run may take before the run is given up.
PATIENCE = 180.0
#: The section's heading in bench/RESULTS.md.
HEADING = "## Killed worker: recovery time (issue 14)"
T = TypeVar("T")
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


@dataclass
class RecoveryRun:
    """One kill.

    Parameters:
      seconds: From the SIGKILL to the first byte served to the new worker.
      back: From the SIGKILL to the job's message reaching the standby (``None``: the lease had
        expired already, so the standby took the job over at once and logged no wait).
      lease_left: Seconds the dead worker's lease had left at the kill.
      killed_at: Bytes checkpointed when the worker was killed.
      error: What went wrong, if something did.
    """

    seconds: float = float("nan")
    back: float | None = None
    lease_left: float = float("nan")
    killed_at: int = 0
    error: str | None = None


@dataclass
class Recovery:
    """Every run of the measurement, with the timings it ran with."""

    size: int
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    lease_ttl: int = DEFAULT_LEASE_TTL
    runs: list[RecoveryRun] = field(default_factory=list)
    skipped: str | None = None

    @property
    def good(self) -> list[RecoveryRun]:
        return [run for run in self.runs if run.error is None]


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _wait(predicate: Callable[[], T], what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {PATIENCE:.0f} s")


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def redis_problem() -> str | None:
    """Why the measurement cannot run (no Redis), or ``None``."""
    import redis

    client = _redis()
    try:
        client.ping()
    except redis.RedisError as error:
        return f"skipped: no Redis at {REDIS_URL} ({type(error).__name__})"
    finally:
        client.close()
    return None


@contextlib.contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "a") as stderr:
        process = subprocess.Popen(
            [SNAPARCHIVE, "worker", "--processes", "1", "--threads", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _says(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


def _first_stamp(log: Path, text: str) -> float | None:
    """The wall-clock time of the first line of ``log`` that holds ``text``."""
    for line in log.read_text(errors="replace").splitlines():
        found = _STAMP.match(line)
        if found and text in line:
            moment = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return moment.timestamp()
    return None


def one_run(server: ImageServer, moto: MotoServer, image: Image, workdir: Path) -> RecoveryRun:
    """Kill the worker transferring ``image`` and time its successor's first byte."""
    figure = RecoveryRun()
    queue = f"bench-recovery-{uuid.uuid4().hex[:10]}"
    bucket = moto.new_bucket()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAPARCHIVE_", "EXOSCALE_"))}
    env.update(
        CREDENTIALS,
        EXOSCALE_API_ENDPOINT=server.endpoint,
        EXOSCALE_API_KEY=KEY,
        EXOSCALE_API_SECRET=SECRET,
        SNAPARCHIVE_S3_ENDPOINT=moto.endpoint,
        SNAPARCHIVE_S3_BUCKET=bucket,
        SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS=server.host,
        SNAPARCHIVE_BROKER_URL=REDIS_URL,
        SNAPARCHIVE_QUEUE=queue,
        # Small parts, so checkpoints come often and the kill lands mid-download.
        SNAPARCHIVE_PART_SIZE=str(PART_SIZE),
    )
    logs = [workdir / f"{queue}-{n}.log" for n in (0, 1)]
    client = _redis()
    key = f"{queue}:%s:{ZONE}:{image.id}"
    server.throttle(image, RATE)
    try:
        with _worker(env, logs[0]) as first, _worker(env, logs[1]) as second:
            for log in logs:
                _wait(functools.partial(_says, log, "is ready for action"), "worker start")
            queued = subprocess.run(
                [SNAPARCHIVE, "archive", image.id, "--zone", ZONE],
                env=env,
                capture_output=True,
                text=True,
                timeout=PATIENCE,
            )
            if queued.returncode != 0:
                raise RuntimeError(f"archive: {queued.stderr.strip()[-300:]}")

            def checkpointed() -> int:
                raw = client.get(key % "checkpoint")
                return json.loads(raw)["offset"] if raw else 0

            _wait(checkpointed, "a first checkpoint")
            # Kills come at any moment: here anywhere in a renewal cycle of the lease.
            time.sleep(random.uniform(0, DEFAULT_LEASE_TTL / 3 + 1))
            figure.killed_at = checkpointed()
            if figure.killed_at > image.size - 4 * PART_SIZE:
                # Downloaded to the end already: the successor would have nothing to read.
                raise RuntimeError(f"the transfer was at {figure.killed_at} bytes, too far")
            # The lease's owner token is host:pid:...: the worker process of one of the two.
            owner = client.get(key % "lease").decode()
            holder = first if os.getpgid(int(owner.split(":")[1])) == first.pid else second
            standby_log = logs[1] if holder is first else logs[0]
            os.killpg(holder.pid, signal.SIGKILL)
            killed = time.time()
            server.throttle(image, None)
            figure.lease_left = max(0, client.pttl(key % "lease")) / 1000
            holder.wait()
            # The dead connection is noticed at the server's next write; then nothing moves
            # until the new worker's first byte.
            _wait(lambda: server.sending(image) == 0, "the dead download to end", 0.01)
            before = server.served(image)
            _wait(lambda: server.served(image) > before, "the new worker's first byte", 0.01)
            figure.seconds = time.time() - killed
            back = _first_stamp(standby_log, "another worker holds the lease")
            figure.back = back - killed if back is not None and back >= killed - 1 else None
            done = subprocess.run(
                [SNAPARCHIVE, "archive", image.id, "--zone", ZONE, "--wait", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=PATIENCE,
            )
            outcome = json.loads(done.stdout) if done.returncode == 0 else {}
            if outcome.get("md5") != image.md5:
                raise RuntimeError(f"the job did not end verified: {done.stderr.strip()[-300:]}")
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, OSError) as error:
        figure.error = str(error)
    finally:
        keys = list(client.scan_iter(f"{queue}:*")) + list(client.scan_iter(f"dramatiq:{queue}*"))
        if keys:
            client.delete(*keys)
        client.close()
        moto.drop_bucket(bucket)
        server.throttle(image, None)
    return figure


def measure(
    server: ImageServer, moto: MotoServer, image: Image, runs: int, workdir: Path
) -> Recovery:
    """``runs`` kills of a worker transferring ``image`` (see the module docstring)."""
    recovery = Recovery(image.size)
    recovery.skipped = redis_problem()
    if recovery.skipped:
        _log(f"recovery: {recovery.skipped}")
        return recovery
    for number in range(1, runs + 1):
        run = one_run(server, moto, image, workdir)
        recovery.runs.append(run)
        status = "ok" if run.error is None else f"FAILED: {run.error}"
        _log(
            f"recovery run {number}/{runs}: first byte {run.seconds:.1f} s after the kill "
            f"(lease left {run.lease_left:.1f} s), {status}"
        )
    return recovery


def section(recovery: Recovery | None, note: str | None = None) -> list[str]:
    """The report's section (Markdown lines, heading included), with ``note`` (when and how
    it was measured, for a section rewritten alone) first."""
    lines = [HEADING, ""]
    if note:
        lines += [note, ""]
    if recovery is None:
        return [*lines, "Not run (`--no-recovery`)."]
    if recovery.skipped:
        return [*lines, recovery.skipped.capitalize() + "."]
    good = recovery.good
    lines += [
        f"Two `snaparchive worker` commands (one process, one thread each) on the Redis broker, "
        f"a {format_size(recovery.size)} image from the image server into moto, the defaults "
        f"`SNAPARCHIVE_HEARTBEAT_TIMEOUT={recovery.heartbeat_timeout}` and "
        f"`SNAPARCHIVE_LEASE_TTL={recovery.lease_ttl}`. At a random moment after its first "
        f"checkpoint (up to a third of the lease TTL and a second later: anywhere in the lease's "
        f"renewal cycle), the worker holding the transfer's lease gets SIGKILL; the clock runs "
        "from the kill to the first byte the image server sends the other worker "
        "(`bench.recovery`). Every run then follows the job to its verified end.",
        "",
        "| run | kill → first byte of the new worker | kill → job back at the standby "
        "| lease left at the kill | checkpointed at the kill |",
        "|--:|--:|--:|--:|--:|",
    ]
    for number, run in enumerate(recovery.runs, 1):
        if run.error is not None:
            lines.append(f"| {number} | failed: {run.error.replace('|', '/')} | | | |")
            continue
        back = f"{run.back:.1f} s" if run.back is not None else "- (found the lease free)"
        lines.append(
            f"| {number} | {run.seconds:.1f} s | {back} | {run.lease_left:.1f} s "
            f"| {format_size(run.killed_at)} |"
        )
    if good:
        seconds = [run.seconds for run in good]
        lines += [
            "",
            f"**Median {median(seconds):.1f} s** from the kill to the first byte of the new "
            f"worker over {len(good)} runs (min {min(seconds):.1f} s, max {max(seconds):.1f} s; "
            f"the target is at most 20 s). The job comes back to the standby after the "
            f"heartbeat timeout plus the queue maintenance of a live worker (one broker call in "
            f"four); the standby then waits for the dead worker's lease, which had between two "
            f"thirds of its TTL and all of it left (it is renewed every third), plus "
            f"`LEASE_MARGIN` (1 s) and the delayed message's trip.",
        ]
    return lines


def splice(report: str, lines: list[str]) -> str:
    """``report`` (bench/RESULTS.md) with its recovery section replaced by ``lines``, or
    inserted before ``## Commands``."""
    block = "\n".join(lines) + "\n\n"
    start = report.find(HEADING)
    if start >= 0:
        end = report.find("\n## ", start + len(HEADING))
        end = len(report) if end < 0 else end + 1
        return report[:start] + block + report[end:]
    anchor = report.find("## Commands")
    if anchor < 0:
        return report.rstrip("\n") + "\n\n" + block
    return report[:anchor] + block + report[anchor:]
