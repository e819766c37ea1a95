"""Where archive jobs keep their state: step, operation, progress, result, lease, checkpoint.

Jobs are keyed by (zone, snapshot id): at most one active job per snapshot. The Redis
store is shared by every worker, so ``snaparchive status`` works from any machine;
``snaparchive archive --local`` uses it too when Redis answers, and the memory store
otherwise (and in ``snaparchive demo``).

A record is written whole by :meth:`RedisJobStore.claim` only; :meth:`RedisJobStore.update`
changes the fields of a record that exists and never creates one (after a Redis restart without
persistence, progress written by a running transfer must not leave a partial record). A record
that cannot be read (fields missing, values that are not JSON or not of their type) is reported,
not raised: :meth:`RedisJobStore.get` returns it with the step :data:`UNREADABLE` and the reason
in ``error``, and the next claim replaces it.

Redis layout (``{ns}`` defaults to ``snaparchive``):
  ``{ns}:job:{zone}:{id}``         hash of JSON-encoded :class:`JobRecord` fields
  ``{ns}:jobs``                    sorted set of ``{zone}:{id}`` by last update
  ``{ns}:checkpoint:{zone}:{id}``  the transfer checkpoint (JSON)
  ``{ns}:lease:{zone}:{id}``       the owner token of the worker transferring, with expiry
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from worker.errors import SnaparchiveError
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
#: The step of a record the store cannot read: no job takes it. It counts as terminal, so no
#: step works on such a job (a message for it is dropped) and a new claim replaces it.
UNREADABLE = "unreadable"
TERMINAL = ("done", "failed", "cancelled", UNREADABLE)


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
      sent_at: When the job's first message was handed to the broker (``None``: never, as
        for a send that failed or an ``archive --local`` run).
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
    sent_at: float | None = None

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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _result(value: Any) -> bool:
    """The shape ``status`` and ``archive`` print from: see :func:`jobs.steps.summary`."""
    if not isinstance(value, dict):
        return False
    keys_ok = all(isinstance(value.get(k), str) for k in ("bucket", "manifest", "md5"))
    objects = value.get("objects")
    return (
        keys_ok
        and _count(value.get("size"))
        and isinstance(objects, list)
        and all(isinstance(o, dict) and isinstance(o.get("key"), str) for o in objects)
        and all(_count(o.get("size")) for o in objects)
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _string(value: Any) -> bool:
    return isinstance(value, str)


#: What each field of a stored record must hold to be read.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "zone": _string,
    "snapshot_id": _string,
    "step": lambda value: value in STEPS,
    "created_at": _number,
    "updated_at": _number,
    "operation_id": _optional(_string),
    "wait_started_at": _optional(_number),
    "bytes_done": _count,
    "bytes_total": _optional(_count),
    "result": _optional(_result),
    "error": _optional(_string),
    "cancel_requested": lambda value: isinstance(value, bool),
    "sent_at": _optional(_number),
}
#: Fields a record cannot do without; the others have defaults (records written before a
#: field existed lack it).
_REQUIRED = ("zone", "snapshot_id", "step", "updated_at")


def _parse(zone: str, snapshot_id: str, data: dict[bytes, bytes]) -> JobRecord:
    """The record a job hash holds, or an :data:`UNREADABLE` one naming what is wrong.

    The reason names fields only, never their values (they are not ours to print).
    """
    values: dict[str, Any] = {}
    invalid: list[str] = []
    for raw_name, raw_value in data.items():
        name = raw_name.decode(errors="replace")
        check = _CHECKS.get(name)
        if check is None:
            continue  # a field of a newer version
        try:
            value = json.loads(raw_value)
        except ValueError:  # not JSON, or not text at all
            invalid.append(name)
            continue
        if not check(value):
            invalid.append(name)
            continue
        values[name] = value
    for name, expected in (("zone", zone), ("snapshot_id", snapshot_id)):
        if name in values and values[name] != expected:
            del values[name]
            invalid.append(name)
    missing = [name for name in _REQUIRED if name not in values and name not in invalid]
    if not missing and not invalid:
        return JobRecord.from_fields(values)
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if invalid:
        problems.append("invalid " + ", ".join(sorted(invalid)))
    return JobRecord(
        zone=zone,
        snapshot_id=snapshot_id,
        step=UNREADABLE,
        created_at=values.get("created_at", 0.0),
        updated_at=values.get("updated_at", 0.0),
        error=f"unreadable job record ({'; '.join(problems)}); archiving it again replaces it",
    )


# Creates the job unless an active or finished one exists: the atomic "one job per snapshot".
# A failed or cancelled job is replaced by a new one, and so is a hash with no step (what is
# left of a record by a writer from before updates were guarded). ARGV[3] = '1' replaces a done
# job too (its archive is gone from the bucket). ARGV[4] = '1' replaces a record whose step and
# updated_at are still ARGV[5] and ARGV[6]: an unreadable record, untouched since it was read.
# Returns the existing step, or nil when the job was created.
_CLAIM = """
local step = redis.call('HGET', KEYS[1], 'step')
local replace = (not step) or step == '"failed"' or step == '"cancelled"'
  or (ARGV[3] == '1' and step == '"done"')
if not replace and ARGV[4] == '1' and step == ARGV[5] then
  replace = (redis.call('HGET', KEYS[1], 'updated_at') or '') == ARGV[6]
end
if not replace then
  return step
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return false
"""

# Sets fields of a job only if its record exists: a write after the record was lost (a Redis
# restart without persistence, a delete) must not leave a partial one behind.
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# Deletes a job just claimed, only if it is still queued and untouched since (ARGV[1] is the
# updated_at the claim wrote): undoes a claim whose message could not be sent.
_DISCARD = """
if redis.call('HGET', KEYS[1], 'step') == '"queued"'
    and redis.call('HGET', KEYS[1], 'updated_at') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
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

#: Claims tried before giving up on a record that changes under each one.
_CLAIM_ATTEMPTS = 3


def _flat(values: dict[str, Any]) -> list[str]:
    """``[name, json, name, json, ...]``: the fields of a record as Redis stores them."""
    flat: list[str] = []
    for name, value in values.items():
        flat += [name, json.dumps(value)]
    return flat


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

    async def claim(
        self, zone: str, snapshot_id: str, *, replace_done: bool = False
    ) -> tuple[JobRecord, bool]:
        """Create the job of a snapshot, or return the one that exists.

        A failed, cancelled or :data:`UNREADABLE` job is replaced by a new one.

        Parameters:
          zone, snapshot_id: The job.
          replace_done: Replace a done job too (its archive is gone from the bucket).

        Returns:
          The record, and whether it was created now (``False``: an active job was joined, the
          snapshot's job is already done, or its record stayed unreadable through every try).
        """
        stale: list[str | bytes] = ["0", "", ""]
        found: JobRecord | None = None
        for _ in range(_CLAIM_ATTEMPTS):
            record = _new_record(zone, snapshot_id)
            existing = await self.redis.eval(
                _CLAIM,
                2,
                self._key("job", zone, snapshot_id),
                f"{self.ns}:jobs",
                repr(record.updated_at),
                record.key,
                "1" if replace_done else "0",
                *stale,
                *_flat(record.to_dict()),
            )
            if existing is None:
                await self.clear_checkpoint(zone, snapshot_id)
                return record, True
            found, raw = await self._read(zone, snapshot_id)
            if found is not None and found.step != UNREADABLE:
                return found, False
            # Gone meanwhile, or unreadable: claim again, replacing what was read if unchanged.
            stale = ["1", raw.get(b"step", b""), raw.get(b"updated_at", b"")]
        if found is None:
            raise SnaparchiveError(f"the job record of {zone}/{snapshot_id} keeps vanishing")
        return found, False

    async def discard(self, record: JobRecord) -> bool:
        """Delete a job just claimed, only if it is still queued and nobody changed it since.

        Returns:
          Whether it was deleted.
        """
        return bool(
            await self.redis.eval(
                _DISCARD,
                2,
                self._key("job", record.zone, record.snapshot_id),
                f"{self.ns}:jobs",
                json.dumps(record.updated_at),
                record.key,
            )
        )

    async def _read(
        self, zone: str, snapshot_id: str
    ) -> tuple[JobRecord | None, dict[bytes, bytes]]:
        data = await self.redis.hgetall(self._key("job", zone, snapshot_id))
        if not data:
            return None, {}
        return _parse(zone, snapshot_id, data), data

    async def get(self, zone: str, snapshot_id: str) -> JobRecord | None:
        """The job's record; ``None`` when there is none; an :data:`UNREADABLE` record (the
        reason in ``error``) when the stored one cannot be read."""
        return (await self._read(zone, snapshot_id))[0]

    async def update(self, zone: str, snapshot_id: str, **changes: Any) -> bool:
        """Set some fields of a job (and its ``updated_at``), if its record exists.

        Returns:
          Whether the record exists (``False``: nothing was written; the record is gone, as
          after a Redis restart without persistence, and no partial one is left in its place).
        """
        changes["updated_at"] = time.time()
        return bool(
            await self.redis.eval(
                _UPDATE,
                2,
                self._key("job", zone, snapshot_id),
                f"{self.ns}:jobs",
                repr(changes["updated_at"]),
                f"{zone}:{snapshot_id}",
                *_flat(changes),
            )
        )

    async def list(self, limit: int = 100) -> list[JobRecord]:
        """Return the most recently updated jobs, newest first (unreadable ones included)."""
        members = await self.redis.zrevrange(f"{self.ns}:jobs", 0, limit - 1)
        records = []
        for member in members:
            zone, _, snapshot_id = member.decode(errors="replace").partition(":")
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
    """Job state in this process only: ``archive --local`` when Redis does not answer, and
    ``snaparchive demo``. Same contract as :class:`RedisJobStore`, leases included (an owner
    token and an expiry), within this process."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        #: ``{zone}:{id}`` → (owner, expiry on the ``time.monotonic`` clock).
        self.leases: dict[str, tuple[str, float]] = {}

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> bool:
        return True

    async def claim(
        self, zone: str, snapshot_id: str, *, replace_done: bool = False
    ) -> tuple[JobRecord, bool]:
        key = f"{zone}:{snapshot_id}"
        existing = self.jobs.get(key)
        replaceable = ("failed", "cancelled", "done") if replace_done else ("failed", "cancelled")
        if existing is not None and existing.step not in replaceable:
            return replace(existing), False
        self.jobs[key] = _new_record(zone, snapshot_id)
        self.checkpoints.pop(key, None)
        return replace(self.jobs[key]), True

    async def discard(self, record: JobRecord) -> bool:
        current = self.jobs.get(record.key)
        if current is None or current.step != "queued" or current.updated_at != record.updated_at:
            return False
        del self.jobs[record.key]
        return True

    async def get(self, zone: str, snapshot_id: str) -> JobRecord | None:
        # A copy, as Redis returns: what a caller holds does not change under it.
        record = self.jobs.get(f"{zone}:{snapshot_id}")
        return replace(record) if record is not None else None

    async def update(self, zone: str, snapshot_id: str, **changes: Any) -> bool:
        record = self.jobs.get(f"{zone}:{snapshot_id}")
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
        self, zone: str, snapshot_id: str, data: dict[str, Any], owner: str
    ) -> bool:
        key = f"{zone}:{snapshot_id}"
        if self._holder(key) != owner:
            return False
        self.checkpoints[key] = data
        return True

    async def load_checkpoint(self, zone: str, snapshot_id: str) -> dict[str, Any] | None:
        return self.checkpoints.get(f"{zone}:{snapshot_id}")

    async def clear_checkpoint(self, zone: str, snapshot_id: str) -> None:
        self.checkpoints.pop(f"{zone}:{snapshot_id}", None)

    async def acquire_lease(self, zone: str, snapshot_id: str, owner: str, ttl: float) -> bool:
        key = f"{zone}:{snapshot_id}"
        if self._holder(key) not in (None, owner):
            return False
        self.leases[key] = (owner, time.monotonic() + ttl)
        return True

    async def renew_lease(self, zone: str, snapshot_id: str, owner: str, ttl: float) -> bool:
        key = f"{zone}:{snapshot_id}"
        if self._holder(key) != owner:
            return False
        self.leases[key] = (owner, time.monotonic() + ttl)
        return True

    async def release_lease(self, zone: str, snapshot_id: str, owner: str) -> None:
        key = f"{zone}:{snapshot_id}"
        if self._holder(key) == owner:
            del self.leases[key]

    async def lease_left(self, zone: str, snapshot_id: str) -> float:
        key = f"{zone}:{snapshot_id}"
        if self._holder(key) is None:
            return 0.0
        return max(0.0, self.leases[key][1] - time.monotonic())


JobStore = RedisJobStore | MemoryJobStore


async def find_jobs(store: JobStore, snapshot_id: str, zone: str | None = None) -> list[JobRecord]:
    """The jobs of ``snapshot_id`` in ``zone`` (default: in each zone of
    :data:`~worker.settings.EXOSCALE_ZONES`), the running one first.

    Snapshot ids are UUIDs, unique across zones, so there is at most one in practice; a direct
    look in each zone finds it however many other jobs the store holds. A job in a zone newer
    than that list (any well-formed zone name is accepted) is found when ``zone`` is given.
    """
    records = [await store.get(z, snapshot_id) for z in ((zone,) if zone else EXOSCALE_ZONES)]
    found = [r for r in records if r is not None]
    return sorted(found, key=lambda r: (r.active, r.updated_at), reverse=True)
