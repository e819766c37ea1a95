"""Job state in this process only, with the same contract as the Redis store."""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import replace
from typing import Any

from worker.jobstore.record import ARCHIVE, REPLACEABLE, JobRecord, Step, job_key, new_record


class MemoryJobStore:
    """Job state in this process only: ``archive --local`` when Redis does not answer, and
    ``snaparchive demo``. Same contract as :class:`RedisJobStore`, leases included (an owner
    token and an expiry), within this process."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        #: :func:`~worker.jobstore.record.job_key` → (owner, expiry on the ``time.monotonic``
        #: clock). Jobs and checkpoints are keyed the same way.
        self.leases: dict[str, tuple[str, float]] = {}
        #: ``kind`` → ``key`` → document, in the order saved.
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        #: Marks set by :meth:`set_once` → expiry (``time.monotonic``).
        self.marks: dict[str, float] = {}

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> bool:
        return True

    async def claim(
        self, zone: str, snapshot_id: str, *, replace_done: bool = False, kind: str = ARCHIVE
    ) -> tuple[JobRecord, bool]:
        key = job_key(zone, snapshot_id, kind)
        existing = self.jobs.get(key)
        replaceable = REPLACEABLE | {Step.DONE} if replace_done else REPLACEABLE
        if existing is not None and existing.step not in replaceable:
            return replace(existing), False
        self.jobs[key] = new_record(zone, snapshot_id, kind)
        self.checkpoints.pop(key, None)
        return replace(self.jobs[key]), True

    async def discard(self, record: JobRecord) -> bool:
        current = self.jobs.get(record.key)
        untouched = current is not None and current.updated_at == record.updated_at
        if current is None or current.step != Step.QUEUED or not untouched:
            return False
        del self.jobs[record.key]
        return True

    async def get(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> JobRecord | None:
        # A copy, as Redis returns: what a caller holds does not change under it.
        record = self.jobs.get(job_key(zone, snapshot_id, kind))
        return replace(record) if record is not None else None

    async def update(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE, **changes: Any
    ) -> bool:
        record = self.jobs.get(job_key(zone, snapshot_id, kind))
        if record is None:
            return False
        for name, value in changes.items():
            setattr(record, name, value)
        record.updated_at = time.time()
        return True

    async def list(self, limit: int = 100) -> list[JobRecord]:
        return [replace(r) for r in sorted(self.jobs.values(), key=lambda r: -r.updated_at)][:limit]

    def _holder(self, key: str) -> str | None:
        """The owner of a live lease, dropping an expired one."""
        held = self.leases.get(key)
        if held is not None and held[1] <= time.monotonic():
            del self.leases[key]
            held = None
        return held[0] if held else None

    async def save_checkpoint(
        self, zone: str, snapshot_id: str, data: dict[str, Any], owner: str, *, kind: str = ARCHIVE
    ) -> bool:
        key = job_key(zone, snapshot_id, kind)
        if self._holder(key) != owner:
            return False
        self.checkpoints[key] = data
        return True

    async def load_checkpoint(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE
    ) -> dict[str, Any] | None:
        return self.checkpoints.get(job_key(zone, snapshot_id, kind))

    async def clear_checkpoint(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> None:
        self.checkpoints.pop(job_key(zone, snapshot_id, kind), None)

    async def acquire_lease(
        self, zone: str, snapshot_id: str, owner: str, ttl: float, *, kind: str = ARCHIVE
    ) -> bool:
        key = job_key(zone, snapshot_id, kind)
        if self._holder(key) not in (None, owner):
            return False
        self.leases[key] = (owner, time.monotonic() + ttl)
        return True

    async def renew_lease(
        self, zone: str, snapshot_id: str, owner: str, ttl: float, *, kind: str = ARCHIVE
    ) -> bool:
        key = job_key(zone, snapshot_id, kind)
        if self._holder(key) != owner:
            return False
        self.leases[key] = (owner, time.monotonic() + ttl)
        return True

    async def release_lease(
        self, zone: str, snapshot_id: str, owner: str, *, kind: str = ARCHIVE
    ) -> None:
        key = job_key(zone, snapshot_id, kind)
        if self._holder(key) == owner:
            del self.leases[key]

    async def lease_left(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> float:
        key = job_key(zone, snapshot_id, kind)
        if self._holder(key) is None:
            return 0.0
        return max(0.0, self.leases[key][1] - time.monotonic())

    async def save_doc(self, kind: str, key: str, data: dict[str, Any]) -> None:
        documents = self.docs.setdefault(kind, {})
        documents.pop(key, None)
        documents[key] = json.loads(json.dumps(data))  # a copy, as Redis stores it

    async def load_doc(self, kind: str, key: str) -> dict[str, Any] | None:
        data = self.docs.get(kind, {}).get(key)
        return json.loads(json.dumps(data)) if data is not None else None

    async def list_docs(
        self, kind: str, prefix: str = ""
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        return [
            (key, json.loads(json.dumps(data)))
            for key, data in self.docs.get(kind, {}).items()
            if key.startswith(prefix)
        ]

    async def delete_doc(self, kind: str, key: str) -> None:
        self.docs.get(kind, {}).pop(key, None)

    async def set_once(self, name: str, ttl: float) -> bool:
        now = time.monotonic()
        if self.marks.get(name, 0.0) > now:
            return False
        self.marks[name] = now + ttl
        return True
