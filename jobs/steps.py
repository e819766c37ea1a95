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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jobs.context import Context
from worker.archive import ArchiveStore
from worker.errors import (
    ArchiveExists,
    LeaseLost,
    OperationTimeout,
    SnaparchiveError,
    SnapshotNotExportable,
)
from worker.jobstore import JobRecord, JobStore
from worker.models import Snapshot
from worker.polling import poll_interval
from worker.transfer import ArchiveResult, Checkpoint, ExportSource, TransferStopped, archive_export

logger = logging.getLogger(__name__)

PROVIDER = "exoscale"
#: Seconds between progress writes to the job store (and checks for a cancel request).
PROGRESS_INTERVAL = 1.0


@dataclass(frozen=True)
class Next:
    """The step to run next, after ``delay`` seconds."""

    step: str
    delay: float = 0.0


Step = Callable[[Context, str, str], Awaitable[Next | None]]


async def _active_job(ctx: Context, zone: str, snapshot_id: str) -> JobRecord | None:
    """Return the job if it should go on; mark it cancelled if an operator asked."""
    job = await ctx.store.get(zone, snapshot_id)
    if job is None or not job.active:
        return None  # a stale or duplicate message: nothing to do
    if job.cancel_requested:
        await finish_cancelled(ctx.store, ctx.archive, zone, snapshot_id)
        return None
    return job


async def finish_cancelled(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str
) -> None:
    """Abort the uploads a cancelled job left open and mark it cancelled."""
    await abort_checkpoint_uploads(store, archive, zone, snapshot_id)
    await store.update(zone, snapshot_id, step="cancelled", error="cancelled by operator")


async def abort_checkpoint_uploads(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str
) -> None:
    """Abort every multipart upload named in the job's checkpoint, then forget it."""
    saved = await store.load_checkpoint(zone, snapshot_id)
    if saved is not None:
        for key, upload_id in Checkpoint.from_dict(saved).open_uploads():
            await archive.abort_upload(key, upload_id)
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
        await ctx.store.update(zone, snapshot_id, step="done", result=summary(result))
        return None
    snapshot = await ctx.exoscale.get_snapshot(zone, snapshot_id)
    now = time.time()
    if _exported(snapshot):
        await ctx.store.update(zone, snapshot_id, step="transferring")
        return Next("transfer_snapshot")
    if snapshot.state == "exporting":
        # Someone else's export is under way: wait for the snapshot, not for an operation.
        await ctx.store.update(
            zone, snapshot_id, step="awaiting-export", operation_id=None, wait_started_at=now
        )
        return Next("await_export", poll_interval(0))
    if snapshot.state != "ready":
        raise SnapshotNotExportable(
            f"exoscale: snapshot {snapshot_id} is {snapshot.state}; only a ready snapshot exports"
        )
    operation = await ctx.exoscale.export_snapshot(zone, snapshot_id)
    await ctx.store.update(
        zone, snapshot_id, step="awaiting-export", operation_id=operation.id, wait_started_at=now
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
        await ctx.store.update(zone, snapshot_id, step="transferring")
        return Next("transfer_snapshot")
    if snapshot.state == "exporting":
        return Next("await_export", poll_interval(elapsed))
    raise SnapshotNotExportable(
        f"exoscale: snapshot {snapshot_id} is {snapshot.state} after its export"
    )


async def transfer_snapshot(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Stream, verify and archive the exported file, resuming from the last checkpoint."""
    if await _active_job(ctx, zone, snapshot_id) is None:
        return None
    ttl = ctx.settings.lease_ttl
    if not await ctx.store.acquire_lease(zone, snapshot_id, ctx.owner, ttl):
        # Another worker is on it (a joined duplicate, or a redelivery while the dead owner's
        # lease runs out): look again after a lease period rather than drop the message.
        logger.info("%s/%s: another worker holds the lease; looking again later", zone, snapshot_id)
        return Next("transfer_snapshot", ttl)
    try:
        snapshot = await ctx.exoscale.get_snapshot(zone, snapshot_id)
        if not _exported(snapshot):
            # The export went away (expired, or the snapshot was re-exported): start over.
            return Next("start_export")
        saved = await ctx.store.load_checkpoint(zone, snapshot_id)
        watch = _TransferWatch(ctx, zone, snapshot_id)
        try:
            result = await archive_export(
                _source(ctx, zone, snapshot),
                ctx.archive,
                ctx.settings.transfer,
                checkpoint=Checkpoint.from_dict(saved) if saved else None,
                on_checkpoint=lambda cp: ctx.store.save_checkpoint(zone, snapshot_id, cp.to_dict()),
                on_progress=watch.progress,
                stop=watch.stop,
            )
        except TransferStopped:
            if watch.cancelled:
                await finish_cancelled(ctx.store, ctx.archive, zone, snapshot_id)
                return None
            if watch.lease_lost:
                raise LeaseLost(f"lost the transfer lease of {zone}/{snapshot_id}") from None
            # Shutting down or slice over: the checkpoint is saved, any worker continues.
            return Next("transfer_snapshot")
        except ArchiveExists as exists:
            manifest = await ctx.archive.read_manifest(exists.manifest_key)
            result = ctx.archive.result_from_manifest(manifest)
        finally:
            await watch.close()
        await _finish(ctx, zone, snapshot_id, result)
        return None
    finally:
        await ctx.store.release_lease(zone, snapshot_id, ctx.owner)


async def _finish(ctx: Context, zone: str, snapshot_id: str, result: ArchiveResult) -> None:
    await ctx.store.update(
        zone,
        snapshot_id,
        step="done",
        result=summary(result),
        bytes_done=result.size,
        bytes_total=result.size,
        error=None,
    )
    await ctx.store.clear_checkpoint(zone, snapshot_id)


def summary(result: ArchiveResult) -> dict[str, Any]:
    """The archive as jobs record it and ``archive --json`` prints it."""
    return {
        "bucket": result.bucket,
        "manifest": result.manifest_key,
        "md5": result.md5,
        "size": result.size,
        "objects": [{"key": o.key, "size": o.size, "etag": o.etag} for o in result.objects],
    }


def _source(ctx: Context, zone: str, snapshot: Snapshot) -> ExportSource:
    assert snapshot.export is not None

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
    )


class _TransferWatch:
    """Beside a running transfer: writes progress, renews the lease, notices a cancel.

    Sets :attr:`stop` when the process shuts down, the transfer slice is over, an operator
    cancels, or the lease is lost.
    """

    def __init__(self, ctx: Context, zone: str, snapshot_id: str) -> None:
        self.ctx, self.zone, self.snapshot_id = ctx, zone, snapshot_id
        self.stop = asyncio.Event()
        self.cancelled = False
        self.lease_lost = False
        self._done = 0
        self._total: int | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def progress(self, done: int, total: int) -> None:
        self._done, self._total = done, total

    async def _run(self) -> None:
        ctx, zone, snapshot_id = self.ctx, self.zone, self.snapshot_id
        started = last_renewal = time.monotonic()
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.shutdown.wait(), PROGRESS_INTERVAL)
            if ctx.shutdown.is_set() or time.monotonic() - started > ctx.settings.transfer_slice:
                # Shutting down, or this message has run its slice: checkpoint and hand over.
                self.stop.set()
                break
            await ctx.store.update(
                zone, snapshot_id, bytes_done=self._done, bytes_total=self._total
            )
            job = await ctx.store.get(zone, snapshot_id)
            if job is not None and job.cancel_requested:
                self.cancelled = True
                self.stop.set()
            if time.monotonic() - last_renewal > ctx.settings.lease_ttl / 3:
                last_renewal = time.monotonic()
                if not await ctx.store.renew_lease(
                    zone, snapshot_id, ctx.owner, ctx.settings.lease_ttl
                ):
                    self.lease_lost = True
                    self.stop.set()

    async def close(self) -> None:
        self.stop.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._total is not None:
            await self.ctx.store.update(
                self.zone, self.snapshot_id, bytes_done=self._done, bytes_total=self._total
            )


STEPS: dict[str, Step] = {
    "start_export": start_export,
    "await_export": await_export,
    "transfer_snapshot": transfer_snapshot,
}


async def fail(ctx: Context, zone: str, snapshot_id: str, error: BaseException) -> None:
    """End a job as failed with a one-line reason; abort what it left in the bucket."""
    reason = str(error) if isinstance(error, SnaparchiveError) else f"internal error: {error!r}"
    logger.error("archive %s/%s failed: %s", zone, snapshot_id, reason)
    await abort_checkpoint_uploads(ctx.store, ctx.archive, zone, snapshot_id)
    await ctx.store.update(zone, snapshot_id, step="failed", error=reason)
