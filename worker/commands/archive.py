"""``snaparchive archive``: queue (or run here) the archive job of one snapshot."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from worker import argtypes as types
from worker import logs
from worker.archive import ArchiveStore
from worker.commands.follow import (
    UNREACHABLE_PATIENCE,
    follow,
    outcome_json,
    report,
    run_here,
)
from worker.jobstore import JobRecord, JobStore, MemoryJobStore, RedisJobStore, Step
from worker.progress import ProgressDisplay
from worker.settings import Settings, load

#: The provider whose archives ``archive`` makes (as :data:`jobs.steps.PROVIDER`).
PROVIDER = "exoscale"
#: Seconds after which a job still ``queued`` since its message was sent gets its message
#: again from the next ``archive`` call: it may have been lost (a broker restarted without
#: persistence). A duplicate is harmless: the steps are idempotent.
RESEND_AFTER = 600.0
#: Seconds ``archive --local`` waits for the job store to answer before running without it.
PING_TIMEOUT = 5.0
#: Claims tried when the record vanishes between the claim and the note that its message went.
_SEND_ATTEMPTS = 3


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
        return asyncio.run(_local(settings, args.zone, args.snapshot_id, args.json))
    return asyncio.run(_queue(settings, args))


def _display(as_json: bool) -> ProgressDisplay:
    return ProgressDisplay(sys.stderr, interactive=sys.stderr.isatty() and not as_json)


def _patience(settings: Settings) -> float:
    """Seconds ``--wait`` rides through a job store that does not answer."""
    return max(UNREACHABLE_PATIENCE, settings.lease_ttl * 5)


async def _claim(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str
) -> tuple[JobRecord, bool, str]:
    """Claim the job; a done job whose manifest is gone from the bucket is made again.

    Returns:
      The record, whether it was created now, and a note for the user.
    """
    record, created = await store.claim(zone, snapshot_id)
    if record.step == Step.DONE:
        if await archive.find_archive(PROVIDER, zone, snapshot_id) is not None:
            return record, False, "already archived"
        record, created = await store.claim(zone, snapshot_id, replace_done=True)
        if created:
            return record, True, "its archive is gone from the bucket: archiving it again"
    if created:
        return record, True, "queued"
    return record, False, f"joined the running job ({record.step})"


def _unreadable(record: JobRecord) -> int:
    print(
        f"snaparchive: error: {record.zone}/{record.snapshot_id}: {record.error}", file=sys.stderr
    )
    return 1


def _report_done(record: JobRecord, note: str, as_json: bool) -> int:
    """Report the existing archive as a finished job would."""
    if as_json:
        print(json.dumps({**outcome_json(record), "note": note}, indent=2))
        return 0
    print(f"{record.zone}/{record.snapshot_id}: {note}", file=sys.stderr)
    return report(record, as_json=False)


async def local_store(settings: Settings) -> JobStore:
    """The job store of a ``--local`` run: the shared one whenever it answers, so the job shows
    in ``status``, ``cancel`` and ``gc`` see it, and its transfer takes the lease workers take;
    otherwise one in memory, with a warning."""
    store = RedisJobStore.for_settings(settings)
    try:
        reachable = await asyncio.wait_for(store.ping(), PING_TIMEOUT)
    except TimeoutError:
        reachable = False
    if reachable:
        return store
    await store.close()
    print(
        "snaparchive: warning: the job store (SNAPARCHIVE_REDIS_URL) does not answer; running "
        "without it: no lease protects this run from a concurrent one, and only gc's age guard "
        "(--older-than) keeps gc off its uploads",
        file=sys.stderr,
    )
    return MemoryJobStore()


async def _local(settings: Settings, zone: str, snapshot_id: str, as_json: bool) -> int:
    return await archive_here(
        settings, zone, snapshot_id, as_json, store=await local_store(settings)
    )


async def archive_here(
    settings: Settings,
    zone: str,
    snapshot_id: str,
    as_json: bool,
    store: JobStore | None = None,
) -> int:
    """Run the pipeline's steps in this process and report the outcome.

    Parameters:
      settings, zone, snapshot_id: The job.
      as_json: Print one JSON object.
      store: Where the job's state lives (default: in memory, as ``snaparchive demo`` wants).
        With a shared store, an active job of the snapshot is joined: its steps run here too,
        and its lease decides who transfers.
    """
    from jobs.context import Context
    from jobs.local import run_job

    ctx = Context.create(settings, store or MemoryJobStore())
    try:
        record, created, note = await _claim(ctx.store, ctx.archive, zone, snapshot_id)
        if record.step == Step.UNREADABLE:
            return _unreadable(record)
        if record.step == Step.DONE:
            return _report_done(record, note, as_json)
        if not created:
            print(f"{zone}/{snapshot_id}: {note}; running its steps here too", file=sys.stderr)
        with logs.job_context(zone, snapshot_id):  # the job's log lines name it
            record = await run_here(
                run_job(ctx, zone, snapshot_id),
                follow(ctx.store, zone, snapshot_id, _display(as_json), 0.25, _patience(settings)),
            )
    finally:
        await ctx.close()
    return report(record, as_json)


def _message_due(record: JobRecord, created: bool) -> str | None:
    """Why the job needs a message now, or ``None`` when it has one."""
    if created:
        return "queued"
    if not record.active:
        return None
    if record.sent_at is None:
        # A send that failed or never completed, or a job an ``archive --local`` run started.
        return f"sent again: no message was ever sent for the job ({record.step})"
    if record.step == Step.QUEUED and time.time() - record.sent_at > RESEND_AFTER:
        return f"sent again: still queued {RESEND_AFTER / 60:.0f} min after its message"
    return None


async def _queue(settings: Settings, args: argparse.Namespace) -> int:
    from jobs import actors

    zone, snapshot_id = args.zone, args.snapshot_id
    job_id = f"{zone}/{snapshot_id}"
    if not getattr(args, "verbose", False):
        # pika logs a failed connection at ERROR, traceback included; one line below says it.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    store = RedisJobStore.for_settings(settings)
    try:
        async with ArchiveStore(settings.s3) as archive:
            for _ in range(_SEND_ATTEMPTS):
                record, created, note = await _claim(store, archive, zone, snapshot_id)
                due = _message_due(record, created)
                if due is None:
                    break
                try:
                    actors.start_export.send(zone, snapshot_id)
                except Exception as error:
                    # No message: a job left claimed would be joined for ever, so undo the
                    # claim (unless someone has changed the job since; then it is theirs).
                    if created:
                        await store.discard(record)
                    reason = str(error) or type(error).__name__
                    print(f"snaparchive: error: cannot queue {job_id}: {reason}", file=sys.stderr)
                    return 1
                if await store.update(zone, snapshot_id, sent_at=time.time()):
                    note = note if created else due
                    break
                # The record went away meanwhile (a concurrent claim undone, Redis restarted
                # without persistence): claim again, and send again.
            else:
                print(
                    f"snaparchive: error: {job_id}: its job record keeps vanishing", file=sys.stderr
                )
                return 1
        if record.step == Step.UNREADABLE:
            return _unreadable(record)
        if record.step == Step.DONE:
            return _report_done(record, note, args.json)
        if not args.wait:
            if args.json:
                print(json.dumps({"job": job_id, "status": record.step, "note": note}))
            else:
                print(job_id)
                print(
                    f"{note}; follow it with: snaparchive status {snapshot_id}",
                    file=sys.stderr,
                )
            return 0
        print(f"{job_id}: {note}", file=sys.stderr)
        final = await follow(
            store, zone, snapshot_id, _display(args.json), patience=_patience(settings)
        )
        return report(final, args.json)
    finally:
        await store.close()
