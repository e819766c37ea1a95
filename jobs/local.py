"""Runs an archive job's steps in this process, without a broker: ``archive --local``.

The same steps as the Dramatiq actors, driven by a loop: a delay becomes a sleep, a
transient error a retry with backoff, a permanent one the end of the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from jobs.context import Context
from jobs.steps import STEPS, StepFunction, fail
from worker.errors import describe, is_permanent
from worker.retry import RetryPolicy

logger = logging.getLogger(__name__)

#: Transient failures of one step tolerated before the job fails.
LOCAL_RETRIES = RetryPolicy(attempts=6, base=2.0, cap=60.0)


async def run_job(
    ctx: Context,
    zone: str,
    snapshot_id: str,
    retry: RetryPolicy = LOCAL_RETRIES,
    *,
    steps: Mapping[str, StepFunction] = STEPS,
    first: str = "start_export",
    on_failure: Callable[[Context, str, str, BaseException], Awaitable[None]] = fail,
) -> None:
    """Drive the job of ``zone``/``snapshot_id`` (already claimed) until it ends.

    Parameters:
      ctx: The process's context (a memory job store is enough).
      zone, snapshot_id: The job.
      retry: How often a step that failed for a transient reason is tried again.
      steps, first, on_failure: The job's steps, the one it starts with, and what ends it
        as failed (default: an archive job's, from :mod:`jobs.steps`; a restore passes those
        of :mod:`jobs.restore_steps`).
    """
    step: str | None = first
    failures = 0
    while step is not None:
        try:
            following = await steps[step](ctx, zone, snapshot_id)
        except Exception as error:
            failures += 1
            if is_permanent(error) or failures >= retry.attempts:
                await on_failure(ctx, zone, snapshot_id, error)
                return
            pause = retry.delay(failures, getattr(error, "retry_after", None))
            logger.warning("%s: %s; trying again in %.0fs", step, describe(error), pause)
            await asyncio.sleep(pause)
            continue
        failures = 0
        if following is None:
            return
        if ctx.shutdown.is_set():
            return
        await asyncio.sleep(following.delay)
        step = following.step
