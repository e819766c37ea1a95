"""``snaparchive cancel``: stop a job cleanly and abort the uploads it left open.

An archive job's multipart uploads are aborted; a restore job's temporary joined object (or
its upload) is deleted; a Genesis restore's conversion uploads are aborted. A registration
Exoscale has already started is not stopped by it: a template that still appears can be
deleted with ``exo compute instance-template delete``. When a snapshot has jobs of several
kinds, the running one is cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from worker import argtypes as types
from worker.archive import ArchiveStore
from worker.commands.follow import outcome_json
from worker.jobstore import ARCHIVE, GENESIS, RESTORE, RedisJobStore, Step, find_jobs
from worker.settings import load

#: Seconds to wait for the working worker to stop, at least.
ACK_TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument(
        "--zone", type=types.zone, help="the snapshot's zone (default: the zone of its job)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_cancel(args.zone, args.snapshot_id, args.json))


def _outcome(
    as_json: bool, body: dict[str, Any], *, note: str = "", error: str = "", status: int
) -> int:
    """Say how the cancel ended: ``note`` on stdout or ``error`` on stderr (one line), and with
    ``as_json`` the job's ``body`` (plus them) as one JSON object on stdout."""
    if as_json:
        extra = {"note": note} if note else {}
        if error:
            extra["error"] = error
        print(json.dumps({**body, **extra}, indent=2))
    elif note:
        print(f"{body['zone']}/{body['snapshot_id']}: {note}")
    if error:
        print(f"snaparchive: error: {error}", file=sys.stderr)
    return status


async def _cancel(zone: str | None, snapshot_id: str, as_json: bool = False) -> int:
    from jobs import genesis_steps, restore_steps, steps

    settings = load()
    settings.s3.require_bucket()
    store = RedisJobStore.for_settings(settings)
    try:
        jobs = await find_jobs(store, snapshot_id, zone)
        record = jobs[0] if jobs else None
        if record is None:
            where = f"{zone}/{snapshot_id}" if zone else f"snapshot {snapshot_id}"
            body = {"zone": zone, "snapshot_id": snapshot_id, "status": None}
            return _outcome(as_json, body, error=f"no job for {where}", status=1)
        zone, kind = record.zone, record.kind
        finish_cancelled, done_note = {
            ARCHIVE: (steps.finish_cancelled, "its multipart uploads are aborted"),
            RESTORE: (restore_steps.finish_cancelled, "its temporary object is deleted"),
            GENESIS: (genesis_steps.finish_cancelled, "its conversion's uploads are aborted"),
        }[kind]
        if record.step == Step.UNREADABLE:
            # No step works on it any more; what it left open is gc's (once no lease holds it).
            error = f"{zone}/{snapshot_id}: {record.error}"
            return _outcome(as_json, outcome_json(record), error=error, status=1)
        if not record.active:
            note = f"nothing to cancel, the job is {record.step}"
            status = 0 if record.step == Step.CANCELLED else 1
            return _outcome(as_json, outcome_json(record), note=note, status=status)
        # The flag first: a step running right now sees it at its next look.
        if not await store.update(zone, snapshot_id, kind=kind, cancel_requested=True):
            error = f"the job of {zone}/{snapshot_id} is gone"
            return _outcome(as_json, outcome_json(record), error=error, status=1)
        # A dead worker's lease expires after SNAPARCHIVE_LEASE_TTL (a restore step's after
        # restore_steps.STEP_LEASE): then this command acts on its behalf.
        lease = restore_steps.STEP_LEASE if kind == RESTORE else settings.lease_ttl
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
            return _outcome(as_json, outcome_json(record), note=f"cancelled; {done_note}", status=0)
        error = (
            f"{zone}/{snapshot_id} did not stop within {patience:.0f}s "
            f"(it is {record.step if record else 'gone'})"
        )
        body = outcome_json(record) if record else {"zone": zone, "snapshot_id": snapshot_id}
        return _outcome(as_json, body, error=error, status=1)
    finally:
        await store.close()
