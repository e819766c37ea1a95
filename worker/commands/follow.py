"""Following a job to its end, and printing its outcome."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from worker.jobstore import JobRecord, JobStore
from worker.progress import ProgressDisplay
from worker.units import format_size

# "queued" has no note: ``archive`` says so itself when it queues the job.
STEP_NOTES = {
    "exporting": "starting the export",
    "awaiting-export": "waiting for Exoscale to export the snapshot",
    "transferring": "streaming, verifying and archiving",
}


async def follow(
    store: JobStore,
    zone: str,
    snapshot_id: str,
    display: ProgressDisplay | None,
    interval: float = 0.5,
) -> JobRecord:
    """Poll a job until it ends, showing its steps and progress; return its last record."""
    last_step = None
    while True:
        record = await store.get(zone, snapshot_id)
        if record is None:
            raise LookupError(f"no job for {zone}/{snapshot_id}")
        if display is not None:
            if record.step != last_step and record.step in STEP_NOTES:
                display.note(f"{zone}/{snapshot_id}: {STEP_NOTES[record.step]}")
            if record.step == "transferring" and record.bytes_total:
                display.update(record.bytes_done, record.bytes_total)
        last_step = record.step
        if not record.active:
            if display is not None:
                display.close()
            return record
        await asyncio.sleep(interval)


def outcome_json(record: JobRecord) -> dict[str, Any]:
    """The one JSON object ``archive --json`` prints when a job ends."""
    body: dict[str, Any] = {
        "job": f"{record.zone}/{record.snapshot_id}",
        "zone": record.zone,
        "snapshot_id": record.snapshot_id,
        "status": record.step,
    }
    if record.result:
        body.update(record.result)
    if record.error:
        body["error"] = record.error
    return body


def report(record: JobRecord, as_json: bool) -> int:
    """Print a finished job's outcome; return the exit status (0 only when archived)."""
    if as_json:
        print(json.dumps(outcome_json(record), indent=2))
    elif record.step == "done" and record.result:
        result = record.result
        print(
            f"archived {record.zone}/{record.snapshot_id}: {format_size(result['size'])}, "
            f"md5 {result['md5']} verified"
        )
        print(f"  manifest: s3://{result['bucket']}/{result['manifest']}")
        for obj in result["objects"]:
            print(f"  object:   s3://{result['bucket']}/{obj['key']} ({format_size(obj['size'])})")
    if record.step == "done":
        return 0
    print(f"snaparchive: error: {record.error or record.step}", file=sys.stderr)
    return 1
