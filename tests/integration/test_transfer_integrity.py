"""Integrity on every path of a transfer: resume with a re-hashed prefix, a commit cut short,
an object or a manifest that appears during the commit (issue 9)."""

import asyncio
import json
from collections import Counter
from dataclasses import replace

import pytest

from worker.archive import ArchiveStore
from worker.errors import ArchiveExists, ObjectExists
from worker.md5state import HashlibMd5
from worker.settings import S3Settings
from worker.simulator import Faults
from worker.transfer import (
    COMPLETED,
    COMPLETING,
    Checkpoint,
    TransferStopped,
    archive_export,
    discard_transfer,
)
from worker.units import MiB

pytestmark = pytest.mark.integration

SIZE = 33 * MiB + 9  # seven parts of 5 MiB, the last one short
PART = 5 * MiB


@pytest.fixture
async def counted_store(s3_proxy, s3_bucket):
    """A store behind the proxy, which records every UploadPart it forwards."""
    async with ArchiveStore(S3Settings(endpoint=s3_proxy.url, bucket=s3_bucket)) as store:
        yield store


async def _run_until(source, store, settings, offset):
    """Run a transfer and stop it once a checkpoint reaches ``offset``; return the last one."""
    stop = asyncio.Event()
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(json.loads(json.dumps(checkpoint.to_dict())))  # as a job store keeps it
        if checkpoint.offset >= offset:
            stop.set()

    with pytest.raises(TransferStopped):
        await archive_export(source, store, settings, on_checkpoint=on_checkpoint, stop=stop)
    return Checkpoint.from_dict(saved[-1])


@pytest.fixture(params=["state-lost", "hashlib-fallback"])
def no_md5_state(request, monkeypatch):
    """A resume that cannot continue the MD5 chain: the checkpoint's state is null, or the
    host has no resumable MD5 at all (FIPS, no libcrypto)."""
    if request.param == "hashlib-fallback":
        monkeypatch.setattr("worker.md5state._LIB", None)
    return request.param


async def test_a_re_hashed_prefix_sends_again_a_part_first_read_wrongly(
    exported, counted_store, small_transfer, s3_proxy, bucket, no_md5_state
):
    # The first read flips a byte of part 1, which is stored as read. The chain that would
    # have caught it is lost; the resume reads the prefix again, clean. The stored part must
    # not be trusted because the new chain is right: its ETag differs from the bytes hashed
    # now, so it is sent again.
    source = exported.add(SIZE)
    exported.sim.set_faults(Faults(corrupt_at=2 * MiB + 3), source.snapshot_id)
    checkpoint = await _run_until(source, counted_store, small_transfer, 12 * MiB)
    if no_md5_state == "state-lost":
        checkpoint.md5_state = None
    assert checkpoint.md5_state is None
    first_run = Counter(s3_proxy.uploads)

    result = await archive_export(source, counted_store, small_transfer, checkpoint=checkpoint)

    assert bucket.md5([result.objects[0].key]) == source.md5
    assert bucket.read(result.objects[0].key) == exported.image(source.snapshot_id)
    again = Counter(s3_proxy.uploads) - first_run
    assert again[1] == 1  # the damaged part, sent again
    # The clean stored parts of the prefix were checked and kept, not sent again.
    assert all(again[n] == 0 for n in range(2, checkpoint.offset // PART + 1))


async def test_a_re_hashed_prefix_keeps_parts_that_match(
    exported, counted_store, small_transfer, s3_proxy, bucket, no_md5_state
):
    source = exported.add(SIZE)
    checkpoint = await _run_until(source, counted_store, small_transfer, 12 * MiB)
    checkpoint.md5_state = None
    first_run = Counter(s3_proxy.uploads)

    result = await archive_export(source, counted_store, small_transfer, checkpoint=checkpoint)

    assert bucket.md5([result.objects[0].key]) == source.md5
    again = Counter(s3_proxy.uploads) - first_run
    assert all(again[n] == 0 for n in range(1, checkpoint.offset // PART + 1))


SEGMENTED = 12 * MiB  # 10 MiB segments of two parts: four objects


async def _interrupted_commit(source, store, settings, when):
    """Run a transfer and cancel it (a worker dying) at the first checkpoint ``when``
    accepts; return the checkpoints it reported."""
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(json.loads(json.dumps(checkpoint.to_dict())))
        if when(checkpoint):
            task.cancel()

    task = asyncio.create_task(archive_export(source, store, settings, on_checkpoint=on_checkpoint))
    with pytest.raises(asyncio.CancelledError):
        await task
    return saved


def _states(checkpoint):
    return [checkpoint.segments[i].state for i in sorted(checkpoint.segments)]


async def test_a_commit_cut_short_keeps_the_objects_it_completed(
    exported, counted_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    settings = replace(small_transfer, segment_limit=SEGMENTED)
    saved = await _interrupted_commit(
        source, counted_store, settings, lambda c: _states(c)[:2] == [COMPLETED, COMPLETED]
    )
    checkpoint = Checkpoint.from_dict(saved[-1])
    completed = {
        k: bucket.client.head_object(Bucket=bucket.bucket, Key=k)["ETag"]
        for k in checkpoint.completed_keys()
    }
    assert len(completed) == 2
    served = exported.sim.bytes_served(source.snapshot_id)
    uploads = len(s3_proxy.uploads)

    result = await archive_export(source, counted_store, settings, checkpoint=checkpoint)

    assert bucket.md5([o.key for o in result.objects]) == source.md5
    assert exported.sim.bytes_served(source.snapshot_id) == served  # nothing read again
    assert len(s3_proxy.uploads) == uploads  # nothing sent again
    for key, etag in completed.items():  # the completed objects are the ones kept
        assert bucket.client.head_object(Bucket=bucket.bucket, Key=key)["ETag"] == etag
    assert bucket.open_uploads() == []


async def test_a_completion_that_landed_unrecorded_is_adopted(
    exported, archive_store, small_transfer, bucket
):
    # The worker dies after CompleteMultipartUpload succeeded but before it could record
    # it: the checkpoint says "completing", the upload is gone, the object is there.
    source = exported.add(SIZE)
    settings = replace(small_transfer, segment_limit=SEGMENTED)
    saved = await _interrupted_commit(
        source, archive_store, settings, lambda c: _states(c)[0] == COMPLETED
    )
    checkpoint = Checkpoint.from_dict(saved[-2])
    assert _states(checkpoint)[0] == COMPLETING
    served = exported.sim.bytes_served(source.snapshot_id)

    result = await archive_export(source, archive_store, settings, checkpoint=checkpoint)

    assert bucket.md5([o.key for o in result.objects]) == source.md5
    assert exported.sim.bytes_served(source.snapshot_id) == served


async def test_a_completed_object_changed_since_starts_over(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    settings = replace(small_transfer, segment_limit=SEGMENTED)
    saved = await _interrupted_commit(
        source, archive_store, settings, lambda c: _states(c)[0] == COMPLETED
    )
    checkpoint = Checkpoint.from_dict(saved[-1])
    key = checkpoint.segments[0].key
    bucket.client.put_object(Bucket=bucket.bucket, Key=key, Body=b"x" * (10 * MiB))

    result = await archive_export(source, archive_store, settings, checkpoint=checkpoint)

    assert bucket.md5([o.key for o in result.objects]) == source.md5
    assert bucket.open_uploads() == []


async def test_an_object_appearing_at_commit_is_neither_replaced_nor_deleted(
    exported, archive_store, small_transfer, bucket
):
    # Another run (one without a lease) completed the image meanwhile: the commit refuses to
    # replace it, deletes nothing, and keeps its own uploads for the next try to sort out.
    source = exported.add(SIZE)
    key = archive_store.image_key("exoscale", "ch-gva-2", source.snapshot_id, 0, 1)

    async def on_checkpoint(checkpoint):
        if checkpoint.offset == SIZE:
            bucket.client.put_object(Bucket=bucket.bucket, Key=key, Body=b"theirs")

    with pytest.raises(ObjectExists):
        await archive_export(source, archive_store, small_transfer, on_checkpoint=on_checkpoint)
    assert bucket.read(key) == b"theirs"
    assert bucket.open_uploads() == [key]


async def test_an_archive_committed_meanwhile_is_reported_by_its_manifest_key(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    key = archive_store.image_key("exoscale", "ch-gva-2", source.snapshot_id, 0, 1)
    manifest_key = archive_store.manifest_key("exoscale", "ch-gva-2", source.snapshot_id)

    async def on_checkpoint(checkpoint):
        if checkpoint.offset == SIZE:
            bucket.client.put_object(Bucket=bucket.bucket, Key=key, Body=b"theirs")
            bucket.client.put_object(Bucket=bucket.bucket, Key=manifest_key, Body=b"{}")

    with pytest.raises(ArchiveExists) as exists:
        await archive_export(source, archive_store, small_transfer, on_checkpoint=on_checkpoint)
    assert exists.value.manifest_key == manifest_key  # never the image key
    assert sorted(bucket.keys()) == sorted([key, manifest_key])
    assert bucket.open_uploads() == []


async def test_discarding_a_transfer_never_deletes_an_archive(
    exported, archive_store, small_transfer, bucket
):
    # A run whose commit completed objects, then another run committed the archive (without
    # a lease between them): dropping the first run's leftovers must not touch the archive.
    source = exported.add(SIZE)
    settings = replace(small_transfer, segment_limit=SEGMENTED)
    saved = await _interrupted_commit(
        source, archive_store, settings, lambda c: _states(c)[0] == COMPLETED
    )
    stale = Checkpoint.from_dict(saved[-1])
    await discard_transfer(archive_store, source.archive, None)  # as gc would, for the test
    result = await archive_export(source, archive_store, settings)
    keys = sorted(bucket.keys())

    await discard_transfer(archive_store, source.archive, stale)

    assert sorted(bucket.keys()) == keys
    assert result.manifest_key in keys
    assert bucket.md5([o.key for o in result.objects]) == source.md5


async def test_leftovers_are_cleared_but_nothing_else_under_the_prefix(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    prefix = archive_store.archive_prefix("exoscale", "ch-gva-2", source.snapshot_id)
    bucket.client.put_object(Bucket=bucket.bucket, Key=prefix + "image.seg00003", Body=b"old")
    bucket.client.put_object(Bucket=bucket.bucket, Key=prefix + "notes.txt", Body=b"mine")

    result = await archive_export(source, archive_store, small_transfer)

    assert sorted(bucket.keys()) == sorted(
        [prefix + "image", prefix + "manifest.json", prefix + "notes.txt"]
    )
    assert bucket.md5([result.objects[0].key]) == source.md5


def test_the_hashlib_fallback_exports_no_state():
    assert HashlibMd5().export() is None
