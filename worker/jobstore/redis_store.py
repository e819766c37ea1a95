"""Job state in Redis, shared by every worker and the CLI.

Layout (``{ns}`` is ``SNAPARCHIVE_QUEUE``, default ``snaparchive``), for archive jobs:
  ``{ns}:job:{zone}:{id}``         hash of JSON-encoded :class:`JobRecord` fields
  ``{ns}:jobs``                    sorted set of ``{zone}:{id}`` by last update
  ``{ns}:checkpoint:{zone}:{id}``  the transfer checkpoint (JSON)
  ``{ns}:lease:{zone}:{id}``       the owner token of the run transferring, with expiry

Restore jobs (``kind`` :data:`~worker.jobstore.record.RESTORE`) have the same keys with
``restore:`` after the namespace (``{ns}:restore:job:{zone}:{id}``, ...), and are in the
same ``{ns}:jobs`` index as ``restore:{zone}:{id}``. Archive keys are unchanged: records
written before kinds existed are archive jobs and read as ever.

A record is written whole by :meth:`RedisJobStore.claim` only; :meth:`RedisJobStore.update`
changes the fields of a record that exists and never creates one (after a Redis restart without
persistence, progress written by a running transfer must not leave a partial record). Every
read-modify-write is one Lua script, so it is atomic.
"""

from __future__ import annotations

import builtins
import json
import time
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions

from worker.errors import SnaparchiveError
from worker.jobstore.record import ARCHIVE, JobRecord, Step, job_key, new_record, parse, split_key
from worker.settings import Settings

#: What a job store call raises while the store is unreachable (restarting, failing over, the
#: network): a pause, not a verdict on the job. ``TimeoutError`` covers a call given up on.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TimeoutError,
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

    def _key(self, what: str, zone: str, snapshot_id: str, kind: str = ARCHIVE) -> str:
        if kind == ARCHIVE:
            return f"{self.ns}:{what}:{zone}:{snapshot_id}"
        return f"{self.ns}:{kind}:{what}:{zone}:{snapshot_id}"

    async def claim(
        self, zone: str, snapshot_id: str, *, replace_done: bool = False, kind: str = ARCHIVE
    ) -> tuple[JobRecord, bool]:
        """Create the job of a snapshot, or return the one that exists.

        A failed, cancelled or :attr:`Step.UNREADABLE` job is replaced by a new one.

        Parameters:
          zone, snapshot_id: The job.
          replace_done: Replace a done job too (its archive is gone from the bucket).
          kind: The job's kind (default an archive).

        Returns:
          The record, and whether it was created now (``False``: an active job was joined, the
          snapshot's job is already done, or its record stayed unreadable through every try).
        """
        stale: list[str | bytes] = ["0", "", ""]
        found: JobRecord | None = None
        for _ in range(_CLAIM_ATTEMPTS):
            record = new_record(zone, snapshot_id, kind)
            existing = await self.redis.eval(
                _CLAIM,
                2,
                self._key("job", zone, snapshot_id, kind),
                f"{self.ns}:jobs",
                repr(record.updated_at),
                record.key,
                "1" if replace_done else "0",
                *stale,
                *_flat(record.to_dict()),
            )
            if existing is None:
                await self.clear_checkpoint(zone, snapshot_id, kind=kind)
                return record, True
            found, raw = await self._read(zone, snapshot_id, kind)
            if found is not None and found.step != Step.UNREADABLE:
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
                self._key("job", record.zone, record.snapshot_id, record.kind),
                f"{self.ns}:jobs",
                json.dumps(record.updated_at),
                record.key,
            )
        )

    async def _read(
        self, zone: str, snapshot_id: str, kind: str = ARCHIVE
    ) -> tuple[JobRecord | None, dict[bytes, bytes]]:
        # The client decodes nothing (no decode_responses): names and values are bytes.
        key = self._key("job", zone, snapshot_id, kind)
        data = cast(dict[bytes, bytes], await self.redis.hgetall(key))
        if not data:
            return None, {}
        return parse(zone, snapshot_id, data, kind), data

    async def get(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> JobRecord | None:
        """The job's record; ``None`` when there is none; an :attr:`Step.UNREADABLE` record (the
        reason in ``error``) when the stored one cannot be read."""
        return (await self._read(zone, snapshot_id, kind))[0]

    async def update(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE, **changes: Any
    ) -> bool:
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
                self._key("job", zone, snapshot_id, kind),
                f"{self.ns}:jobs",
                repr(changes["updated_at"]),
                job_key(zone, snapshot_id, kind),
                *_flat(changes),
            )
        )

    async def list(self, limit: int = 100) -> list[JobRecord]:
        """Return the most recently updated jobs of every kind, newest first (unreadable ones
        included)."""
        members = cast(list[bytes], await self.redis.zrevrange(f"{self.ns}:jobs", 0, limit - 1))
        records = []
        for member in members:
            kind, zone, snapshot_id = split_key(member.decode(errors="replace"))
            record = await self.get(zone, snapshot_id, kind=kind)
            if record is not None:
                records.append(record)
        return records

    async def save_checkpoint(
        self, zone: str, snapshot_id: str, data: dict[str, Any], owner: str, *, kind: str = ARCHIVE
    ) -> bool:
        """Store the transfer checkpoint, only while ``owner`` holds the lease.

        Returns:
          Whether it was stored (``False``: ``owner`` does not hold the lease any more, and the
          checkpoint of whoever does now stays as it is).
        """
        key = self._key("checkpoint", zone, snapshot_id, kind)
        lease = self._key("lease", zone, snapshot_id, kind)
        return bool(await self.redis.eval(_SAVE_LEASED, 2, lease, key, owner, json.dumps(data)))

    async def load_checkpoint(
        self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE
    ) -> dict[str, Any] | None:
        raw = await self.redis.get(self._key("checkpoint", zone, snapshot_id, kind))
        return json.loads(raw) if raw else None

    async def clear_checkpoint(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> None:
        await self.redis.delete(self._key("checkpoint", zone, snapshot_id, kind))

    async def acquire_lease(
        self, zone: str, snapshot_id: str, owner: str, ttl: float, *, kind: str = ARCHIVE
    ) -> bool:
        """Take the job's lease unless another live worker holds it (``ttl`` seconds)."""
        key = self._key("lease", zone, snapshot_id, kind)
        if await self.redis.set(key, owner, nx=True, px=int(ttl * 1000)):
            return True
        return await self.renew_lease(zone, snapshot_id, owner, ttl, kind=kind)

    async def renew_lease(
        self, zone: str, snapshot_id: str, owner: str, ttl: float, *, kind: str = ARCHIVE
    ) -> bool:
        key = self._key("lease", zone, snapshot_id, kind)
        return bool(await self.redis.eval(_RENEW, 1, key, owner, int(ttl * 1000)))

    async def release_lease(
        self, zone: str, snapshot_id: str, owner: str, *, kind: str = ARCHIVE
    ) -> None:
        await self.redis.eval(_RELEASE, 1, self._key("lease", zone, snapshot_id, kind), owner)

    async def lease_left(self, zone: str, snapshot_id: str, *, kind: str = ARCHIVE) -> float:
        """Seconds until the lease expires unless renewed; 0 when nobody holds it."""
        millis = await self.redis.pttl(self._key("lease", zone, snapshot_id, kind))
        return max(0, millis) / 1000

    # -- documents: backup runs, a policy's snapshots, the scheduler's marks -----------------

    def _doc(self, kind: str, key: str) -> str:
        return f"{self.ns}:{kind}:{key}"

    async def save_doc(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Store ``data`` as the document ``key`` of ``kind`` (replacing it), and index it."""
        await self.redis.set(self._doc(kind, key), json.dumps(data))
        await self.redis.zadd(f"{self.ns}:{kind}:index", {key: time.time()})

    async def load_doc(self, kind: str, key: str) -> dict[str, Any] | None:
        """Return a document; ``None`` when there is none or it is not a JSON object."""
        raw = await self.redis.get(self._doc(kind, key))
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def list_docs(
        self, kind: str, prefix: str = ""
    ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Return ``(key, document)`` of every document of ``kind`` whose key starts with
        ``prefix``, oldest first."""
        keys = [
            k.decode(errors="replace")
            for k in cast(list[bytes], await self.redis.zrange(f"{self.ns}:{kind}:index", 0, -1))
        ]
        found = []
        for key in keys:
            if key.startswith(prefix) and (data := await self.load_doc(kind, key)) is not None:
                found.append((key, data))
        return found

    async def delete_doc(self, kind: str, key: str) -> None:
        await self.redis.delete(self._doc(kind, key))
        await self.redis.zrem(f"{self.ns}:{kind}:index", key)

    async def set_once(self, name: str, ttl: float) -> bool:
        """Set the mark ``name`` unless it is set (for ``ttl`` seconds); whether this call
        set it. One scheduled slot fires once however many schedulers see it."""
        return bool(
            await self.redis.set(f"{self.ns}:once:{name}", "1", nx=True, px=int(ttl * 1000))
        )
