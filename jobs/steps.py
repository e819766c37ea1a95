"""The steps of an archive job, each short, idempotent and driver-agnostic.

A step reads the job record, does one thing, writes the record and says what comes
next (:class:`Next`) or that the job is over (``None``). The Dramatiq actors in
:mod:`jobs.actors` send the next step as a (delayed) message; :mod:`jobs.local` runs
the same steps in a loop in one process. Errors are raised as they are; the drivers
decide between retry and failure with :func:`fail`.

    start_export ──▶ await_export ──(again after a delay)──▶ transfer_snapshot ──▶ done
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from jobs.context import Context
from jobs.watch import LEASE_MARGIN, TransferWatch
from worker import metrics
from worker.archive import ArchiveStore
from worker.errors import (
    ArchiveExists,
    OperationTimeout,
    SnapshotNotExportable,
    describe,
    error_kind,
    is_permanent,
)
from worker.jobstore import ARCHIVE, STORE_UNREACHABLE, JobRecord, JobStore, Step
from worker.manifest import ArchiveId
from worker.models import Snapshot
from worker.polling import poll_interval
from worker.source_template import lookup_source_template
from worker.transfer import (
    ArchiveResult,
    Checkpoint,
    ExportSource,
    TransferStopped,
    archive_export,
    discard_transfer,
)

logger = logging.getLogger(__name__)

PROVIDER = "exoscale"
#: Seconds a cancel or a failure holds the lease while it drops what the transfer left.
CLEANUP_LEASE = 300.0
#: Seconds before a transfer that made progress and then failed for a transient reason goes
#: on from its checkpoint (as a fresh message: its retries count from zero again).
RESUME_PAUSE = 15.0


@dataclass(frozen=True)
class Next:
    """The step to run next, after ``delay`` seconds."""

    step: str
    delay: float = 0.0


StepFunction = Callable[[Context, str, str], Awaitable[Next | None]]


#: Seconds between looks at a job store that does not answer, at most.
STORE_WAIT_MAX = 10.0


async def until_store_answers(ctx: Context) -> None:
    """Wait while the job store is unreachable (unless the process is stopping).

    Recording a failure needs it, and with Redis as the broker so do the retry and the next
    step's message: one sent to a broker that is down would be lost, and the job with it.
    """
    pause = 0.5
    while not await ctx.store.ping():
        if ctx.shutdown.is_set():
            return
        logger.warning("the job store is unreachable; waiting %.1fs for it", pause)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):
                await ctx.shutdown.wait()
        pause = min(pause * 2, STORE_WAIT_MAX)


async def record_effect(ctx: Context, what: str, write: Callable[[], Awaitable[object]]) -> None:
    """Write the record of something a step just had done elsewhere (a template registered, a
    snapshot or a Genesis snapshot asked for), riding through a job store that does not
    answer (:func:`until_store_answers`): failing the step there would have it done a second
    time on the retry. Only a process that stops gives up (the step is then retried; the
    window is that short).

    Parameters:
      what: What is recorded, for the warning (``"ch-gva-2/ID: the template's operation"``).
      write: The write, tried again once the store answers.
    """
    while True:
        try:
            await write()
            return
        except STORE_UNREACHABLE as error:
            if ctx.shutdown.is_set():
                raise
            logger.warning("%s: not recorded yet (%s)", what, type(error).__name__)
        await until_store_answers(ctx)


def run_token(ctx: Context) -> str:
    """A lease token of its own for one run of a step: a duplicate message in the same
    process is another run, and must not share (or release) the first one's lease."""
    return f"{ctx.owner}:{secrets.token_hex(4)}"


async def _active_job(ctx: Context, zone: str, snapshot_id: str) -> JobRecord | None:
    """Return the job if it should go on; mark it cancelled if an operator asked."""
    job = await ctx.store.get(zone, snapshot_id)
    if job is None or not job.active:
        return None  # a stale or duplicate message: nothing to do
    if job.cancel_requested:
        await finish_cancelled(ctx.store, ctx.archive, zone, snapshot_id, run_token(ctx))
        return None
    return job


#: What a cancelled job of a kind left, dropped (under its lease): ``(store, archive, zone,
#: snapshot_id)``.
Leftovers = Callable[[JobStore, ArchiveStore, str, str], Awaitable[None]]


async def end_cancelled(
    store: JobStore,
    archive: ArchiveStore,
    zone: str,
    snapshot_id: str,
    owner: str,
    *,
    kind: str = ARCHIVE,
    drop: Leftovers | None = None,
    lease: float = CLEANUP_LEASE,
) -> None:
    """Drop what a cancelled job left in the bucket and mark it cancelled.

    Only under the lease (``owner`` holds it, or takes it now): while another run holds it,
    that run is working and finishes the cancel itself when it sees the request. A job that
    ended meanwhile is left as it ended.

    Parameters:
      kind: The job's kind (default an archive).
      drop: What drops its leftovers (default :func:`discard_job_transfer`, an archive's).
      lease: Seconds the lease is taken for (default :data:`CLEANUP_LEASE`).
    """
    if not await store.acquire_lease(zone, snapshot_id, owner, lease, kind=kind):
        return
    try:
        job = await store.get(zone, snapshot_id, kind=kind)
        if job is None or not job.active:
            return
        await (drop or discard_job_transfer)(store, archive, zone, snapshot_id)
        await store.update(
            zone, snapshot_id, kind=kind, step=Step.CANCELLED, error="cancelled by operator"
        )
    finally:
        await store.release_lease(zone, snapshot_id, owner, kind=kind)


async def finish_cancelled(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str, owner: str
) -> None:
    """End a cancelled archive job (:func:`end_cancelled`): its uploads are aborted."""
    await end_cancelled(store, archive, zone, snapshot_id, owner)


async def load_checkpoint(
    store: JobStore, zone: str, snapshot_id: str, kind: str = ARCHIVE
) -> Checkpoint | None:
    """The transfer checkpoint of the job of ``kind`` (default an archive), or ``None``; one
    that does not parse is dropped with a warning (its uploads are then found by listing the
    archive's prefix)."""
    try:
        saved = await store.load_checkpoint(zone, snapshot_id, kind=kind)
        return Checkpoint.from_dict(saved) if saved is not None else None
    except ValueError as error:  # not JSON, or not a checkpoint
        logger.warning("%s/%s: dropping an unreadable checkpoint: %s", zone, snapshot_id, error)
        return None


async def discard_job_transfer(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str
) -> None:
    """Drop the uploads and half-committed objects of the job's transfer, then its
    checkpoint. Call it under the job's lease."""
    checkpoint = await load_checkpoint(store, zone, snapshot_id)
    await discard_transfer(archive, ArchiveId(PROVIDER, zone, snapshot_id), checkpoint)
    await store.clear_checkpoint(zone, snapshot_id)


def _exported(snapshot: Snapshot) -> bool:
    return snapshot.state == "exported" and snapshot.export is not None


async def start_export(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Adopt an existing archive or export, or start the export."""
    if await _active_job(ctx, zone, snapshot_id) is None:
        return None
    manifest = await ctx.archive.find_archive(PROVIDER, zone, snapshot_id)
    if manifest is not None:
        result = ctx.archive.result_from_manifest(manifest)
        await ctx.store.update(zone, snapshot_id, step=Step.DONE, result=result.to_dict())
        return None
    snapshot = await ctx.exoscale.get_snapshot(zone, snapshot_id)
    now = time.time()
    if _exported(snapshot):
        await ctx.store.update(zone, snapshot_id, step=Step.TRANSFERRING)
        return Next("transfer_snapshot")
    if snapshot.state == "exporting":
        # Someone else's export is under way: wait for the snapshot, not for an operation.
        await ctx.store.update(
            zone, snapshot_id, step=Step.AWAITING_EXPORT, operation_id=None, wait_started_at=now
        )
        return Next("await_export", poll_interval(0))
    if snapshot.state != "ready":
        raise SnapshotNotExportable(
            f"exoscale: snapshot {snapshot_id} is {snapshot.state}; only a ready snapshot exports"
        )
    operation = await ctx.exoscale.export_snapshot(zone, snapshot_id)
    await ctx.store.update(
        zone, snapshot_id, step=Step.AWAITING_EXPORT, operation_id=operation.id, wait_started_at=now
    )
    return Next("await_export", poll_interval(0))


async def await_export(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Look at the export once; come back later on the official schedule, or go on."""
    job = await _active_job(ctx, zone, snapshot_id)
    if job is None:
        return None
    elapsed = time.time() - (job.wait_started_at or time.time())
    if elapsed > ctx.settings.export_timeout:
        raise OperationTimeout(
            f"exoscale: export of {snapshot_id} not finished after {elapsed:.0f}s "
            f"(SNAPARCHIVE_EXPORT_TIMEOUT={ctx.settings.export_timeout})"
        )
    if job.operation_id:
        check = await ctx.exoscale.check_operation(zone, job.operation_id, elapsed)
        if check.next_check_in is not None:
            return Next("await_export", check.next_check_in)
    snapshot = await ctx.exoscale.get_snapshot(zone, snapshot_id)
    if _exported(snapshot):
        await ctx.store.update(zone, snapshot_id, step=Step.TRANSFERRING)
        return Next("transfer_snapshot")
    if snapshot.state == "exporting":
        return Next("await_export", poll_interval(elapsed))
    raise SnapshotNotExportable(
        f"exoscale: snapshot {snapshot_id} is {snapshot.state} after its export"
    )


async def transfer_snapshot(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Stream, verify and archive the exported file, resuming from the last checkpoint."""
    job = await _active_job(ctx, zone, snapshot_id)
    if job is None:
        return None
    ttl = ctx.settings.lease_ttl
    owner = run_token(ctx)
    leased_at = time.monotonic()
    if not await ctx.store.acquire_lease(zone, snapshot_id, owner, ttl):
        # Another run is on it (a joined duplicate, or a redelivery while the dead owner's
        # lease runs out): look again when the lease would expire rather than drop the message.
        left = await ctx.store.lease_left(zone, snapshot_id)
        logger.info("%s/%s: another worker holds the lease; looking again later", zone, snapshot_id)
        return Next("transfer_snapshot", min(ttl, left + LEASE_MARGIN))
    try:
        snapshot = await ctx.exoscale.get_snapshot(zone, snapshot_id)
        if not _exported(snapshot):
            # The export went away (expired, or the snapshot was re-exported): start over.
            return Next("start_export")
        saved = await load_checkpoint(ctx.store, zone, snapshot_id)
        watch = TransferWatch(ctx, zone, snapshot_id, owner, leased_at)
        try:
            result = await archive_export(
                await _source(ctx, job, snapshot),
                ctx.archive,
                ctx.settings.transfer,
                checkpoint=saved,
                on_checkpoint=watch.checkpoint,
                # Progress past what earlier runs downloaded; what they had is read again.
                on_progress=metrics.RereadMeter(
                    watch.progress, saved.offset if saved else 0, job.bytes_done
                ),
                stop=watch.stop,
            )
        except TransferStopped:
            await watch.close()
            if watch.cancelled:
                await finish_cancelled(ctx.store, ctx.archive, zone, snapshot_id, owner)
                return None
            if watch.lease_lost:
                # Another worker may have the job now, or the store was unreachable too long to
                # know: look again shortly, and the lease decides who goes on.
                return Next("transfer_snapshot", LEASE_MARGIN)
            # Shutting down or slice over: the checkpoint is saved, any worker continues.
            return Next("transfer_snapshot")
        except ArchiveExists as exists:
            # Another run committed this archive: it stands, and this run's uploads are gone.
            await watch.close(save=False)
            await ctx.store.clear_checkpoint(zone, snapshot_id)
            manifest = await ctx.archive.read_manifest(exists.manifest_key)
            result = ctx.archive.result_from_manifest(manifest)
        except Exception as error:
            if is_permanent(error):
                # The transfer dropped its uploads: its last checkpoint is worthless.
                await watch.close(save=False)
                raise
            # The uploads and the checkpoint stay: the next try resumes from it.
            await watch.close()
            if not watch.progressed:
                raise
            logger.warning(
                "%s/%s: %s; going on from the checkpoint in %.0fs",
                zone,
                snapshot_id,
                describe(error),
                RESUME_PAUSE,
            )
            return Next("transfer_snapshot", RESUME_PAUSE)
        except BaseException:
            # Cancelled: the uploads stay open, and the checkpoint to resume them is saved.
            await watch.close()
            raise
        else:
            await watch.close()
            metrics.archived(zone, snapshot.instance_id, result.size, snapshot.created_at)
        await _finish(ctx, zone, snapshot_id, result)
        return None
    finally:
        try:
            await ctx.store.release_lease(zone, snapshot_id, owner)
        except STORE_UNREACHABLE as error:
            # It expires by itself; the outcome of the step matters more.
            logger.warning("%s/%s: cannot release the lease: %s", zone, snapshot_id, error)


async def _finish(ctx: Context, zone: str, snapshot_id: str, result: ArchiveResult) -> None:
    await ctx.store.update(
        zone,
        snapshot_id,
        step=Step.DONE,
        result=result.to_dict(),
        bytes_done=result.size,
        bytes_total=result.size,
        error=None,
    )
    await ctx.store.clear_checkpoint(zone, snapshot_id)


async def _source(ctx: Context, job: JobRecord, snapshot: Snapshot) -> ExportSource:
    """What the transfer of ``job`` reads: the export of ``snapshot``, and how its instance
    booted (for the manifest; ``None`` when that cannot be read, which fails nothing)."""
    assert snapshot.export is not None
    zone = job.zone

    async def refresh_url() -> str:
        fresh = await ctx.exoscale.get_snapshot(zone, snapshot.id)
        if fresh.export is None:
            raise SnapshotNotExportable(f"exoscale: snapshot {snapshot.id} is no longer exported")
        return fresh.export.presigned_url

    return ExportSource(
        provider=PROVIDER,
        zone=zone,
        snapshot_id=snapshot.id,
        snapshot_name=snapshot.name,
        instance_id=snapshot.instance_id,
        created_at=snapshot.created_at,
        md5=snapshot.export.md5sum,
        url=snapshot.export.presigned_url,
        refresh_url=refresh_url,
        policy=job.policy,
        template=await lookup_source_template(ctx.exoscale, zone, snapshot.instance_id),
    )


STEPS: dict[str, StepFunction] = {
    "start_export": start_export,
    "await_export": await_export,
    "transfer_snapshot": transfer_snapshot,
}


async def fail(ctx: Context, zone: str, snapshot_id: str, error: BaseException) -> None:
    """End a job as failed with a one-line reason; drop what it left in the bucket, unless
    another run holds the lease (then ``gc`` does, once it is free)."""
    reason = describe(error)
    logger.error("archive %s/%s failed: %s", zone, snapshot_id, reason)
    owner = run_token(ctx)
    if await ctx.store.acquire_lease(zone, snapshot_id, owner, CLEANUP_LEASE):
        try:
            await discard_job_transfer(ctx.store, ctx.archive, zone, snapshot_id)
        finally:
            await ctx.store.release_lease(zone, snapshot_id, owner)
    await ctx.store.update(
        zone, snapshot_id, step=Step.FAILED, error=reason, error_kind=error_kind(error)
    )
