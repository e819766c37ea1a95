"""The scheduler: every policy's backup on its cron schedule, once per slot, from any host.

Several schedulers may run (one per host, for availability). One of them leads: it holds the
job store's ``scheduler``/``leader`` lease, renewed at every tick; the others look every tick
and take over within a lease's life when the leader stops renewing. The leader fires a slot
only after it set that slot's idempotency mark (``once:{slot key}``), so even two leaders
(a paused one that wakes up) cannot fire a slot twice. After downtime only the latest missed
slot fires, and only within the grace (:func:`worker.schedule.due_slot`); when each policy
was last looked at is kept in the job store, for whichever scheduler leads next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from worker.jobstore import STORE_UNREACHABLE, JobStore
from worker.policy import Policy, PolicyFile
from worker.schedule import DEFAULT_GRACE, due_slot, slot_key

log = logging.getLogger(__name__)

#: Seconds the leader's lease lasts unless renewed: a standby takes over within this, plus
#: one tick.
LEADER_TTL = 15.0
#: Seconds between ticks.
TICK = 5.0
#: The job store's document kind for when each policy was last looked at.
CHECKED = "schedule"

#: ``fire(policy, slot, slot_key, kind)``; ``kind`` is ``backup`` or ``verify`` (its scrub).
Fire = Callable[[Policy, datetime, str, str], Awaitable[None]]


class Scheduler:
    """Fires each policy's slots, if it leads.

    Parameters:
      store: The shared job store (leader lease, slot marks, last looks).
      policies: The policies.
      fire: Called with ``(policy, slot, slot_key, kind)`` once per slot: ``backup`` on the
        policy's ``schedule``, ``verify`` on its ``verify`` schedule (a scrub).
      owner: This scheduler's lease token.
      grace: How late a slot may still fire (default 1 h, ``SNAPARCHIVE_SCHEDULE_GRACE``).
      clock: Returns the current time (timezone-aware); default the system clock.
      leader_ttl: Seconds the leader lease lasts (default :data:`LEADER_TTL`).
    """

    def __init__(
        self,
        store: JobStore,
        policies: PolicyFile,
        fire: Fire,
        owner: str,
        *,
        grace: timedelta = DEFAULT_GRACE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        leader_ttl: float = LEADER_TTL,
    ) -> None:
        self.store = store
        self.policies = policies
        self.fire = fire
        self.owner = owner
        self.grace = grace
        self.clock = clock
        self.leader_ttl = leader_ttl
        self.leading = False

    async def tick(self) -> list[str]:
        """Take or keep the lead, then fire what is due; return the slot keys fired."""
        leading = await self.store.acquire_lease("scheduler", "leader", self.owner, self.leader_ttl)
        if leading != self.leading:
            log.info("scheduler %s: %s", self.owner, "leading" if leading else "standing by")
            self.leading = leading
        if not leading:
            return []
        fired = []
        for policy in self.policies.policies:
            schedules = [("backup", policy.schedule)]
            if policy.verify is not None:
                schedules.append(("verify", policy.verify))
            for kind, cron in schedules:
                if (key := await self._look(policy, kind, cron)) is not None:
                    fired.append(key)
        return fired

    async def _look(self, policy: Policy, kind: str, cron: str) -> str | None:
        now = self.clock()
        name = policy.name if kind == "backup" else f"{policy.name}:{kind}"
        seen = await self.store.load_doc(CHECKED, name)
        last = datetime.fromisoformat(seen["last_checked"]) if seen else None
        slot = due_slot(cron, last, now, self.grace)
        key = None
        if slot is not None:
            key = slot_key(policy.name, slot, None if kind == "backup" else kind)
            # The mark outlives the grace: a slot never fires again once it is out of it.
            mark_ttl = (self.grace + timedelta(days=1)).total_seconds()
            if await self.store.set_once(key, mark_ttl):
                log.info("%s: firing the slot %s", policy.name, key)
                await self.fire(policy, slot, key, kind)
            else:
                key = None  # another scheduler fired it
        # Recorded after the firing: a crash in between looks again (and the mark holds).
        await self.store.save_doc(CHECKED, name, {"last_checked": now.isoformat()})
        return key

    async def run(self, stop: asyncio.Event, tick: float = TICK) -> None:
        """Tick until ``stop`` is set; a job store that does not answer is waited out."""
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except STORE_UNREACHABLE as error:
                    log.warning(
                        "scheduler: the job store is unreachable (%s)", type(error).__name__
                    )
                    self.leading = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
        finally:
            if self.leading:
                with contextlib.suppress(*STORE_UNREACHABLE):
                    await self.store.release_lease("scheduler", "leader", self.owner)
