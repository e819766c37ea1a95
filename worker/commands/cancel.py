"""``snaparchive cancel``: stop a job cleanly and abort the uploads it left open.

An archive job's multipart uploads are aborted; a restore job's temporary joined object (or
its upload) is deleted. A registration Exoscale has already started is not stopped by it:
a template that still appears can be deleted with ``exo compute instance-template delete``.
When a snapshot has jobs of both kinds, the running one is cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.jobstore import ARCHIVE, RedisJobStore, Step, find_jobs
from worker.settings import load

#: Seconds to wait for the working worker to stop, at least.
ACK_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument(
        "--zone", type=types.zone, help="the snapshot's zone (default: the zone of its job)"
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_cancel(args.zone, args.snapshot_id))


async def _cancel(zone: str | None, snapshot_id: str) -> int:
    from jobs import restore_steps, steps

    settings = load()
    settings.s3.require_bucket()
    store = RedisJobStore.for_settings(settings)
    try:
        jobs = await find_jobs(store, snapshot_id, zone)
        record = jobs[0] if jobs else None
        if record is None:
            where = f"{zone}/{snapshot_id}" if zone else f"snapshot {snapshot_id}"
            print(f"snaparchive: error: no job for {where}", file=sys.stderr)
            return 1
        zone, kind = record.zone, record.kind
        finish_cancelled = steps.finish_cancelled
        done_note = "its multipart uploads are aborted"
        if kind != ARCHIVE:
            finish_cancelled = restore_steps.finish_cancelled
            done_note = "its temporary object is deleted"
        if record.step == Step.UNREADABLE:
            # No step works on it any more; what it left open is gc's (once no lease holds it).
            print(f"snaparchive: error: {zone}/{snapshot_id}: {record.error}", file=sys.stderr)
            return 1
        if not record.active:
            print(f"{zone}/{snapshot_id}: nothing to cancel, the job is {record.step}")
            return 0 if record.step == Step.CANCELLED else 1
        # The flag first: a step running right now sees it at its next look.
        if not await store.update(zone, snapshot_id, kind=kind, cancel_requested=True):
            print(f"snaparchive: error: the job of {zone}/{snapshot_id} is gone", file=sys.stderr)
            return 1
        # A dead worker's lease expires after SNAPARCHIVE_LEASE_TTL (a restore step's after
        # restore_steps.STEP_LEASE): then this command acts on its behalf.
        lease = settings.lease_ttl if kind == ARCHIVE else restore_steps.STEP_LEASE
        patience = max(ACK_TIMEOUT, lease + 10)
        deadline = time.monotonic() + patience
        owner = "snaparchive-cancel"
        while record is not None and record.active and time.monotonic() < deadline:
            # A worker holding the lease stops its work and cleans up itself.
            if await store.acquire_lease(zone, snapshot_id, owner, ACK_TIMEOUT, kind=kind):
                async with ArchiveStore(settings.s3) as archive:
                    await finish_cancelled(store, archive, zone, snapshot_id, owner)
                await store.release_lease(zone, snapshot_id, owner, kind=kind)
                break
            await asyncio.sleep(0.5)
            record = await store.get(zone, snapshot_id, kind=kind)
        record = await store.get(zone, snapshot_id, kind=kind)
        if record is not None and record.step == Step.CANCELLED:
            print(f"{zone}/{snapshot_id}: cancelled; {done_note}")
            return 0
        print(
            f"snaparchive: error: {zone}/{snapshot_id} did not stop within {patience:.0f}s "
            f"(it is {record.step if record else 'gone'})",
            file=sys.stderr,
        )
        return 1
    finally:
        await store.close()
