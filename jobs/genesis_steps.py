"""The steps of a Genesis Cloud restore of an archived Exoscale snapshot.

    genesis_convert ──▶ genesis_create ──▶ genesis_await ──(again after a delay)──▶ done

1. ``genesis_convert``: the archive's qcow2 image becomes ``image.raw.zst`` beside it
   (:func:`worker.convert.convert_archive`), under the job's lease, checkpointed after every
   part and resumed like an archive transfer (slices, shutdown, cancel); a verified one is
   reused.
2. ``genesis_create``: ``POST /compute/v1/snapshots`` with a presigned URL of that object,
   made right there and sent nowhere else (never logged, stored or put in a message), valid
   :data:`URL_TTL` seconds; ``size`` is the raw size in GiB rounded up.
3. ``genesis_await``: the snapshot is looked at on the polling schedule of exports until it
   is ``created`` (done) or ``error`` (failed), for at most :data:`CREATE_TIMEOUT` seconds.

Their jobs are of kind :data:`~worker.jobstore.GENESIS` in the job store (records, leases and
checkpoints keyed by the source zone and snapshot id, beside its archive job: ``status`` and
``cancel`` see them as they see every job), with the Genesis region and name in the record
(:class:`RestoreRequest`); messages carry the zone and the snapshot id. Like
:mod:`jobs.steps`, each step is short and idempotent, and says what comes next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from jobs.context import Context
from jobs.steps import (
    RESUME_PAUSE,
    Next,
    StepFunction,
    end_cancelled,
    load_checkpoint,
    record_effect,
    run_token,
)
from jobs.watch import LEASE_MARGIN, TransferWatch
from worker.archive import ArchiveStore
from worker.convert import RawImage, convert_archive, find_raw_image
from worker.convert.manifest import raw_manifest_key
from worker.convert.source import conversion_scope
from worker.errors import (
    ApiError,
    OperationTimeout,
    SnaparchiveError,
    describe,
    is_permanent,
)
from worker.jobstore import GENESIS, STORE_UNREACHABLE, JobRecord, JobStore, Step
from worker.manifest import ArchiveId
from worker.polling import poll_interval
from worker.providers.genesiscloud import GenesisCloud
from worker.transfer import TransferStopped, discard_transfer
from worker.units import GiB

logger = logging.getLogger(__name__)

#: The archives restored (Exoscale's), and the cloud they are restored to.
PROVIDER = "exoscale"
TARGET = "genesiscloud"
#: Seconds the presigned URL handed to Genesis stays valid (its import reads it meanwhile).
URL_TTL = 12 * 3600
#: Seconds a Genesis snapshot may stay ``creating`` before the job fails.
CREATE_TIMEOUT = 6 * 3600
#: Seconds a cleanup holds the lease.
CLEANUP_LEASE = 300.0


class SnapshotFailed(ApiError):
    """Genesis Cloud's snapshot ended in ``error`` (permanent)."""


@dataclass(frozen=True)
class RestoreRequest:
    """Where the snapshot goes: Genesis ``region`` and snapshot ``name`` (and ``os_type``).
    The job record keeps it (its ``restore``), so messages carry only the zone and the
    snapshot id, as every job's do."""

    region: str
    name: str
    os_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record's ``restore``."""
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, job: JobRecord) -> RestoreRequest:
        """The request a job record keeps (:meth:`to_dict`)."""
        wanted = job.restore or {}
        region, name = wanted.get("region"), wanted.get("name")
        if not isinstance(region, str) or not isinstance(name, str):
            raise SnaparchiveError(
                f"{job.zone}/{job.snapshot_id}: the restore job names no Genesis region and name"
            )
        os_type = wanted.get("os_type")
        return cls(region, name, os_type if isinstance(os_type, str) else None)


def size_gib(raw_size: int) -> int:
    """Genesis' ``size``: the uncompressed image in GiB, rounded up, at least 1."""
    return max(1, math.ceil(raw_size / GiB))


def outcome(
    ctx: Context,
    zone: str,
    snapshot_id: str,
    request: RestoreRequest,
    image: RawImage,
    genesis_id: str | None,
    status: str,
) -> dict[str, Any]:
    """The job's result (what ``restore --json`` prints, plus the fields every job result
    has: ``bucket``, ``manifest``, ``md5``, ``size``, ``objects``)."""
    return {
        "provider": TARGET,
        "region": request.region,
        "snapshot_id": genesis_id,
        "name": request.name,
        "status": status,
        "raw_size": image.raw_size,
        "raw_md5": image.raw_md5,
        "source": {"zone": zone, "snapshot_id": snapshot_id, "manifest": image.source.manifest},
        "bucket": ctx.archive.bucket,
        "manifest": raw_manifest_key(ctx.archive, image.archive),
        "md5": image.raw_md5,
        "size": image.raw_size,
        "objects": [{"key": image.zstd_key, "size": image.zstd_size, "etag": image.zstd_etag}],
    }


async def _active(ctx: Context, zone: str, snapshot_id: str) -> JobRecord | None:
    job = await ctx.store.get(zone, snapshot_id, kind=GENESIS)
    if job is None or not job.active:
        return None
    if job.cancel_requested:
        await _cleanup(ctx, zone, snapshot_id, Step.CANCELLED, "cancelled by operator")
        return None
    return job


def _genesis() -> GenesisCloud:
    return GenesisCloud.from_env(os.environ)


async def genesis_convert(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Convert the archive to ``image.raw.zst`` (or find it converted), resuming from the
    checkpoint."""
    job = await _active(ctx, zone, snapshot_id)
    if job is None:
        return None
    request = RestoreRequest.of(job)
    manifest = await ctx.archive.require_archive(PROVIDER, zone, snapshot_id)
    owner, leased_at = run_token(ctx), time.monotonic()
    ttl = ctx.settings.lease_ttl
    if not await ctx.store.acquire_lease(zone, snapshot_id, owner, ttl, kind=GENESIS):
        left = await ctx.store.lease_left(zone, snapshot_id, kind=GENESIS)
        return Next("genesis_convert", min(ttl, left + LEASE_MARGIN))
    try:
        await ctx.store.update(zone, snapshot_id, kind=GENESIS, step=Step.TRANSFERRING)
        saved = await load_checkpoint(ctx.store, zone, snapshot_id, GENESIS)
        watch = TransferWatch(ctx, zone, snapshot_id, owner, leased_at, GENESIS)
        try:
            image = await convert_archive(
                ctx.archive,
                manifest,
                ctx.settings.transfer,
                ctx.archive.client,
                checkpoint=saved,
                on_checkpoint=watch.checkpoint,
                on_progress=watch.progress,
                stop=watch.stop,
            )
        except TransferStopped:
            await watch.close()
            if watch.cancelled:
                await _cleanup(
                    ctx, zone, snapshot_id, Step.CANCELLED, "cancelled by operator", owner
                )
                return None
            return Next("genesis_convert", LEASE_MARGIN if watch.lease_lost else 0.0)
        except Exception as error:
            await watch.close(save=not is_permanent(error))
            if is_permanent(error) or not watch.progressed:
                raise
            logger.warning(
                "%s/%s: %s; going on from the checkpoint", zone, snapshot_id, describe(error)
            )
            return Next("genesis_convert", RESUME_PAUSE)
        except BaseException:
            await watch.close()
            raise
        await watch.close(save=False)
        await ctx.store.clear_checkpoint(zone, snapshot_id, kind=GENESIS)
        await ctx.store.update(
            zone,
            snapshot_id,
            kind=GENESIS,
            bytes_done=image.raw_size,
            bytes_total=image.raw_size,
            result=outcome(ctx, zone, snapshot_id, request, image, None, "converted"),
        )
        return Next("genesis_create")
    finally:
        try:
            await ctx.store.release_lease(zone, snapshot_id, owner, kind=GENESIS)
        except STORE_UNREACHABLE as error:
            logger.warning("%s/%s: cannot release the lease: %s", zone, snapshot_id, error)


async def genesis_create(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Ask Genesis Cloud to create the snapshot from a presigned URL of ``image.raw.zst``."""
    job = await _active(ctx, zone, snapshot_id)
    if job is None:
        return None
    request = RestoreRequest.of(job)
    if job.operation_id:
        return Next("genesis_await")  # a message sent again: the snapshot is asked for
    manifest = await ctx.archive.require_archive(PROVIDER, zone, snapshot_id)
    image = await find_raw_image(ctx.archive, manifest)
    if image is None:
        return Next("genesis_convert")  # gone meanwhile: make it again
    async with _genesis() as genesis:
        assert isinstance(genesis, GenesisCloud)
        url = await asyncio.to_thread(
            ctx.archive.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": ctx.archive.bucket, "Key": image.zstd_key},
            ExpiresIn=URL_TTL,
        )
        created = await genesis.create_snapshot(
            request.name, request.region, size_gib(image.raw_size), url, request.os_type
        )
        del url
    logger.info(
        "%s/%s: Genesis Cloud snapshot %s is %s", zone, snapshot_id, created.id, created.raw_status
    )
    result = outcome(ctx, zone, snapshot_id, request, image, created.id, "creating")
    await record_effect(
        ctx,
        f"{zone}/{snapshot_id}: Genesis Cloud snapshot {created.id}",
        lambda: ctx.store.update(
            zone,
            snapshot_id,
            kind=GENESIS,
            step=Step.AWAITING_PROVIDER,
            operation_id=created.id,
            wait_started_at=time.time(),
            result=result,
        ),
    )
    return Next("genesis_await", poll_interval(0))


async def genesis_await(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
    """Look at the Genesis snapshot once: done when ``created``, failed on ``error``."""
    job = await _active(ctx, zone, snapshot_id)
    if job is None:
        return None
    request = RestoreRequest.of(job)
    assert job.operation_id, "genesis_await needs the snapshot genesis_create asked for"
    elapsed = time.time() - (job.wait_started_at or time.time())
    async with _genesis() as genesis:
        assert isinstance(genesis, GenesisCloud)
        snapshot = await genesis.get_snapshot(job.operation_id)
    status = (snapshot.raw_status or "").lower()
    result = {**(job.result or {}), "status": status}
    if status == "created":
        await ctx.store.update(
            zone, snapshot_id, kind=GENESIS, step=Step.DONE, result=result, error=None
        )
        return None
    if snapshot.status == "error":
        raise SnapshotFailed(
            f"genesiscloud: snapshot {snapshot.id} ({request.name}) in {request.region} "
            f"ended in {status}"
        )
    if elapsed > CREATE_TIMEOUT:
        raise OperationTimeout(
            f"genesiscloud: snapshot {snapshot.id} still {status} after {elapsed:.0f}s"
        )
    await ctx.store.update(zone, snapshot_id, kind=GENESIS, result=result)
    return Next("genesis_await", poll_interval(elapsed))


STEPS: dict[str, StepFunction] = {
    "genesis_convert": genesis_convert,
    "genesis_create": genesis_create,
    "genesis_await": genesis_await,
}


async def drop_conversion(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str
) -> None:
    """Drop the uploads of the job's conversion, then its checkpoint. Call it under the job's
    lease."""
    checkpoint = await load_checkpoint(store, zone, snapshot_id, GENESIS)
    source = ArchiveId(PROVIDER, zone, snapshot_id)
    await discard_transfer(archive, source, checkpoint, conversion_scope(archive, source))
    await store.clear_checkpoint(zone, snapshot_id, kind=GENESIS)


async def finish_cancelled(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str, owner: str
) -> None:
    """End a cancelled Genesis restore (:func:`~jobs.steps.end_cancelled`): its conversion's
    uploads are aborted."""
    await end_cancelled(
        store, archive, zone, snapshot_id, owner, kind=GENESIS, drop=drop_conversion
    )


async def _cleanup(
    ctx: Context, zone: str, snapshot_id: str, step: Step, reason: str, owner: str | None = None
) -> None:
    """Drop what the conversion left (under the lease), then end the job as ``step``."""
    owner = owner or run_token(ctx)
    if await ctx.store.acquire_lease(zone, snapshot_id, owner, CLEANUP_LEASE, kind=GENESIS):
        try:
            await drop_conversion(ctx.store, ctx.archive, zone, snapshot_id)
        finally:
            await ctx.store.release_lease(zone, snapshot_id, owner, kind=GENESIS)
    await ctx.store.update(zone, snapshot_id, kind=GENESIS, step=step, error=reason)


async def fail(ctx: Context, zone: str, snapshot_id: str, error: BaseException) -> None:
    """End a restore job as failed with a one-line reason; drop what its conversion left."""
    reason = describe(error)
    logger.error("restore %s/%s to Genesis Cloud failed: %s", zone, snapshot_id, reason)
    await _cleanup(ctx, zone, snapshot_id, Step.FAILED, reason)
