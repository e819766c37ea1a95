"""The steps of one instance's backup in a policy run, each short and idempotent.

    backup_snapshot ──▶ backup_await_snapshot ──(delayed)──▶ backup_await_archive ──▶ done
      POST :create-snapshot   GET operation; then claims      polls the archive job;
                              and starts the snapshot's       then rotates snapshots
                              archive job (the archive         and applies retention
                              chain of :mod:`jobs.steps`)

Messages carry the run id and the instance id; the run's record holds the policy as it
was when the run began (:mod:`worker.backups`), so workers need no policy file.
"""

from __future__ import annotations

import logging
import time

from jobs.context import Context
from jobs.steps import Next, StepFunction, record_effect
from worker import backups
from worker.backups import InstanceRun
from worker.errors import OperationTimeout, describe
from worker.forget import forget
from worker.jobstore import Step
from worker.policy import Policy
from worker.polling import poll_interval
from worker.rotation import rotate

logger = logging.getLogger(__name__)

#: Seconds between looks at the archive job of a backup, at most.
ARCHIVE_POLL_MAX = 60.0


async def _state(ctx: Context, run_id: str, instance_id: str) -> tuple[Policy, InstanceRun] | None:
    """The run's policy and the instance's backup, if it should go on."""
    policy = await backups.load_policy(ctx.store, run_id)
    state = await backups.load_instance(ctx.store, run_id, instance_id)
    if policy is None or state is None or state.status in backups.FINAL:
        return None  # a stale or duplicate message
    return policy, state


async def backup_snapshot(ctx: Context, run_id: str, instance_id: str) -> Next | None:
    """Ask Exoscale for a snapshot of the instance."""
    found = await _state(ctx, run_id, instance_id)
    if found is None:
        return None
    policy, state = found
    if state.operation_id is None:
        operation = await ctx.exoscale.create_snapshot(policy.zone, instance_id)
        state.status, state.operation_id = backups.SNAPSHOTTING, operation.id
        state.wait_started_at = time.time()
        await record_effect(
            ctx,
            f"{run_id}/{instance_id}: the snapshot's operation {operation.id}",
            lambda: backups.save_instance(ctx.store, run_id, state),
        )
    return Next("backup_await_snapshot", poll_interval(0))


async def backup_await_snapshot(ctx: Context, run_id: str, instance_id: str) -> Next | None:
    """Look at the snapshot's operation once; once it is done, start its archive job."""
    found = await _state(ctx, run_id, instance_id)
    if found is None:
        return None
    policy, state = found
    if state.snapshot_id is None:
        assert state.operation_id is not None
        elapsed = time.time() - (state.wait_started_at or time.time())
        if elapsed > ctx.settings.export_timeout:
            raise OperationTimeout(
                f"exoscale: snapshot of {instance_id} not made after {elapsed:.0f}s "
                f"(SNAPARCHIVE_EXPORT_TIMEOUT={ctx.settings.export_timeout})"
            )
        check = await ctx.exoscale.check_operation(policy.zone, state.operation_id, elapsed)
        if check.next_check_in is not None:
            return Next("backup_await_snapshot", check.next_check_in)
        if check.operation.reference_id is None:
            raise OperationTimeout(f"exoscale: operation {state.operation_id} names no snapshot")
        state.snapshot_id = check.operation.reference_id
        await backups.record_taken(
            ctx.store, policy.name, policy.zone, instance_id, state.snapshot_id
        )
        await backups.save_instance(ctx.store, run_id, state)
    _, created = await ctx.store.claim(policy.zone, state.snapshot_id)
    if created:
        await ctx.store.update(policy.zone, state.snapshot_id, policy=policy.name)
        await ctx.launch("start_export", policy.zone, state.snapshot_id)
        await ctx.store.update(policy.zone, state.snapshot_id, sent_at=time.time())
    state.status = backups.ARCHIVING
    state.wait_started_at = time.time()
    await backups.save_instance(ctx.store, run_id, state)
    return Next("backup_await_archive", poll_interval(0))


async def backup_await_archive(ctx: Context, run_id: str, instance_id: str) -> Next | None:
    """Look at the archive job once; once it is done, rotate and apply retention."""
    found = await _state(ctx, run_id, instance_id)
    if found is None:
        return None
    policy, state = found
    assert state.snapshot_id is not None
    job = await ctx.store.get(policy.zone, state.snapshot_id)
    if job is not None and job.active:
        elapsed = time.time() - (state.wait_started_at or time.time())
        return Next("backup_await_archive", min(ARCHIVE_POLL_MAX, poll_interval(elapsed)))
    if job is None or job.step != Step.DONE or not job.result:
        state.status = backups.FAILED
        state.error = (job.error if job else None) or "its archive job is gone"
        await backups.save_instance(ctx.store, run_id, state)
        return None
    state.manifest, state.md5 = job.result["manifest"], job.result["md5"]
    taken = await backups.taken_by(ctx.store, policy.name)
    await rotate(ctx.exoscale, ctx.archive, policy, instance_id, taken)
    await forget(ctx.archive, ctx.store, policy, {instance_id}, only_instance=instance_id)
    state.status, state.error = backups.DONE, None
    await backups.save_instance(ctx.store, run_id, state)
    return None


async def fail(ctx: Context, run_id: str, instance_id: str, error: BaseException) -> None:
    """End one instance's backup as failed with a one-line reason."""
    reason = describe(error)
    logger.error("backup %s of %s failed: %s", run_id, instance_id, reason)
    state = await backups.load_instance(ctx.store, run_id, instance_id)
    if state is not None and state.status not in backups.FINAL:
        state.status, state.error = backups.FAILED, reason
        await backups.save_instance(ctx.store, run_id, state)


STEPS: dict[str, StepFunction] = {
    "backup_snapshot": backup_snapshot,
    "backup_await_snapshot": backup_await_snapshot,
    "backup_await_archive": backup_await_archive,
}
