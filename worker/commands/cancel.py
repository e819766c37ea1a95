"""``snaparchive cancel``: stop a job cleanly and abort the uploads it left open."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.jobstore import RedisJobStore, Step, find_jobs
from worker.settings import load

#: Seconds to wait for the transferring worker to stop, at least. A worker that died holds
#: the lease until it expires (SNAPARCHIVE_LEASE_TTL): then this command acts on its behalf.
ACK_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument(
        "--zone", type=types.zone, help="the snapshot's zone (default: the zone of its job)"
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_cancel(args.zone, args.snapshot_id))


async def _cancel(zone: str | None, snapshot_id: str) -> int:
    from jobs.steps import finish_cancelled

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
        zone = record.zone
        if record.step == Step.UNREADABLE:
            # No step works on it any more; what it left open is gc's (once no lease holds it).
            print(f"snaparchive: error: {zone}/{snapshot_id}: {record.error}", file=sys.stderr)
            return 1
        if not record.active:
            print(f"{zone}/{snapshot_id}: nothing to cancel, the job is {record.step}")
            return 0 if record.step == Step.CANCELLED else 1
        # The flag first: a step running right now sees it at its next look.
        if not await store.update(zone, snapshot_id, cancel_requested=True):
            print(f"snaparchive: error: the job of {zone}/{snapshot_id} is gone", file=sys.stderr)
            return 1
        patience = max(ACK_TIMEOUT, settings.lease_ttl + 10)
        deadline = time.monotonic() + patience
        while record is not None and record.active and time.monotonic() < deadline:
            # A worker holding the lease stops its transfer and aborts the uploads itself.
            if await store.acquire_lease(zone, snapshot_id, "snaparchive-cancel", ACK_TIMEOUT):
                async with ArchiveStore(settings.s3) as archive:
                    await finish_cancelled(store, archive, zone, snapshot_id, "snaparchive-cancel")
                await store.release_lease(zone, snapshot_id, "snaparchive-cancel")
                break
            await asyncio.sleep(0.5)
            record = await store.get(zone, snapshot_id)
        record = await store.get(zone, snapshot_id)
        if record is not None and record.step == Step.CANCELLED:
            print(f"{zone}/{snapshot_id}: cancelled; its multipart uploads are aborted")
            return 0
        print(
            f"snaparchive: error: {zone}/{snapshot_id} did not stop within {patience:.0f}s "
            f"(it is {record.step if record else 'gone'})",
            file=sys.stderr,
        )
        return 1
    finally:
        await store.close()
