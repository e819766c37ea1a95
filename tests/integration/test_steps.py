"""The transfer step over real Redis, the simulator and moto: leases per run, transient
failures that keep the uploads, unreadable checkpoints, failure records (issue 9)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import boto3
import pytest
from botocore.config import Config

from jobs.context import Context
from jobs.steps import (
    RESUME_PAUSE,
    Next,
    fail,
    finish_cancelled,
    transfer_snapshot,
)
from worker.archive import ArchiveStore
from worker.errors import StoreError
from worker.exoscale import ExoscaleClient
from worker.jobstore import RedisJobStore
from worker.settings import S3Settings, Settings
from worker.simulator import Faults
from worker.units import MiB

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/6"
ZONE = "ch-gva-2"
SIZE = 33 * MiB + 9


def _one_attempt_client(endpoint: str):
    """A boto3 client that does not retry: a store fault surfaces at once as a StoreError."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)


@pytest.fixture
async def make_ctx(simulator, s3_bucket, s3_proxy, small_transfer):
    """Build a step context: a Redis job store of its own, the simulator, moto behind the
    proxy (``retries=False``: a client that does not retry)."""
    made: list[Context] = []
    namespace = f"test-{uuid.uuid4().hex[:12]}"

    def make(retries: bool = True) -> Context:
        s3 = S3Settings(endpoint=s3_proxy.url, bucket=s3_bucket)
        settings = Settings(exoscale=simulator.settings(), s3=s3, transfer=small_transfer)
        client = None if retries else _one_attempt_client(s3_proxy.url)
        ctx = Context(
            settings=settings,
            store=RedisJobStore(REDIS_URL, namespace=namespace),
            exoscale=ExoscaleClient(settings.exoscale),
            archive=ArchiveStore(s3, client=client),
        )
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        await ctx.close()


async def _transferring(ctx: Context, simulator, size: int = SIZE) -> str:
    """An exported snapshot whose job is at the transfer step; returns its id."""
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, size, zone=ZONE, state="exported")
    await ctx.store.claim(ZONE, snapshot_id)
    await ctx.store.update(ZONE, snapshot_id, step="transferring")
    return snapshot_id


async def test_a_duplicate_message_in_the_same_process_does_not_share_the_lease(
    make_ctx, simulator, bucket
):
    # Before leases were per run, the second call renewed the first one's lease (same
    # process token) and both wrote parts into the same upload.
    ctx = make_ctx()
    snapshot_id = await _transferring(ctx, simulator)
    simulator.set_faults(Faults(slow_rate=16 * MiB), snapshot_id=snapshot_id)

    outcomes = await asyncio.gather(
        transfer_snapshot(ctx, ZONE, snapshot_id), transfer_snapshot(ctx, ZONE, snapshot_id)
    )

    assert sorted(outcomes, key=repr) == sorted(
        [None, Next("transfer_snapshot", outcomes[0].delay if outcomes[0] else outcomes[1].delay)],
        key=repr,
    )
    job = await ctx.store.get(ZONE, snapshot_id)
    assert job.step == "done"
    assert bucket.md5([job.result["objects"][0]["key"]]) == simulator.image_md5(snapshot_id)


async def test_a_transient_failure_after_progress_keeps_the_uploads_and_goes_on(
    make_ctx, simulator, s3_proxy, bucket
):
    ctx = make_ctx(retries=False)
    snapshot_id = await _transferring(ctx, simulator)
    s3_proxy.reset[4] = 1  # part 4 loses its connection once; the client does not retry

    following = await transfer_snapshot(ctx, ZONE, snapshot_id)

    # A fresh message (its retries count from zero), not a failure that aborts everything.
    assert following == Next("transfer_snapshot", RESUME_PAUSE)
    assert bucket.open_uploads() != []
    saved = await ctx.store.load_checkpoint(ZONE, snapshot_id)
    assert saved is not None and saved["offset"] >= 5 * MiB
    before = Counter(s3_proxy.uploads)

    assert await transfer_snapshot(ctx, ZONE, snapshot_id) is None

    job = await ctx.store.get(ZONE, snapshot_id)
    assert job.step == "done"
    assert bucket.md5([job.result["objects"][0]["key"]]) == simulator.image_md5(snapshot_id)
    again = Counter(s3_proxy.uploads) - before
    assert all(again[n] == 0 for n in range(1, saved["offset"] // (5 * MiB) + 1))
    assert bucket.open_uploads() == []


async def test_a_transient_failure_without_progress_is_retried_by_the_broker(
    make_ctx, simulator, s3_proxy, bucket
):
    ctx = make_ctx(retries=False)
    snapshot_id = await _transferring(ctx, simulator)
    s3_proxy.reset[1] = 1

    with pytest.raises(StoreError):
        await transfer_snapshot(ctx, ZONE, snapshot_id)

    assert (await ctx.store.get(ZONE, snapshot_id)).step == "transferring"
    assert await transfer_snapshot(ctx, ZONE, snapshot_id) is None
    assert (await ctx.store.get(ZONE, snapshot_id)).step == "done"
    assert bucket.open_uploads() == []


SPOILED = [json.dumps({"format": 1, "plan": "garbage"}), "{not json"]


def _spoil_checkpoint(ctx: Context, snapshot_id: str, raw: str) -> None:
    import redis

    key = f"{ctx.store.ns}:checkpoint:{ZONE}:{snapshot_id}"
    redis.Redis.from_url(REDIS_URL).set(key, raw)


def _stray_upload(ctx: Context, bucket, snapshot_id: str) -> str:
    key = ctx.archive.image_key("exoscale", ZONE, snapshot_id, 0, 1)
    bucket.client.create_multipart_upload(Bucket=bucket.bucket, Key=key)
    return key


@pytest.mark.parametrize("raw", SPOILED, ids=["not-a-checkpoint", "not-json"])
async def test_an_unreadable_checkpoint_is_dropped_and_the_transfer_goes_on(
    make_ctx, simulator, bucket, raw
):
    ctx = make_ctx()
    snapshot_id = await _transferring(ctx, simulator)
    _spoil_checkpoint(ctx, snapshot_id, raw)
    _stray_upload(ctx, bucket, snapshot_id)

    assert await transfer_snapshot(ctx, ZONE, snapshot_id) is None

    job = await ctx.store.get(ZONE, snapshot_id)
    assert job.step == "done"
    assert bucket.md5([job.result["objects"][0]["key"]]) == simulator.image_md5(snapshot_id)
    assert bucket.open_uploads() == []


@pytest.mark.parametrize("raw", SPOILED, ids=["not-a-checkpoint", "not-json"])
async def test_cancel_works_with_an_unreadable_checkpoint(make_ctx, simulator, bucket, raw):
    ctx = make_ctx()
    snapshot_id = await _transferring(ctx, simulator)
    _spoil_checkpoint(ctx, snapshot_id, raw)
    _stray_upload(ctx, bucket, snapshot_id)

    await finish_cancelled(ctx.store, ctx.archive, ZONE, snapshot_id, "test-cancel")

    assert (await ctx.store.get(ZONE, snapshot_id)).step == "cancelled"
    assert bucket.open_uploads() == []
    assert await ctx.store.load_checkpoint(ZONE, snapshot_id) is None


async def test_cancel_leaves_a_running_transfer_s_uploads_to_it(make_ctx, simulator, bucket):
    # A cancel that finds the lease held (the transfer is running elsewhere) aborts nothing:
    # the running transfer sees the request and cleans up itself.
    ctx = make_ctx()
    snapshot_id = await _transferring(ctx, simulator)
    key = _stray_upload(ctx, bucket, snapshot_id)
    assert await ctx.store.acquire_lease(ZONE, snapshot_id, "someone-else", 60)

    await finish_cancelled(ctx.store, ctx.archive, ZONE, snapshot_id, "test-cancel")

    assert (await ctx.store.get(ZONE, snapshot_id)).step == "transferring"
    assert bucket.open_uploads() == [key]


async def test_a_foreign_error_is_recorded_by_its_class_only(make_ctx, simulator, caplog):
    ctx = make_ctx()
    snapshot_id = await _transferring(ctx, simulator)
    secret_url = "https://sos-ch-gva-2.exo.io/bucket/image?X-Amz-Signature=deadbeefsecret"

    await fail(ctx, ZONE, snapshot_id, RuntimeError(f"bad response from {secret_url}"))

    job = await ctx.store.get(ZONE, snapshot_id)
    assert job.step == "failed"
    assert job.error == "internal error (RuntimeError)"
    assert "deadbeefsecret" not in caplog.text


async def test_a_cancel_that_comes_after_the_end_leaves_the_job_and_its_archive(
    make_ctx, simulator, bucket
):
    # The operator's cancel and the job's end cross: the cancel takes the lease the finished
    # transfer released, and must neither call the job cancelled nor touch its archive.
    ctx = make_ctx()
    snapshot_id = await _transferring(ctx, simulator)
    assert await transfer_snapshot(ctx, ZONE, snapshot_id) is None
    keys = bucket.keys()

    await finish_cancelled(ctx.store, ctx.archive, ZONE, snapshot_id, "test-cancel")

    assert (await ctx.store.get(ZONE, snapshot_id)).step == "done"
    assert bucket.keys() == keys
