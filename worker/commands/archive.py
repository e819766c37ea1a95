"""``snaparchive archive``: queue (or run here) the archive job of one snapshot."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from worker.commands import args as types
from worker.commands.follow import follow, outcome_json, report
from worker.jobstore import MemoryJobStore, RedisJobStore
from worker.progress import ProgressDisplay
from worker.settings import Settings, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot_id", type=types.snapshot_id, help="the snapshot's UUID")
    parser.add_argument("--zone", required=True, type=types.zone, help="the snapshot's zone")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end")
    parser.add_argument(
        "--local", action="store_true", help="run the whole pipeline in this process, no broker"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    settings = load()
    settings.exoscale.require_credentials()
    settings.s3.require_bucket()
    if args.local:
        return asyncio.run(archive_here(settings, args.zone, args.snapshot_id, args.json))
    return asyncio.run(_queue(settings, args))


def _display(as_json: bool) -> ProgressDisplay:
    return ProgressDisplay(sys.stderr, interactive=sys.stderr.isatty() and not as_json)


async def archive_here(settings: Settings, zone: str, snapshot_id: str, as_json: bool) -> int:
    """Run the pipeline's steps in this process and report the outcome."""
    from jobs.context import Context
    from jobs.local import run_job

    store = MemoryJobStore()
    ctx = Context.create(settings, store)
    try:
        await store.claim(zone, snapshot_id)
        job = asyncio.create_task(run_job(ctx, zone, snapshot_id))
        record = await follow(store, zone, snapshot_id, _display(as_json), interval=0.25)
        await job
    finally:
        await ctx.close()
    return report(record, as_json)


async def _queue(settings: Settings, args: argparse.Namespace) -> int:
    from jobs import actors

    store = RedisJobStore.for_settings(settings)
    try:
        record, created = await store.claim(args.zone, args.snapshot_id)
        job_id = f"{args.zone}/{args.snapshot_id}"
        if created:
            actors.start_export.send(args.zone, args.snapshot_id)
            note = "queued"
        elif record.step == "done":
            note = "already archived"
        else:
            note = f"joined the running job ({record.step})"
        if record.step == "done":
            # Nothing to wait for: report the existing archive as a finished job would.
            if args.json:
                print(json.dumps({**outcome_json(record), "note": note}, indent=2))
                return 0
            print(f"{job_id}: {note}", file=sys.stderr)
            return report(record, as_json=False)
        if not args.wait:
            if args.json:
                print(json.dumps({"job": job_id, "status": record.step, "note": note}))
            else:
                print(job_id)
                print(
                    f"{note}; follow it with: snaparchive status {args.snapshot_id}",
                    file=sys.stderr,
                )
            return 0
        print(f"{job_id}: {note}", file=sys.stderr)
        final = await follow(store, args.zone, args.snapshot_id, _display(args.json))
        return report(final, args.json)
    finally:
        await store.close()
