"""Stopping and resuming a transfer from its checkpoint (issue 5, engine side)."""

import asyncio
import hashlib
import json
from collections import Counter

import pytest

from worker.archive import ArchiveStore
from worker.md5state import new_md5
from worker.parts import buffer_count
from worker.settings import S3Settings
from worker.transfer import Checkpoint, TransferStopped, archive_export
from worker.units import MiB

pytestmark = pytest.mark.integration

SIZE = 33 * MiB + 9  # seven parts of 5 MiB, the last one short
PART = 5 * MiB


@pytest.fixture
async def counted_store(s3_proxy, s3_bucket):
    """A store behind the proxy, which records every UploadPart it forwards."""
    async with ArchiveStore(S3Settings(endpoint=s3_proxy.url, bucket=s3_bucket)) as store:
        yield store


async def _served(sim, snapshot_id, timeout=10.0):
    """Bytes served for a snapshot once no download of it is still sending.

    A stopped transfer closes its connection, but the simulator counts what it hands to the
    socket until it notices: read the count before that and a later one includes the rest.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sim.downloads_sending(snapshot_id):
        assert loop.time() < deadline, "a download of the snapshot is still sending"
        await asyncio.sleep(0.02)
    return sim.bytes_served(snapshot_id)


async def _run_until(source, store, settings, offset):
    """Run a transfer and stop it once a checkpoint reaches ``offset``; return the last one."""
    stop = asyncio.Event()
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(json.loads(json.dumps(checkpoint.to_dict())))  # as a job store keeps it
        if checkpoint.offset >= offset:
            stop.set()

    with pytest.raises(TransferStopped) as stopped:
        await archive_export(source, store, settings, on_checkpoint=on_checkpoint, stop=stop)
    assert stopped.value.checkpoint.to_dict() == saved[-1]
    return Checkpoint.from_dict(saved[-1])


async def test_resume_continues_without_re_uploading_stored_parts(
    exported, counted_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    checkpoint = await _run_until(source, counted_store, small_transfer, 12 * MiB)
    assert checkpoint.offset % PART == 0 and 12 * MiB <= checkpoint.offset < SIZE
    image = exported.image(source.snapshot_id)
    assert (
        new_md5(checkpoint.md5_state).hexdigest()
        == hashlib.md5(image[: checkpoint.offset]).hexdigest()
    )
    stored_before = set(s3_proxy.uploads)
    served_before = await _served(exported.sim, source.snapshot_id)

    fresh = exported.source(source.snapshot_id, await exported.fresh_url(source.snapshot_id))
    result = await archive_export(fresh, counted_store, small_transfer, checkpoint=checkpoint)

    assert bucket.read(result.objects[0].key) == image
    assert result.md5 == source.md5
    assert all(count == 1 for count in Counter(s3_proxy.uploads).values())
    assert sorted(s3_proxy.uploads) == list(range(1, 8))
    assert stored_before >= set(range(1, checkpoint.offset // PART + 1))
    served_after = await _served(exported.sim, source.snapshot_id) - served_before
    assert served_after <= SIZE - checkpoint.offset
    assert bucket.open_uploads() == []


async def test_resume_without_md5_state_re_hashes_the_prefix(
    exported, counted_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    checkpoint = await _run_until(source, counted_store, small_transfer, 12 * MiB)
    checkpoint.md5_state = None  # as where libcrypto cannot export MD5 state
    served_before = await _served(exported.sim, source.snapshot_id)

    result = await archive_export(source, counted_store, small_transfer, checkpoint=checkpoint)

    assert bucket.md5([result.objects[0].key]) == source.md5
    assert all(count == 1 for count in Counter(s3_proxy.uploads).values())
    assert await _served(exported.sim, source.snapshot_id) - served_before == SIZE


async def _abort_uploads(store, checkpoint):
    for key, upload_id in checkpoint.open_uploads():
        await store.abort_upload(key, upload_id)


async def _claim_more_parts(store, checkpoint):
    checkpoint.offset += PART


@pytest.mark.parametrize("spoil", [_abort_uploads, _claim_more_parts])
async def test_a_checkpoint_the_store_contradicts_starts_over(
    exported, archive_store, small_transfer, bucket, spoil
):
    source = exported.add(SIZE)
    checkpoint = await _run_until(source, archive_store, small_transfer, 6 * MiB)
    await spoil(archive_store, checkpoint)

    result = await archive_export(source, archive_store, small_transfer, checkpoint=checkpoint)

    assert bucket.md5([result.objects[0].key]) == source.md5
    assert bucket.open_uploads() == []


async def test_a_cancelled_transfer_keeps_its_uploads_for_the_resume(
    exported, counted_store, small_transfer, s3_proxy, bucket
):
    source = exported.add(SIZE)
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(checkpoint.to_dict())
        if checkpoint.offset >= 10 * MiB:
            task.cancel()

    task = asyncio.create_task(
        archive_export(source, counted_store, small_transfer, on_checkpoint=on_checkpoint)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bucket.open_uploads() != []
    checkpoint = Checkpoint.from_dict(saved[-1])

    result = await archive_export(source, counted_store, small_transfer, checkpoint=checkpoint)

    assert bucket.md5([result.objects[0].key]) == source.md5
    uploads = Counter(s3_proxy.uploads)
    assert all(uploads[n] == 1 for n in range(1, checkpoint.offset // PART + 1))
    assert bucket.open_uploads() == []


async def test_a_stop_before_any_part_is_stored_leaves_nothing(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(TransferStopped) as stopped:
        await archive_export(source, archive_store, small_transfer, stop=stop)
    assert stopped.value.checkpoint is None
    bucket.assert_empty()


async def test_a_lost_commit_is_redone_without_downloading_again(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(checkpoint.to_dict())
        if checkpoint.offset == SIZE:
            task.cancel()  # the worker dies after the last part, before the commit

    task = asyncio.create_task(
        archive_export(source, archive_store, small_transfer, on_checkpoint=on_checkpoint)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bucket.keys() == []
    served = await _served(exported.sim, source.snapshot_id)

    checkpoint = Checkpoint.from_dict(saved[-1])
    result = await archive_export(source, archive_store, small_transfer, checkpoint=checkpoint)

    assert bucket.md5([result.objects[0].key]) == source.md5
    assert await _served(exported.sim, source.snapshot_id) == served


async def test_objects_of_an_unfinished_commit_are_replaced(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    key = archive_store.image_key("exoscale", "ch-gva-2", source.snapshot_id, 0, 1)
    bucket.client.put_object(Bucket=bucket.bucket, Key=key, Body=b"not the image")

    result = await archive_export(source, archive_store, small_transfer)

    assert result.objects[0].key == key
    assert bucket.md5([key]) == source.md5


async def test_a_slow_part_holds_the_download_within_the_buffers_of_the_checkpoint(
    exported, counted_store, small_transfer, s3_proxy, bucket
):
    # Part 2 answers SlowDown twice (botocore backs off, then sends it again): it holds up the
    # checkpoint while the parts after it could be stored. The download waits rather than
    # run ahead, so a crash never costs more than the buffers' worth of downloading again.
    source = exported.add(SIZE)
    s3_proxy.slow_down[2] = 2
    saved = [0]
    ahead = []

    async def on_checkpoint(checkpoint):
        saved[0] = checkpoint.offset

    def on_progress(done, total):
        ahead.append(done - saved[0])

    result = await archive_export(
        source,
        counted_store,
        small_transfer,
        on_checkpoint=on_checkpoint,
        on_progress=on_progress,
    )

    assert bucket.md5([result.objects[0].key]) == source.md5
    assert s3_proxy.slow_down[2] == 0  # part 2 was held up indeed
    assert max(ahead) <= buffer_count(PART, small_transfer) * PART
