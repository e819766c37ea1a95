"""Where jobs keep their state: step, operation, progress, result, lease, checkpoint.

Jobs are keyed by their kind (an archive, or a restore as a template) and (zone, snapshot
id): at most one active job of each kind per snapshot. The Redis store
(:mod:`.redis_store`) is shared by every worker, so ``snaparchive status`` works from any
machine; ``snaparchive archive --local`` uses it too when Redis answers, and the memory store
(:mod:`.memory_store`) otherwise (and in ``snaparchive demo``). Both satisfy :class:`JobStore`
and behave alike, leases included. Records: :mod:`.record`.
"""

from __future__ import annotations

import builtins
from typing import Any, Protocol

from worker.jobstore.memory_store import MemoryJobStore
from worker.jobstore.record import ARCHIVE, GENESIS, KINDS, RESTORE, TERMINAL, JobRecord, Step
from worker.jobstore.redis_store import STORE_UNREACHABLE, RedisJobStore
from worker.settings import EXOSCALE_ZONES

__all__ = [
    "ARCHIVE",
    "GENESIS",
    "KINDS",
    "RESTORE",
    "STORE_UNREACHABLE",
    "TERMINAL",
    "JobRecord",
    "JobStore",
    "MemoryJobStore",
    "RedisJobStore",
    "Step",
    "find_jobs",
]


class JobStore(Protocol):
    """What the steps and the CLI need from a job store.

    Leases belong to one run (an ``owner`` token): only the holder renews or releases a lease
    and saves the checkpoint, and an expired lease is free. Every call about one job takes its
    ``kind`` (default :data:`ARCHIVE`); jobs of different kinds share nothing. A lease is
    named by two words: a job's zone and snapshot id, or a role (``scheduler``, ``leader``).
    """

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the store answers now."""
        ...

    async def claim(
        self, zone: str, snapshot_id: str, *, replace_done: bool = False, kind: str = ARCHIVE
    ) -> tuple[JobRecord, bool]:
        """Create the job of a snapshot, or return the one that exists (and ``False``)."""
        ...

    async def discard(self, record: JobRecord) -> bool:
        """Delete a job just claimed, if it is still queued and untouched."""
        ...

    async def get(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE
    ) -> JobRecord | None: ...

    async def update(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE, **changes: Any
    ) -> bool:
        """Set fields of a job that exists; ``False`` (nothing written) when it does not."""
        ...

    async def list(self, limit: int = 100) -> list[JobRecord]:
        """The most recently updated jobs of every kind, newest first."""
        ...

    async def save_checkpoint(
        self, zone: str, snapshot_id: str, data: dict[str, Any], owner: str, *, kind: str = ARCHIVE
    ) -> bool:
        """Store the checkpoint if ``owner`` holds the lease; whether it did."""
        ...

    async def load_checkpoint(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE
    ) -> dict[str, Any] | None: ...

    async def clear_checkpoint(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE
    ) -> None: ...

    async def acquire_lease(
        self, zone: str, snapshot_id: str, owner: str, ttl: float, *, kind: str = ARCHIVE
    ) -> bool:
        """Take (or renew, for its holder) the lease for ``ttl`` seconds; whether it did."""
        ...

    async def renew_lease(
        self, zone: str, snapshot_id: str, owner: str, ttl: float, *, kind: str = ARCHIVE
    ) -> bool: ...

    async def release_lease(
        self, zone: str, snapshot_id: str, owner: str, *, kind: str = ARCHIVE
    ) -> None: ...

    async def lease_left(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> float:
        """Seconds until the lease expires; 0 when nobody holds it."""
        ...

    async def save_doc(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Store a JSON document (a backup run, a policy's snapshot, ...), replacing it."""
        ...

    async def load_doc(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def list_docs(
        self, kind: str, prefix: str = ""
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """``(key, document)`` of the documents of ``kind`` whose key starts with ``prefix``."""
        ...

    async def delete_doc(self, kind: str, key: str) -> None: ...

    async def set_once(self, name: str, ttl: float) -> bool:
        """Set a mark unless it is set (for ``ttl`` seconds); whether this call set it."""
        ...


async def find_jobs(
    store: JobStore, snapshot_id: str, zone: str | None = None, kinds: tuple[str, ...] = KINDS
) -> list[JobRecord]:
    """The jobs of ``snapshot_id`` in ``zone`` (default: in each zone of
    :data:`~worker.settings.EXOSCALE_ZONES`) of ``kinds`` (default every kind), the running one
    first.

    Snapshot ids are UUIDs, unique across zones, so there is at most one in practice; a direct
    look in each zone finds it however many other jobs the store holds. A job in a zone newer
    than that list (any well-formed zone name is accepted) is found when ``zone`` is given.
    """
    zones = (zone,) if zone else EXOSCALE_ZONES
    records = [await store.get(z, snapshot_id, kind=k) for z in zones for k in kinds]
    found = [r for r in records if r is not None]
    return sorted(found, key=lambda r: (r.active, r.updated_at), reverse=True)
