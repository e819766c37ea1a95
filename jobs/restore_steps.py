"""The steps of a restore job: an archive registered back as an Exoscale template.

Like the archive's steps (:mod:`jobs.steps`), each is short and idempotent, reads and writes
the job record (kind :data:`~worker.jobstore.RESTORE`, keyed by the archive's zone and
snapshot id) and says what comes next; the Dramatiq actors and the ``--local`` driver run them
alike. Every step holds the job's lease while it works, so two never run at once.

    restore_check ──▶ (restore_join: segmented archives) ──▶ restore_register ──▶ restore_await
                                                                  (again after a delay) ──▶ done

- ``restore_check``: the manifest reads back valid, every object is there with its size
  (HEAD), and a segmented image fits in one object of the store (else refused, before
  anything is registered).
- ``restore_join``: the segments are copied server-side (UploadPartCopy) into one temporary
  object (:func:`temporary_key`), a slice at a time; its progress is the job's checkpoint.
- ``restore_register``: a presigned GET URL of the image (made here, used once, never kept),
  then register-template in the target zone with the archive's MD5 as its checksum.
- ``restore_await``: the operation on the official schedule, up to
  ``SNAPARCHIVE_RESTORE_TIMEOUT``; then the template must exist with the archive's MD5.

Whatever ends the job (success, failure, cancel) deletes the temporary object.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from jobs.context import Context
from jobs.steps import Next, StepFunction, end_cancelled, record_effect, run_token
from jobs.watch import LEASE_MARGIN
from worker.archive import ArchiveStore
from worker.errors import (
    ChecksumMismatch,
    ChecksumRefused,
    NotFound,
    OperationFailed,
    OperationTimeout,
    describe,
)
from worker.jobstore import RESTORE, STORE_UNREACHABLE, JobRecord, JobStore, Step
from worker.join import Join, JoinState, drop_join, plan_join
from worker.manifest import Manifest
from worker.models import TemplateSpec
from worker.polling import poll_interval
from worker.reader import check_objects
from worker.s3client import presigned_get_url
from worker.source_template import Overrides, registration_settings

logger = logging.getLogger(__name__)

PROVIDER = "exoscale"
#: Seconds a step, a cancel or a failure holds the lease while it does its short work.
STEP_LEASE = 300.0


async def _manifest(ctx: Context, zone: str, snapshot_id: str) -> Manifest:
    return await ctx.archive.require_archive(PROVIDER, zone, snapshot_id)


async def load_join(store: JobStore, zone: str, snapshot_id: str) -> JoinState | None:
    """The job's join state (its checkpoint), or ``None``; one that does not read is dropped."""
    saved = await store.load_checkpoint(zone, snapshot_id, kind=RESTORE)
    try:
        return JoinState.from_dict(saved) if saved is not None else None
    except ValueError:
        logger.warning("%s/%s: dropping an unreadable join state", zone, snapshot_id)
        return None


async def drop_temporary(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str
) -> None:
    """Delete the job's temporary joined object (or abort its upload), then its state."""
    state = await load_join(store, zone, snapshot_id)
    if state is not None:
        await drop_join(archive, state)
    await store.clear_checkpoint(zone, snapshot_id, kind=RESTORE)


async def finish_cancelled(
    store: JobStore, archive: ArchiveStore, zone: str, snapshot_id: str, owner: str
) -> None:
    """End a cancelled restore (:func:`~jobs.steps.end_cancelled`): its temporary object is
    deleted."""
    await end_cancelled(
        store,
        archive,
        zone,
        snapshot_id,
        owner,
        kind=RESTORE,
        drop=drop_temporary,
        lease=STEP_LEASE,
    )


async def _leased(ctx: Context, zone: str, snapshot_id: str, step: str, owner: str) -> Next | None:
    """Take the job's lease for ``owner``; ``Next`` to look again when another run holds it."""
    if await ctx.store.acquire_lease(zone, snapshot_id, owner, STEP_LEASE, kind=RESTORE):
        return None
    left = await ctx.store.lease_left(zone, snapshot_id, kind=RESTORE)
    return Next(step, min(STEP_LEASE, left + LEASE_MARGIN))


async def _active(ctx: Context, zone: str, snapshot_id: str, owner: str) -> JobRecord | None:
    """The job if it should go on; cancelled here if an operator asked (``owner`` holds the
    lease)."""
    job = await ctx.store.get(zone, snapshot_id, kind=RESTORE)
    if job is None or not job.active:
        return None
    if job.cancel_requested:
        await drop_temporary(ctx.store, ctx.archive, zone, snapshot_id)
        await ctx.store.update(
            zone, snapshot_id, kind=RESTORE, step=Step.CANCELLED, error="cancelled by operator"
        )
        return None
    return job


#: A step's work, run under the lease held by ``owner`` (its last argument).
LeasedBody = Callable[[Context, str, str, str], Awaitable[Next | None]]


def _leased_step(name: str, body: LeasedBody) -> StepFunction:
    """``body`` run under the job's lease (a token per run), released at the end."""

    async def step(ctx: Context, zone: str, snapshot_id: str) -> Next | None:
        owner = run_token(ctx)
        busy = await _leased(ctx, zone, snapshot_id, name, owner)
        if busy is not None:
            return busy
        try:
            if await _active(ctx, zone, snapshot_id, owner) is None:
                return None
            return await body(ctx, zone, snapshot_id, owner)
        finally:
            try:
                await ctx.store.release_lease(zone, snapshot_id, owner, kind=RESTORE)
            except STORE_UNREACHABLE as error:
                logger.warning("%s/%s: cannot release the lease: %s", zone, snapshot_id, error)

    step.__doc__ = body.__doc__
    return step


async def _check(ctx: Context, zone: str, snapshot_id: str, owner: str) -> Next | None:
    """Check the archive; join its segments first if it has several."""
    manifest = await _manifest(ctx, zone, snapshot_id)
    await check_objects(ctx.archive, manifest.objects)
    if len(manifest.objects) == 1:
        return Next("restore_register")
    plan_join(manifest.objects, ctx.settings.s3.object_limit)  # refuses before anything is done
    await ctx.store.update(
        zone, snapshot_id, kind=RESTORE, step=Step.JOINING, bytes_done=0, bytes_total=manifest.size
    )
    return Next("restore_join")


async def _join(ctx: Context, zone: str, snapshot_id: str, owner: str) -> Next | None:
    """Copy the segments into the temporary object for one slice; go on or register."""
    manifest = await _manifest(ctx, zone, snapshot_id)
    plan = plan_join(manifest.objects, ctx.settings.s3.object_limit)
    state = await load_join(ctx.store, zone, snapshot_id)
    if state is None:
        state = JoinState(temporary_key(ctx.archive.prefix, zone, snapshot_id))
    stop = asyncio.Event()
    deadline = time.monotonic() + ctx.settings.transfer_slice
    join: Join

    async def saved(state: JoinState) -> None:
        await ctx.store.save_checkpoint(zone, snapshot_id, state.to_dict(), owner, kind=RESTORE)
        job = await ctx.store.update(zone, snapshot_id, kind=RESTORE, bytes_done=join.copied)
        renewed = await ctx.store.renew_lease(zone, snapshot_id, owner, STEP_LEASE, kind=RESTORE)
        record = await ctx.store.get(zone, snapshot_id, kind=RESTORE)
        cancelled = record is None or record.cancel_requested
        if not (job and renewed) or cancelled or ctx.shutdown.is_set():
            stop.set()
        if time.monotonic() > deadline:
            stop.set()

    join = Join(ctx.archive, plan, state, saved, stop, ctx.settings.transfer.upload_concurrency)
    if not await join.run():
        return Next("restore_join")  # the slice is over, or someone cancelled: look again
    return Next("restore_register")


async def _register(ctx: Context, zone: str, snapshot_id: str, owner: str) -> Next | None:
    """Register the template from a presigned URL of the image (made here, used once)."""
    job = await ctx.store.get(zone, snapshot_id, kind=RESTORE)
    assert job is not None and job.restore is not None
    if job.operation_id:
        return Next("restore_await")  # a duplicate message: the registration is under way
    manifest = await _manifest(ctx, zone, snapshot_id)
    key = manifest.objects[0].key
    if len(manifest.objects) > 1:
        state = await load_join(ctx.store, zone, snapshot_id)
        if state is None or not state.completed:
            return Next("restore_join")
        key = state.key
    target = job.restore["target_zone"]
    settings = registration_settings(manifest.template, Overrides.from_dict(job.restore))
    spec = TemplateSpec(
        name=job.restore["name"],
        url=presigned_get_url(ctx.settings.s3, key, ctx.settings.restore_url_ttl),
        checksum=manifest.md5,
        ssh_key_enabled=settings.ssh_key_enabled,
        password_enabled=settings.password_enabled,
        boot_mode=settings.boot_mode,
        default_user=settings.default_user,
        description=description(manifest),
    )
    operation = await ctx.exoscale.register_template(target, spec)
    await record_effect(
        ctx,
        f"{zone}/{snapshot_id}: the registration's operation {operation.id}",
        lambda: ctx.store.update(
            zone,
            snapshot_id,
            kind=RESTORE,
            step=Step.REGISTERING,
            operation_id=operation.id,
            wait_started_at=time.time(),
        ),
    )
    logger.info("%s/%s: registering template in %s", zone, snapshot_id, target)
    return Next("restore_await", poll_interval(0))


def temporary_key(prefix: str, zone: str, snapshot_id: str) -> str:
    """A new key for the joined object: ``{prefix}restore-tmp/{zone}/{snapshot_id}/{token}``.

    Outside the archive's folder, whose open uploads a failing archive job aborts; under the
    prefix with the snapshot's zone and id where ``gc`` reads them from a key, so ``gc`` keeps
    the upload of a running restore.
    """
    return f"{prefix}restore-tmp/{zone}/{snapshot_id}/{secrets.token_hex(6)}.joined"


def description(manifest: Manifest) -> str:
    """The template's description: where the image comes from (source zone, snapshot id and
    when it was archived)."""
    return (
        f"snaparchive restore of snapshot {manifest.snapshot_id} from {manifest.zone}, "
        f"archived {manifest.archived_at}"
    )[:255]


async def _await(ctx: Context, zone: str, snapshot_id: str, owner: str) -> Next | None:
    """Look at the registration once; come back on the official schedule, or finish."""
    job = await ctx.store.get(zone, snapshot_id, kind=RESTORE)
    assert job is not None and job.restore is not None and job.operation_id
    target = job.restore["target_zone"]
    elapsed = time.time() - (job.wait_started_at or time.time())
    if elapsed > ctx.settings.restore_timeout:
        raise OperationTimeout(
            f"exoscale: the registration of template {job.restore['name']!r} in {target} is "
            f"not finished after {elapsed:.0f}s (SNAPARCHIVE_RESTORE_TIMEOUT="
            f"{ctx.settings.restore_timeout})"
        )
    try:
        check = await ctx.exoscale.check_operation(target, job.operation_id, elapsed)
    except OperationFailed as failed:
        # Exoscale documents no reason for a refused checksum: its message says so.
        if "checksum" in str(failed).lower():
            raise ChecksumRefused(failed.operation_id, _message(failed)) from None
        raise
    if check.next_check_in is not None:
        return Next("restore_await", check.next_check_in)
    manifest = await _manifest(ctx, zone, snapshot_id)
    template_id = check.operation.reference_id
    if template_id is None:
        raise NotFound(f"exoscale: the registration {job.operation_id} names no template")
    template = await ctx.exoscale.get_template(target, template_id)
    if template.checksum != manifest.md5:
        raise ChecksumMismatch(manifest.md5, str(template.checksum))
    result = {
        "template_id": template.id,
        "name": template.name,
        "zone": target,
        "size": template.size or manifest.size,
        "checksum": template.checksum,
        "source": {
            "zone": zone,
            "snapshot_id": snapshot_id,
            "manifest": ctx.archive.manifest_key(PROVIDER, zone, snapshot_id),
        },
    }
    await drop_temporary(ctx.store, ctx.archive, zone, snapshot_id)
    await ctx.store.update(
        zone, snapshot_id, kind=RESTORE, step=Step.DONE, result=result, error=None
    )
    return None


def _message(failed: OperationFailed) -> str:
    # OperationFailed's text: "operation X ended in failure (reason: R): MESSAGE".
    return str(failed).partition("): ")[2] or str(failed)


async def fail(ctx: Context, zone: str, snapshot_id: str, error: BaseException) -> None:
    """End a restore as failed with a one-line reason; drop its temporary object (unless
    another run holds the lease: then that run, or the next restore, does)."""
    reason = describe(error)
    logger.error("restore %s/%s failed: %s", zone, snapshot_id, reason)
    owner = run_token(ctx)
    if await ctx.store.acquire_lease(zone, snapshot_id, owner, STEP_LEASE, kind=RESTORE):
        try:
            await drop_temporary(ctx.store, ctx.archive, zone, snapshot_id)
        finally:
            await ctx.store.release_lease(zone, snapshot_id, owner, kind=RESTORE)
    await ctx.store.update(zone, snapshot_id, kind=RESTORE, step=Step.FAILED, error=reason)


STEPS: dict[str, StepFunction] = {
    "restore_check": _leased_step("restore_check", _check),
    "restore_join": _leased_step("restore_join", _join),
    "restore_register": _leased_step("restore_register", _register),
    "restore_await": _leased_step("restore_await", _await),
}
#: The first step of a restore job.
FIRST = "restore_check"
