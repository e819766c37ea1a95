"""The Redis job store on a real Redis: one job per snapshot, leases, checkpoints."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from worker.jobstore import MemoryJobStore, RedisJobStore, find_jobs

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def store() -> AsyncIterator[RedisJobStore]:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisJobStore(REDIS_URL, namespace=namespace)
    yield store
    keys = [key async for key in store.redis.scan_iter(f"{namespace}:*")]
    if keys:
        await store.redis.delete(*keys)
    await store.close()


@pytest.fixture(params=["redis", "memory"])
async def any_store(request, store):
    return store if request.param == "redis" else MemoryJobStore()


async def test_second_claim_joins_until_failed(any_store) -> None:
    record, created = await any_store.claim("ch-gva-2", "snap-1")
    assert created and record.step == "queued"
    await any_store.update("ch-gva-2", "snap-1", step="transferring", bytes_done=5)
    joined, created = await any_store.claim("ch-gva-2", "snap-1")
    assert not created and joined.step == "transferring" and joined.bytes_done == 5
    await any_store.update("ch-gva-2", "snap-1", step="failed", error="boom")
    fresh, created = await any_store.claim("ch-gva-2", "snap-1")
    assert created and fresh.step == "queued" and fresh.error is None


async def test_done_job_is_reported_not_redone(any_store) -> None:
    await any_store.claim("de-fra-1", "snap-2")
    result = {"bucket": "b", "manifest": "m", "md5": "x", "size": 1, "objects": []}
    await any_store.update("de-fra-1", "snap-2", step="done", result=result)
    record, created = await any_store.claim("de-fra-1", "snap-2")
    assert not created and record.result == result
    assert [r.snapshot_id for r in await any_store.list()] == ["snap-2"]


async def test_lease_is_exclusive_and_expires(store: RedisJobStore) -> None:
    assert await store.acquire_lease("z", "s", "worker-a", ttl=30)
    assert not await store.acquire_lease("z", "s", "worker-b", ttl=30)
    assert await store.acquire_lease("z", "s", "worker-a", ttl=30)  # re-entrant for its owner
    assert not await store.renew_lease("z", "s", "worker-b", ttl=30)
    await store.release_lease("z", "s", "worker-b")  # not the owner: no effect
    assert not await store.acquire_lease("z", "s", "worker-b", ttl=30)
    await store.redis.pexpire(f"{store.ns}:lease:z:s", 1)  # as if worker-a went silent
    await asyncio.sleep(0.05)
    assert await store.acquire_lease("z", "s", "worker-b", ttl=30)


async def test_checkpoint_round_trip_and_cleared_by_new_claim(store: RedisJobStore) -> None:
    await store.claim("z", "s")
    assert await store.acquire_lease("z", "s", "worker-a", ttl=30)
    assert await store.save_checkpoint("z", "s", {"offset": 10, "parts": [[1, "etag"]]}, "worker-a")
    assert await store.load_checkpoint("z", "s") == {"offset": 10, "parts": [[1, "etag"]]}
    await store.update("z", "s", step="cancelled")
    await store.claim("z", "s")
    assert await store.load_checkpoint("z", "s") is None


async def test_a_leased_checkpoint_is_saved_only_by_the_lease_holder(store: RedisJobStore) -> None:
    assert await store.lease_left("z", "s") == 0
    assert await store.acquire_lease("z", "s", "worker-a", ttl=30)
    assert 29 < await store.lease_left("z", "s") <= 30
    assert await store.save_checkpoint("z", "s", {"offset": 5}, owner="worker-a")
    assert not await store.save_checkpoint("z", "s", {"offset": 1}, owner="worker-b")
    assert await store.load_checkpoint("z", "s") == {"offset": 5}
    await store.release_lease("z", "s", "worker-a")
    # A writer whose lease is gone (expired, taken over) leaves the checkpoint alone.
    assert not await store.save_checkpoint("z", "s", {"offset": 9}, owner="worker-a")
    assert await store.load_checkpoint("z", "s") == {"offset": 5}
    assert await store.ping()


async def test_an_unreachable_store_does_not_answer_a_ping() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    store = RedisJobStore(f"redis://127.0.0.1:{port}/0")
    try:
        assert not await store.ping()
    finally:
        await store.close()


async def test_find_jobs_looks_in_every_zone_running_job_first(store: RedisJobStore) -> None:
    snapshot = str(uuid.uuid4())
    await store.claim("de-fra-1", snapshot)
    await store.update("de-fra-1", snapshot, step="failed")
    await store.claim("at-vie-1", snapshot)
    for _ in range(20):  # other jobs do not hide it
        await store.claim("ch-gva-2", str(uuid.uuid4()))
    found = await find_jobs(store, snapshot)
    assert [(r.zone, r.active) for r in found] == [("at-vie-1", True), ("de-fra-1", False)]
    assert [r.zone for r in await find_jobs(store, snapshot, "de-fra-1")] == ["de-fra-1"]
    assert await find_jobs(store, snapshot, "ch-gva-2") == []


async def test_find_jobs_finds_a_job_in_a_zone_not_in_the_known_list(any_store) -> None:
    snapshot = str(uuid.uuid4())
    await any_store.claim("ch-xyz-9", snapshot)
    assert [r.zone for r in await find_jobs(any_store, snapshot, "ch-xyz-9")] == ["ch-xyz-9"]
