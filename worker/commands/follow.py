"""Following a job to its end, and printing its outcome."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from typing import Any

from worker.errors import EXIT_FAILED, EXIT_OK, EXIT_VERIFICATION, SnaparchiveError
from worker.jobstore import ARCHIVE, STORE_UNREACHABLE, JobRecord, JobStore, Step
from worker.progress import ProgressDisplay
from worker.units import format_size

#: Seconds :func:`follow` keeps looking at a job store that does not answer before it gives up
#: (by default; ``archive --wait`` gives it five lease TTLs when that is longer). A Redis
#: restart or failover takes seconds; the job goes on meanwhile.
UNREACHABLE_PATIENCE = 300.0
#: Seconds one look may take before the store counts as unreachable (a network that drops
#: packets instead of refusing connections).
LOOK_TIMEOUT = 10.0
#: Longest pause between looks at a store that does not answer.
BACKOFF_MAX = 10.0


class FollowError(SnaparchiveError):
    """The job cannot be followed to its end: its record is gone, or the store stayed away."""


# "queued" has no note: ``archive`` says so itself when it queues the job.
STEP_NOTES = {
    Step.AWAITING_EXPORT: "waiting for Exoscale to export the snapshot",
    Step.TRANSFERRING: "streaming, verifying and archiving",
    Step.JOINING: "joining the archive's segments into one object (server-side)",
    Step.REGISTERING: "waiting for Exoscale to register the template",
}
#: Steps whose progress (``bytes_done`` of ``bytes_total``) is shown.
_PROGRESSING = (Step.TRANSFERRING, Step.JOINING)


async def follow(
    store: JobStore,
    zone: str,
    snapshot_id: str,
    display: ProgressDisplay | None,
    interval: float = 0.5,
    patience: float = UNREACHABLE_PATIENCE,
    kind: str = ARCHIVE,
) -> JobRecord:
    """Poll a job until it ends, showing its steps and progress; return its last record.

    Parameters:
      store, zone, snapshot_id: The job.
      display: Where steps and progress go (``None``: nowhere).
      interval: Seconds between looks (default 0.5).
      patience: Seconds to ride through a job store that does not answer, looking again with
        backoff (default :data:`UNREACHABLE_PATIENCE`); said once on stderr when it starts.
      kind: The job's kind (default an archive).

    Raises:
      FollowError: The record is gone (a Redis restart without persistence), or the store did
        not answer for ``patience`` seconds.
    """
    last_step = None
    unreachable_since: float | None = None
    pause = interval
    while True:
        try:
            record = await asyncio.wait_for(store.get(zone, snapshot_id, kind=kind), LOOK_TIMEOUT)
        except STORE_UNREACHABLE as error:
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
                _say(
                    display,
                    f"{zone}/{snapshot_id}: the job store is unreachable "
                    f"({str(error) or type(error).__name__}); looking again for up to "
                    f"{patience:.0f}s",
                )
            elif now - unreachable_since >= patience:
                if display is not None:
                    display.close()
                raise FollowError(
                    f"the job store did not answer for {patience:.0f}s; the job may still be "
                    f"running: see snaparchive status {snapshot_id}"
                ) from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, BACKOFF_MAX)
            continue
        if unreachable_since is not None:
            _say(display, f"{zone}/{snapshot_id}: the job store answers again")
            unreachable_since, pause = None, interval
        if record is None:
            if display is not None:
                display.close()
            raise FollowError(
                f"the job of {zone}/{snapshot_id} is gone from the job store (was Redis "
                "restarted without persistence?); archiving it again adopts what is archived"
            )
        if display is not None:
            if record.step != last_step and record.step in STEP_NOTES:
                display.note(f"{zone}/{snapshot_id}: {STEP_NOTES[record.step]}")
            if record.step in _PROGRESSING and record.bytes_total:
                display.update(record.bytes_done, record.bytes_total)
        last_step = record.step
        if not record.active:
            if display is not None:
                display.close()
            return record
        await asyncio.sleep(interval)


async def run_here(
    job: Coroutine[Any, Any, object], watch: Coroutine[Any, Any, JobRecord]
) -> JobRecord:
    """Run a job's steps in this process while ``watch`` (a :func:`follow`) shows them; return
    the record ``watch`` ends with.

    What the job raises is raised. Cancelled (Ctrl-C), both tasks are cancelled and awaited:
    the job's steps save what they have (a transfer its checkpoint) and release their lease,
    so a later run resumes it.
    """
    running = asyncio.create_task(job)
    watching = asyncio.create_task(watch)
    try:
        done, _ = await asyncio.wait({running, watching}, return_when=asyncio.FIRST_COMPLETED)
        if running in done:
            await running  # raises what the job raised, if anything
        record = await watching
        await running
        return record
    finally:
        for task in (running, watching):
            task.cancel()
        await asyncio.gather(running, watching, return_exceptions=True)


def _say(display: ProgressDisplay | None, text: str) -> None:
    if display is not None:
        display.note(text)
    else:
        print(text, file=sys.stderr, flush=True)


def outcome_json(record: JobRecord) -> dict[str, Any]:
    """The one JSON object ``archive --json`` prints when a job ends (and ``status`` and
    ``cancel`` print of any job): ``job``, ``zone``, ``snapshot_id``, ``status``, an
    archive's result beside them; another kind's (named by ``kind``) under ``result``, as its
    own ``zone`` and ``snapshot_id`` (a template's zone, Genesis' snapshot) are not the job's."""
    body: dict[str, Any] = {
        "job": f"{record.zone}/{record.snapshot_id}",
        **({"kind": record.kind} if record.kind != ARCHIVE else {}),
        "zone": record.zone,
        "snapshot_id": record.snapshot_id,
        "status": record.step,
    }
    if record.result and record.kind == ARCHIVE:
        body.update(record.result)
    elif record.result:
        body["result"] = record.result
    if record.error:
        body["error"] = record.error
    if record.error_kind:
        body["error_kind"] = record.error_kind
    return body


def report(record: JobRecord, as_json: bool) -> int:
    """Print a finished job's outcome; return the exit status: 0 only when archived, 3 when
    it failed verification (its ``error_kind``), 1 otherwise."""
    if as_json:
        print(json.dumps(outcome_json(record), indent=2))
    elif record.step == Step.DONE and record.result:
        result = record.result
        print(
            f"archived {record.zone}/{record.snapshot_id}: {format_size(result['size'])}, "
            f"md5 {result['md5']} verified"
        )
        print(f"  manifest: s3://{result['bucket']}/{result['manifest']}")
        for obj in result["objects"]:
            print(f"  object:   s3://{result['bucket']}/{obj['key']} ({format_size(obj['size'])})")
    if record.step == Step.DONE:
        return EXIT_OK
    if record.error_kind == "verification":
        print(f"snaparchive: verification failed: {record.error}", file=sys.stderr)
        return EXIT_VERIFICATION
    print(f"snaparchive: error: {record.error or record.step}", file=sys.stderr)
    return EXIT_FAILED
