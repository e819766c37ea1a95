"""Beside a running transfer: checkpoints and progress saved, the lease renewed, a cancel seen.

:class:`TransferWatch` is what keeps a transfer of hours honest towards the job store: it
saves each checkpoint under the run's lease, writes progress every second, renews the lease,
and stops the transfer at a part boundary when the process shuts down, the message's slice is
over, an operator cancels, or the lease may be lost. It rides through a job store that is
briefly unreachable (a Redis restart or failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from jobs.context import Context
from worker.jobstore import ARCHIVE, STORE_UNREACHABLE
from worker.transfer import Checkpoint

logger = logging.getLogger(__name__)

#: Seconds between progress writes to the job store (and checks for a cancel request).
PROGRESS_INTERVAL = 1.0
#: Seconds a job store call beside a transfer may take before the store counts as unreachable.
STORE_CALL_TIMEOUT = 5.0
#: Seconds of slack around a lease's expiry: a transfer whose lease may expire within them
#: stops, and a worker waiting for another's lease looks again this long after it expires.
LEASE_MARGIN = 1.0


class TransferWatch:
    """Beside a running transfer: saves checkpoints and progress, renews the lease, notices a
    cancel.

    Sets :attr:`stop` when the process shuts down, the transfer slice is over, an operator
    cancels, or the lease is lost. The transfer rides through a job store that is briefly
    unreachable (a Redis restart or failover): a checkpoint it could not save is saved once
    the store answers again, and the transfer stops only when the lease could have expired
    meanwhile (then another worker may take the job over).
    """

    def __init__(
        self,
        ctx: Context,
        zone: str,
        snapshot_id: str,
        owner: str,
        leased_at: float,
        kind: str = ARCHIVE,
    ) -> None:
        """Start watching the transfer of the job of ``kind`` (default an archive) that holds
        the lease as ``owner`` since ``leased_at`` (when the lease was asked for,
        ``time.monotonic``)."""
        self.ctx, self.zone, self.snapshot_id, self.owner = ctx, zone, snapshot_id, owner
        self.kind = kind
        self.stop = asyncio.Event()
        self.cancelled = False
        self.lease_lost = False
        #: A checkpoint came during this run: the transfer moved on.
        self.progressed = False
        # Whether the newest checkpoint carries the MD5 state: only then can a slice end
        # without hashing the whole prefix again on resume.
        self._resumable = True
        self._done = 0
        self._total: int | None = None
        # The lease is surely ours until then (monotonic) unless renewed.
        self._renewed = leased_at
        self._lease_until = leased_at + ctx.settings.lease_ttl
        # The newest checkpoint not saved yet, and the lock that keeps saves in order.
        self._unsaved: dict[str, Any] | None = None
        self._saving = asyncio.Lock()
        self._unreachable = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def progress(self, done: int, total: int) -> None:
        self._done, self._total = done, total

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """The transfer's ``on_checkpoint``: save it, or keep it for later if the store is
        unreachable (a failure here must not end the transfer: it would abort its uploads)."""
        self._unsaved = checkpoint.to_dict()
        self.progressed = True
        self._resumable = checkpoint.md5_state is not None or checkpoint.offset == 0
        if self._unreachable:
            return  # saved by the watch once the store answers: the transfer does not wait
        try:
            await self._save()
        except STORE_UNREACHABLE as error:
            self._store_unreachable(error)

    async def _save(self) -> None:
        """Save the newest unsaved checkpoint while the lease is ours."""
        async with self._saving:
            data = self._unsaved
            if data is None or self.lease_lost:
                return
            if not await asyncio.wait_for(
                self.ctx.store.save_checkpoint(
                    self.zone, self.snapshot_id, data, self.owner, kind=self.kind
                ),
                STORE_CALL_TIMEOUT,
            ):
                self._lose_lease()
                return
            if self._unsaved is data:
                self._unsaved = None

    def _lose_lease(self) -> None:
        if not self.lease_lost:
            logger.warning("%s/%s: the lease may be lost; stopping", self.zone, self.snapshot_id)
        self.lease_lost = True
        self.stop.set()

    def _store_unreachable(self, error: BaseException) -> None:
        if not self._unreachable:
            logger.warning(
                "%s/%s: the job store is unreachable (%s); the transfer goes on",
                self.zone,
                self.snapshot_id,
                str(error) or type(error).__name__,
            )
        self._unreachable = True

    async def _run(self) -> None:
        ctx = self.ctx
        started = time.monotonic()
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.shutdown.wait(), PROGRESS_INTERVAL)
            sliced = time.monotonic() - started > ctx.settings.transfer_slice
            if ctx.shutdown.is_set() or (sliced and self._resumable):
                # Shutting down, or this message has run its slice: checkpoint and hand over.
                # (Without the MD5 state, handing over would mean hashing everything again.)
                self.stop.set()
                break
            # A store that does not answer is given up on before the lease could expire.
            deadline = self._lease_until - LEASE_MARGIN - time.monotonic()
            try:
                await asyncio.wait_for(self._look(), max(0.1, min(STORE_CALL_TIMEOUT, deadline)))
            except STORE_UNREACHABLE as error:
                self._store_unreachable(error)
            else:
                if self._unreachable:
                    logger.info("%s/%s: the job store is back", self.zone, self.snapshot_id)
                self._unreachable = False
            if not self.stop.is_set() and time.monotonic() > self._lease_until - LEASE_MARGIN:
                # It may expire before the store answers again: another worker may take over.
                self._lose_lease()

    async def _look(self) -> None:
        """One round: save what is unsaved, write progress, look for a cancel, renew."""
        ctx, zone, snapshot_id = self.ctx, self.zone, self.snapshot_id
        await self._save()
        await ctx.store.update(
            zone, snapshot_id, kind=self.kind, bytes_done=self._done, bytes_total=self._total
        )
        job = await ctx.store.get(zone, snapshot_id, kind=self.kind)
        if job is not None and job.cancel_requested:
            self.cancelled = True
            self.stop.set()
        ttl = ctx.settings.lease_ttl
        if self._unreachable or time.monotonic() - self._renewed > ttl / 3:
            asked = time.monotonic()
            if not await ctx.store.renew_lease(zone, snapshot_id, self.owner, ttl, kind=self.kind):
                self._lose_lease()
                return
            self._renewed = asked
            self._lease_until = asked + ttl

    async def close(self, save: bool = True) -> None:
        """Stop watching; unless told not to ``save``, save the last checkpoint and progress
        if the store answers and the lease is still ours."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not save or self.lease_lost:
            return
        try:
            await self._save()
            if self._total is not None and not self.lease_lost:
                await asyncio.wait_for(
                    self.ctx.store.update(
                        self.zone,
                        self.snapshot_id,
                        kind=self.kind,
                        bytes_done=self._done,
                        bytes_total=self._total,
                    ),
                    STORE_CALL_TIMEOUT,
                )
        except STORE_UNREACHABLE as error:
            # The saved checkpoint is older; the resume finds the parts stored since in the
            # store (ListParts) and checks them instead of uploading them again.
            logger.warning(
                "%s/%s: cannot save the last checkpoint: %s", self.zone, self.snapshot_id, error
            )
