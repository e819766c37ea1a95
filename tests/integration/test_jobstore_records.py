"""Job records that went missing or bad, on a real Redis (and the memory store's same contract):
updates never create partial records, unreadable ones are reported and replaced, claims are
undone and done jobs replaced on request, and the memory store's leases are real."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from worker.jobstore import MemoryJobStore, RedisJobStore, Step, find_jobs

REDIS_URL = "redis://127.0.0.1:6379/0"
ZONE = "ch-gva-2"
RESULT = {"bucket": "b", "manifest": "m", "md5": "x", "size": 1, "objects": []}


@pytest.fixture
async def store() -> AsyncIterator[RedisJobStore]:
    store = RedisJobStore(REDIS_URL, namespace=f"test-{uuid.uuid4().hex[:12]}")
    yield store
    keys = await _keys(store)
    if keys:
        await store.redis.delete(*keys)
    await store.close()


@pytest.fixture(params=["redis", "memory"])
async def any_store(request, store):
    return store if request.param == "redis" else MemoryJobStore()


async def _keys(store: RedisJobStore) -> list[bytes]:
    return [key async for key in store.redis.scan_iter(f"{store.ns}:*")]


async def test_progress_after_the_record_is_lost_leaves_no_partial_record(store) -> None:
    await store.claim(ZONE, "snap-1")
    # Redis restarted without persistence: every key is gone.
    await store.redis.delete(*await _keys(store))

    written = await store.update(ZONE, "snap-1", bytes_done=5, bytes_total=10)

    assert written is False
    assert await _keys(store) == []
    assert await store.get(ZONE, "snap-1") is None
    assert await store.list() == []


async def test_an_update_of_a_missing_job_returns_false(any_store) -> None:
    assert await any_store.update(ZONE, "nothing", step="failed") is False
    await any_store.claim(ZONE, "snap-2")
    assert await any_store.update(ZONE, "snap-2", bytes_done=3) is True
    assert (await any_store.get(ZONE, "snap-2")).bytes_done == 3


# Hashes a reader must survive: what a progress write left after a restart (before updates
# were guarded), values that are not JSON or not text, values of the wrong type or shape.
GARBAGE = {
    "partial": {"bytes_done": "5", "bytes_total": "10", "updated_at": "1700000000.5"},
    "not json": {"zone": '"ch-gva-2"', "snapshot_id": '"s"', "step": "transferring"},
    "not text": {"zone": '"ch-gva-2"', "snapshot_id": '"s"', "step": b"\xff\xfe\x00"},
    "wrong types": {
        "zone": '"ch-gva-2"',
        "snapshot_id": '"s"',
        "step": '"transferring"',
        "updated_at": '"yesterday"',
        "bytes_done": '"many"',
        "bytes_total": "-1",
    },
    "bad result": {
        "zone": '"ch-gva-2"',
        "snapshot_id": '"s"',
        "step": '"done"',
        "updated_at": "1.0",
        "result": json.dumps({"bucket": "b", "objects": [{"key": 1}]}),
    },
    "unknown step": {"zone": '"ch-gva-2"', "snapshot_id": '"s"', "step": '"unreadable"'},
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_an_unreadable_record_is_reported_and_replaced_by_a_claim(store, kind) -> None:
    snapshot_id = "s"
    await store.redis.hset(f"{store.ns}:job:{ZONE}:{snapshot_id}", mapping=GARBAGE[kind])
    await store.redis.zadd(f"{store.ns}:jobs", {f"{ZONE}:{snapshot_id}": time.time()})

    record = await store.get(ZONE, snapshot_id)

    assert record.step == Step.UNREADABLE and not record.active
    assert record.zone == ZONE and record.snapshot_id == snapshot_id
    assert record.error.startswith("unreadable job record (")
    assert "many" not in record.error and "yesterday" not in record.error  # names, not values
    assert [r.step for r in await store.list()] == [Step.UNREADABLE]
    assert [r.step for r in await find_jobs(store, snapshot_id)] == [Step.UNREADABLE]
    assert await store.update(ZONE, snapshot_id, bytes_done=1)  # it exists: not replaced

    fresh, created = await store.claim(ZONE, snapshot_id)

    assert created and fresh.step == "queued"
    assert (await store.get(ZONE, snapshot_id)).step == "queued"


async def test_the_reason_names_missing_and_invalid_fields(store) -> None:
    await store.redis.hset(f"{store.ns}:job:{ZONE}:s", mapping=GARBAGE["wrong types"])
    record = await store.get(ZONE, "s")
    assert record.error == (
        "unreadable job record (invalid bytes_done, bytes_total, updated_at); "
        "archiving it again replaces it"
    )
    await store.redis.delete(f"{store.ns}:job:{ZONE}:s")
    await store.redis.hset(f"{store.ns}:job:{ZONE}:s", mapping=GARBAGE["partial"])
    assert "missing zone, snapshot_id, step" in (await store.get(ZONE, "s")).error


async def test_a_record_written_before_sent_at_existed_is_read(store) -> None:
    await store.claim(ZONE, "old")
    await store.redis.hdel(f"{store.ns}:job:{ZONE}:old", "sent_at")
    read = await store.get(ZONE, "old")
    assert read.step == "queued" and read.sent_at is None


async def test_a_claim_is_undone_only_while_untouched(any_store) -> None:
    record, created = await any_store.claim(ZONE, "a")
    assert created
    assert await any_store.discard(record)
    assert await any_store.get(ZONE, "a") is None
    assert [r.snapshot_id for r in await any_store.list()] == []

    record, _ = await any_store.claim(ZONE, "b")
    await any_store.update(ZONE, "b", step=Step.AWAITING_EXPORT)  # a worker took it meanwhile
    assert not await any_store.discard(record)
    assert (await any_store.get(ZONE, "b")).step == Step.AWAITING_EXPORT


async def test_a_done_job_is_replaced_only_when_asked(any_store) -> None:
    await any_store.claim(ZONE, "d")
    await any_store.update(ZONE, "d", step="done", result=RESULT)
    kept, created = await any_store.claim(ZONE, "d")
    assert not created and kept.step == "done"
    fresh, created = await any_store.claim(ZONE, "d", replace_done=True)
    assert created and fresh.step == "queued" and fresh.result is None
    # An active job is joined, asked or not.
    joined, created = await any_store.claim(ZONE, "d", replace_done=True)
    assert not created and joined.step == "queued"


async def test_memory_leases_are_exclusive_and_expire() -> None:
    store = MemoryJobStore()  # as ``archive --local`` uses it when Redis does not answer
    assert await store.lease_left(ZONE, "s") == 0
    assert await store.acquire_lease(ZONE, "s", "run-a", ttl=30)
    assert 29 < await store.lease_left(ZONE, "s") <= 30
    assert not await store.acquire_lease(ZONE, "s", "run-b", ttl=30)
    assert await store.acquire_lease(ZONE, "s", "run-a", ttl=30)  # re-entrant for its owner
    assert not await store.renew_lease(ZONE, "s", "run-b", ttl=30)
    assert await store.save_checkpoint(ZONE, "s", {"offset": 5}, owner="run-a")
    assert not await store.save_checkpoint(ZONE, "s", {"offset": 1}, owner="run-b")
    await store.release_lease(ZONE, "s", "run-b")  # not the owner: no effect
    assert not await store.acquire_lease(ZONE, "s", "run-b", ttl=30)
    await store.release_lease(ZONE, "s", "run-a")
    assert await store.lease_left(ZONE, "s") == 0
    assert not await store.save_checkpoint(ZONE, "s", {"offset": 9}, owner="run-a")
    assert await store.load_checkpoint(ZONE, "s") == {"offset": 5}

    assert await store.acquire_lease(ZONE, "t", "run-a", ttl=0.01)
    await asyncio.sleep(0.05)  # run-a went silent
    assert await store.lease_left(ZONE, "t") == 0
    assert not await store.renew_lease(ZONE, "t", "run-a", ttl=30)
    assert await store.acquire_lease(ZONE, "t", "run-b", ttl=30)
