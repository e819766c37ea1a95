"""Where archive jobs keep their state: step, operation, progress, result, lease, checkpoint.

Jobs are keyed by (zone, snapshot id): at most one active job per snapshot. The Redis
store is shared by every worker, so ``snaparchive status`` works from any machine;
the memory store serves ``snaparchive archive --local``, which needs no Redis.

Redis layout (``{ns}`` defaults to ``snaparchive``):
  ``{ns}:job:{zone}:{id}``         hash of JSON-encoded :class:`JobRecord` fields
  ``{ns}:jobs``                    sorted set of ``{zone}:{id}`` by last update
  ``{ns}:checkpoint:{zone}:{id}``  the transfer checkpoint (JSON)
  ``{ns}:lease:{zone}:{id}``       the owner token of the worker transferring, with expiry
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from worker.settings import EXOSCALE_ZONES, Settings

#: What a job store call raises while the store is unreachable (restarting, failing over, the
#: network): a pause, not a verdict on the job. ``TimeoutError`` covers a call given up on.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TimeoutError,
)

#: Steps of a job. The last three are terminal.
STEPS = ("queued", "exporting", "awaiting-export", "transferring", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")


@dataclass
class JobRecord:
    """The state of one archive job.

    Attributes:
      zone, snapshot_id: What is archived.
      step: One of :data:`STEPS`.
      created_at, updated_at: UNIX times.
      operation_id: The export operation being waited for, if any.
      wait_started_at: When waiting for the export began (drives the polling schedule).
      bytes_done, bytes_total: Transfer progress.
      result: The archive (bucket, manifest key, md5, size, objects) once done.
      error: Why the job failed, in one line.
      cancel_requested: An operator asked the job to stop.
    """

    zone: str
    snapshot_id: str
    step: str = "queued"
    created_at: float = 0.0
    updated_at: float = 0.0
    operation_id: str | None = None
    wait_started_at: float | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False

    @property
    def key(self) -> str:
        return f"{self.zone}:{self.snapshot_id}"

    @property
    def active(self) -> bool:
        return self.step not in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _new_record(zone: str, snapshot_id: str) -> JobRecord:
    now = time.time()
    return JobRecord(zone=zone, snapshot_id=snapshot_id, created_at=now, updated_at=now)


# Creates the job unless an active or finished one exists: the atomic "one job per snapshot".
# A failed or cancelled job is replaced by a new one. Returns the existing step, or nil.
_CLAIM = """
local step = redis.call('HGET', KEYS[1], 'step')
if step and step ~= '"failed"' and step ~= '"cancelled"' then
  return step
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return false
"""

# Renews or releases a lease only if this worker still owns it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Saves a checkpoint only while its writer holds the lease (a writer whose lease expired
# unnoticed must not overwrite the checkpoint of the worker that took over).
_SAVE_LEASED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisJobStore:
    """Job state in Redis, shared by all workers and the CLI.

    Parameters:
      url: A ``redis://`` URL.
      namespace: Prefix of every key (default ``snaparchive``).
    """

    def __init__(self, url: str, namespace: str = "snaparchive") -> None:
        self.redis = aioredis.Redis.from_url(url)
        self.ns = namespace

    @classmethod
    def for_settings(cls, settings: Settings) -> RedisJobStore:
        """The store at ``SNAPARCHIVE_REDIS_URL``, keyed under ``SNAPARCHIVE_QUEUE``."""
        return cls(settings.redis_url, namespace=settings.queue)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        """Return whether the store answers now."""
        try:
            return bool(await self.redis.ping())
        except STORE_UNREACHABLE:
            return False

    def _key(self, kind: str, zone: str, snapshot_id: str) -> str:
        return f"{self.ns}:{kind}:{zone}:{snapshot_id}"

    async def claim(self, zone: str, snapshot_id: str) -> tuple[JobRecord, bool]:
        """Create the job of a snapshot, or return the one that exists.

        Returns:
          The record, and whether it was created now (``False``: an active job was joined, or
          the snapshot's job is already done).
        """
        record = _new_record(zone, snapshot_id)
        flat: list[str] = []
        for name, value in record.to_dict().items():
            flat += [name, json.dumps(value)]
        existing = await self.redis.eval(
            _CLAIM,
            2,
            self._key("job", zone, snapshot_id),
            f"{self.ns}:jobs",
            str(record.updated_at),
            record.key,
            *flat,
        )
        if existing is None:
            await self.clear_checkpoint(zone, snapshot_id)
            return record, True
        found = await self.get(zone, snapshot_id)
        assert found is not None
        return found, False

    async def get(self, zone: str, snapshot_id: str) -> JobRecord | None:
        data = await self.redis.hgetall(self._key("job", zone, snapshot_id))
        if not data:
            return None
        return JobRecord.from_fields({k.decode(): json.loads(v) for k, v in data.items()})

    async def update(self, zone: str, snapshot_id: str, **changes: Any) -> None:
        """Set some fields of a job (and its ``updated_at``)."""
        changes["updated_at"] = time.time()
        await self.redis.hset(
            self._key("job", zone, snapshot_id),
            mapping={k: json.dumps(v) for k, v in changes.items()},
        )
        await self.redis.zadd(f"{self.ns}:jobs", {f"{zone}:{snapshot_id}": changes["updated_at"]})

    async def list(self, limit: int = 100) -> list[JobRecord]:
        """Return the most recently updated jobs, newest first."""
        members = await self.redis.zrevrange(f"{self.ns}:jobs", 0, limit - 1)
        records = []
        for member in members:
            zone, _, snapshot_id = member.decode().partition(":")
            record = await self.get(zone, snapshot_id)
            if record is not None:
                records.append(record)
        return records

    async def save_checkpoint(
        self, zone: str, snapshot_id: str, data: dict[str, Any], owner: str
    ) -> bool:
        """Store the transfer checkpoint, only while ``owner`` holds the lease.

        Returns:
          Whether it was stored (``False``: ``owner`` does not hold the lease any more, and the
          checkpoint of whoever does now stays as it is).
        """
        key = self._key("checkpoint", zone, snapshot_id)
        lease = self._key("lease", zone, snapshot_id)
        return bool(await self.redis.eval(_SAVE_LEASED, 2, lease, key, owner, json.dumps(data)))

    async def load_checkpoint(self, zone: str, snapshot_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self._key("checkpoint", zone, snapshot_id))
        return json.loads(raw) if raw else None

    async def clear_checkpoint(self, zone: str, snapshot_id: str) -> None:
        await self.redis.delete(self._key("checkpoint", zone, snapshot_id))

    async def acquire_lease(self, zone: str, snapshot_id: str, owner: str, ttl: float) -> bool:
        """Take the transfer lease unless another live worker holds it (``ttl`` seconds)."""
        key = self._key("lease", zone, snapshot_id)
        if await self.redis.set(key, owner, nx=True, px=int(ttl * 1000)):
            return True
        return await self.renew_lease(zone, snapshot_id, owner, ttl)

    async def renew_lease(self, zone: str, snapshot_id: str, owner: str, ttl: float) -> bool:
        key = self._key("lease", zone, snapshot_id)
        return bool(await self.redis.eval(_RENEW, 1, key, owner, int(ttl * 1000)))

    async def release_lease(self, zone: str, snapshot_id: str, owner: str) -> None:
        await self.redis.eval(_RELEASE, 1, self._key("lease", zone, snapshot_id), owner)

    async def lease_left(self, zone: str, snapshot_id: str) -> float:
        """Seconds until the lease expires unless renewed; 0 when nobody holds it."""
        millis = await self.redis.pttl(self._key("lease", zone, snapshot_id))
        return max(0, millis) / 1000


class MemoryJobStore:
    """Job state in this process only, for ``snaparchive archive --local``."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> bool:
        return True

    async def claim(self, zone: str, snapshot_id: str) -> tuple[JobRecord, bool]:
        key = f"{zone}:{snapshot_id}"
        existing = self.jobs.get(key)
        if existing is not None and existing.step not in ("failed", "cancelled"):
            return existing, False
        self.jobs[key] = _new_record(zone, snapshot_id)
        self.checkpoints.pop(key, None)
        return self.jobs[key], True

    async def get(self, zone: str, snapshot_id: str) -> JobRecord | None:
        return self.jobs.get(f"{zone}:{snapshot_id}")

    async def update(self, zone: str, snapshot_id: str, **changes: Any) -> None:
        record = self.jobs[f"{zone}:{snapshot_id}"]
        for name, value in changes.items():
            setattr(record, name, value)
        record.updated_at = time.time()

    async def list(self, limit: int = 100) -> list[JobRecord]:
        return sorted(self.jobs.values(), key=lambda r: -r.updated_at)[:limit]

    async def save_checkpoint(
        self, zone: str, snapshot_id: str, data: dict[str, Any], owner: str
    ) -> bool:
        self.checkpoints[f"{zone}:{snapshot_id}"] = data
        return True

    async def load_checkpoint(self, zone: str, snapshot_id: str) -> dict[str, Any] | None:
        return self.checkpoints.get(f"{zone}:{snapshot_id}")

    async def clear_checkpoint(self, zone: str, snapshot_id: str) -> None:
        self.checkpoints.pop(f"{zone}:{snapshot_id}", None)

    async def acquire_lease(self, zone: str, snapshot_id: str, owner: str, ttl: float) -> bool:
        return True

    async def renew_lease(self, zone: str, snapshot_id: str, owner: str, ttl: float) -> bool:
        return True

    async def release_lease(self, zone: str, snapshot_id: str, owner: str) -> None:
        """A single process needs no lease."""

    async def lease_left(self, zone: str, snapshot_id: str) -> float:
        return 0.0


JobStore = RedisJobStore | MemoryJobStore


async def find_jobs(store: JobStore, snapshot_id: str, zone: str | None = None) -> list[JobRecord]:
    """The jobs of ``snapshot_id`` in ``zone`` (default: in any zone), the running one first.

    Snapshot ids are UUIDs, unique across zones, so there is at most one in practice; a direct
    look in each zone finds it however many other jobs the store holds.
    """
    records = [await store.get(z, snapshot_id) for z in ((zone,) if zone else EXOSCALE_ZONES)]
    found = [r for r in records if r is not None]
    return sorted(found, key=lambda r: (r.active, r.updated_at), reverse=True)
