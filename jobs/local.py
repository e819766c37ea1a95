"""Runs jobs' steps in this process, without a broker: ``archive --local``, ``backup --local``.

The same steps as the Dramatiq actors, driven by a loop: a delay becomes a sleep, a
transient error a retry with backoff, a permanent one the end of the job. A step that starts
another job (a backup starting its snapshot's archive) starts it here, as a task.
"""

from __future__ import annotations

import asyncio
import logging

from jobs.chains import ARCHIVE, CHAIN_OF
from jobs.context import Context
from worker import logs
from worker.errors import describe, is_permanent
from worker.retry import RetryPolicy

logger = logging.getLogger(__name__)

#: Transient failures of one step tolerated before the job fails.
LOCAL_RETRIES = RetryPolicy(attempts=6, base=2.0, cap=60.0)


class LocalRunner:
    """Runs chains of steps as tasks of this process.

    Parameters:
      ctx: The process's context; its ``launch`` is set to :meth:`launch`.
      retry: How often a step that failed for a transient reason is tried again.
    """

    def __init__(self, ctx: Context, retry: RetryPolicy = LOCAL_RETRIES) -> None:
        self.ctx = ctx
        self.retry = retry
        self._tasks: set[asyncio.Task[None]] = set()
        ctx.launch = self.launch

    async def launch(self, step: str, a: str, b: str) -> None:
        """Start a chain at ``step`` as a task; :meth:`wait` waits for it."""
        task = asyncio.get_running_loop().create_task(self.run(step, a, b))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Wait until every launched chain has ended (chains may launch more)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def run(self, step: str, a: str, b: str) -> None:
        """Drive one job from ``step`` until it ends."""
        chain = CHAIN_OF[step]
        current: str | None = step
        failures = 0
        while current is not None:
            try:
                with logs.job_context(a, b, current):
                    following = await chain.steps[current](self.ctx, a, b)
            except Exception as error:
                failures += 1
                if is_permanent(error) or failures >= self.retry.attempts:
                    await chain.fail(self.ctx, a, b, error)
                    return
                pause = self.retry.delay(failures, getattr(error, "retry_after", None))
                logger.warning("%s: %s; trying again in %.0fs", current, describe(error), pause)
                await asyncio.sleep(pause)
                continue
            failures = 0
            if following is None or self.ctx.shutdown.is_set():
                return
            await asyncio.sleep(following.delay)
            current = following.step


async def run_job(
    ctx: Context,
    zone: str,
    snapshot_id: str,
    retry: RetryPolicy = LOCAL_RETRIES,
) -> None:
    """Drive the archive job of ``zone``/``snapshot_id`` (already claimed) until it ends."""
    await LocalRunner(ctx, retry).run(ARCHIVE.first, zone, snapshot_id)
