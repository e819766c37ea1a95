"""Restore jobs beside archive jobs in the job store (issue 12), on a real Redis and in memory:
separate records, leases and checkpoints per kind, archive keys as they always were, and
``list``/``find_jobs`` showing both."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from worker.jobstore import (
    ARCHIVE,
    RESTORE,
    MemoryJobStore,
    RedisJobStore,
    Step,
    find_jobs,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
ZONE = "ch-gva-2"
RESTORED = {
    "template_id": "t",
    "name": "n",
    "zone": "de-fra-1",
    "size": 3,
    "checksum": "c",
    "source": {"zone": ZONE, "snapshot_id": "s", "manifest": "m"},
}


@pytest.fixture
async def store() -> AsyncIterator[RedisJobStore]:
    store = RedisJobStore(REDIS_URL, namespace=f"test-{uuid.uuid4().hex[:12]}")
    yield store
    keys = [key async for key in store.redis.scan_iter(f"{store.ns}:*")]
    if keys:
        await store.redis.delete(*keys)
    await store.close()


@pytest.fixture(params=["redis", "memory"])
async def any_store(request, store):
    return store if request.param == "redis" else MemoryJobStore()


async def test_a_restore_and_an_archive_of_one_snapshot_are_two_jobs(any_store):
    snapshot_id = str(uuid.uuid4())
    archive, created = await any_store.claim(ZONE, snapshot_id)
    assert created and archive.kind == ARCHIVE
    restore, created = await any_store.claim(ZONE, snapshot_id, kind=RESTORE)
    assert created and restore.kind == RESTORE
    request = {"target_zone": "de-fra-1", "name": "n"}
    assert await any_store.update(ZONE, snapshot_id, kind=RESTORE, restore=request)
    assert await any_store.update(ZONE, snapshot_id, kind=RESTORE, step=Step.DONE, result=RESTORED)
    assert (await any_store.get(ZONE, snapshot_id)).step == Step.QUEUED
    done = await any_store.get(ZONE, snapshot_id, kind=RESTORE)
    assert (done.step, done.result, done.restore) == (Step.DONE, RESTORED, request)
    # Leases and checkpoints of one kind are not the other's.
    assert await any_store.acquire_lease(ZONE, snapshot_id, "a", 30)
    assert await any_store.acquire_lease(ZONE, snapshot_id, "b", 30, kind=RESTORE)
    assert await any_store.save_checkpoint(ZONE, snapshot_id, {"k": 1}, "b", kind=RESTORE)
    assert await any_store.load_checkpoint(ZONE, snapshot_id) is None
    assert await any_store.load_checkpoint(ZONE, snapshot_id, kind=RESTORE) == {"k": 1}
    listed = await any_store.list()
    assert sorted((r.kind, r.snapshot_id) for r in listed) == [
        (ARCHIVE, snapshot_id),
        (RESTORE, snapshot_id),
    ]
    found = await find_jobs(any_store, snapshot_id)
    assert [r.kind for r in found] == [ARCHIVE, RESTORE]  # the active one first
    assert [r.kind for r in await find_jobs(any_store, snapshot_id, kinds=(RESTORE,))] == [RESTORE]


async def test_archive_keys_are_as_they_always_were(store):
    snapshot_id = str(uuid.uuid4())
    await store.claim(ZONE, snapshot_id)
    await store.claim(ZONE, snapshot_id, kind=RESTORE)
    keys = sorted([key.decode() async for key in store.redis.scan_iter(f"{store.ns}:*")])
    assert keys == [
        f"{store.ns}:job:{ZONE}:{snapshot_id}",
        f"{store.ns}:jobs",
        f"{store.ns}:restore:job:{ZONE}:{snapshot_id}",
    ]
    members = sorted(m.decode() for m in await store.redis.zrange(f"{store.ns}:jobs", 0, -1))
    assert members == [f"{ZONE}:{snapshot_id}", f"restore:{ZONE}:{snapshot_id}"]
    # A record written before kinds existed (no kind field) is an archive job.
    await store.redis.hdel(f"{store.ns}:job:{ZONE}:{snapshot_id}", "kind")
    assert (await store.get(ZONE, snapshot_id)).kind == ARCHIVE


async def test_a_restore_record_of_another_kind_or_shape_is_unreadable(store):
    snapshot_id = str(uuid.uuid4())
    await store.claim(ZONE, snapshot_id, kind=RESTORE)
    key = f"{store.ns}:restore:job:{ZONE}:{snapshot_id}"
    await store.redis.hset(key, "kind", json.dumps(ARCHIVE))
    record = await store.get(ZONE, snapshot_id, kind=RESTORE)
    assert record.step == Step.UNREADABLE and "invalid kind" in record.error
    assert record.error.endswith("restoring it again replaces it")
    await store.redis.hset(
        key, mapping={"kind": json.dumps(RESTORE), "result": '{"template_id": 1}'}
    )
    record = await store.get(ZONE, snapshot_id, kind=RESTORE)
    assert record.step == Step.UNREADABLE and "invalid result" in record.error
