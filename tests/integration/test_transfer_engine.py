"""The transfer engine end to end: simulator over HTTP → engine → moto over HTTP."""

import hashlib
import json
import logging
from dataclasses import replace

import pytest

from tests.fixtures.simulator import SIMULATOR_KEY, SIMULATOR_SECRET, ManualClock
from tests.fixtures.transfer import Exports
from worker.download import DownloadRetry
from worker.errors import ArchiveExists, ChecksumMismatch, ShortRead
from worker.exoscale import ExoscaleClient
from worker.retry import RetryPolicy
from worker.simulator import Faults, Simulator
from worker.transfer import Checkpoint, archive_export, multipart_etag
from worker.units import MiB

pytestmark = pytest.mark.integration

SIZE = 23 * MiB + 123  # five parts of 5 MiB, the last one short


async def test_happy_path_stores_the_exact_bytes(exported, archive_store, small_transfer, bucket):
    source = exported.add(SIZE)
    progress = []
    checkpoints = []

    async def on_checkpoint(checkpoint):
        checkpoints.append(checkpoint.to_dict())

    result = await archive_export(
        source,
        archive_store,
        small_transfer,
        on_checkpoint=on_checkpoint,
        on_progress=lambda done, total: progress.append((done, total)),
    )

    prefix = f"snaparchive/exoscale/ch-gva-2/{source.snapshot_id}/"
    assert result.manifest_key == prefix + "manifest.json"
    assert result.md5 == source.md5 and result.size == SIZE
    assert [(o.key, o.size, o.offset) for o in result.objects] == [(prefix + "image", SIZE, 0)]
    assert sorted(bucket.keys()) == [prefix + "image", prefix + "manifest.json"]
    assert bucket.open_uploads() == []
    assert bucket.read(prefix + "image") == exported.image(source.snapshot_id)
    assert hashlib.md5(bucket.read(prefix + "image")).hexdigest() == source.md5

    manifest = json.loads(bucket.read(result.manifest_key))
    assert manifest["md5"] == source.md5 and manifest["size"] == SIZE
    assert manifest["snapshot_id"] == source.snapshot_id
    assert manifest["snapshot_name"] == "db-nightly" and manifest["zone"] == "ch-gva-2"
    assert manifest["created_at"] == "2026-11-01T00:00:00Z" and manifest["tool_version"]
    assert manifest["segments"] == [
        {"key": prefix + "image", "offset": 0, "size": SIZE, "etag": result.objects[0].etag}
    ]
    head = bucket.client.head_object(Bucket=bucket.bucket, Key=prefix + "image")
    assert head["Metadata"]["source-md5"] == source.md5
    assert "http" not in json.dumps(head["Metadata"]) + json.dumps(manifest)

    part_md5s = [
        hashlib.md5(bucket.read(prefix + "image")[i : i + 5 * MiB]).hexdigest()
        for i in range(0, SIZE, 5 * MiB)
    ]
    assert result.objects[0].etag == multipart_etag(part_md5s)
    assert [c["offset"] for c in checkpoints] == sorted(c["offset"] for c in checkpoints)
    assert checkpoints[-1]["offset"] == SIZE
    assert progress[-1] == (SIZE, SIZE)


async def test_an_archive_is_never_overwritten(exported, archive_store, small_transfer):
    source = exported.add(6 * MiB)
    await archive_export(source, archive_store, small_transfer)
    with pytest.raises(ArchiveExists):
        await archive_export(source, archive_store, small_transfer)


FAST_RETRY = DownloadRetry(RetryPolicy(attempts=3, base=0.01))


@pytest.mark.parametrize(
    ("faults", "wrong_md5", "error", "message"),
    [
        (None, True, ChecksumMismatch, "md5 mismatch: expected 0{32}, got [0-9a-f]{32}"),
        (Faults(corrupt_at=17 * MiB + 5), False, ChecksumMismatch, "md5 mismatch"),
    ],
    ids=["wrong-published-md5", "corrupted-byte"],
)
async def test_a_bad_download_leaves_nothing_behind(
    exported, archive_store, small_transfer, bucket, faults, wrong_md5, error, message
):
    source = exported.add(SIZE, md5="0" * 32 if wrong_md5 else None)
    exported.sim.set_faults(faults, source.snapshot_id)
    with pytest.raises(error, match=message):
        await archive_export(source, archive_store, small_transfer, retry=FAST_RETRY)
    bucket.assert_empty()


async def test_a_transient_failure_keeps_the_uploads_for_the_next_try(
    exported, archive_store, small_transfer, bucket
):
    # A download that keeps breaking outlives the retries: the transfer fails, but what it
    # stored stays (nothing visible), and the next try goes on from the checkpoint.
    source = exported.add(SIZE)
    exported.sim.set_faults(
        Faults(truncate_at=12 * MiB + 1, download_fault_times=None), source.snapshot_id
    )
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(checkpoint.to_dict())

    with pytest.raises(ShortRead, match="at byte 12582913 of 24117371 after 3 attempts"):
        await archive_export(
            source, archive_store, small_transfer, on_checkpoint=on_checkpoint, retry=FAST_RETRY
        )
    assert bucket.keys() == []
    assert bucket.open_uploads() != []
    checkpoint = Checkpoint.from_dict(saved[-1])
    assert checkpoint.offset == 10 * MiB

    exported.sim.set_faults(None, source.snapshot_id)
    served = exported.sim.bytes_served(source.snapshot_id)
    result = await archive_export(source, archive_store, small_transfer, checkpoint=checkpoint)
    assert bucket.md5([result.objects[0].key]) == source.md5
    assert exported.sim.bytes_served(source.snapshot_id) - served == SIZE - 10 * MiB
    assert bucket.open_uploads() == []


@pytest.mark.parametrize(
    ("faults", "at"),
    [(Faults(reset_at=9 * MiB + 77), 9 * MiB + 77), (Faults(truncate_at=3 * MiB), 3 * MiB)],
    ids=["connection-reset", "connection-closed-early"],
)
async def test_a_dropped_connection_resumes_where_it_stopped(
    exported, archive_store, small_transfer, bucket, faults, at
):
    source = exported.add(SIZE)
    exported.sim.set_faults(faults, source.snapshot_id)
    result = await archive_export(source, archive_store, small_transfer, retry=FAST_RETRY)
    assert bucket.md5([result.objects[0].key]) == source.md5
    # Resumed by Range near the break, not from zero (a reset loses what was in flight).
    assert exported.sim.bytes_served(source.snapshot_id) < SIZE + at


async def test_a_segmented_archive_restores_by_concatenation(
    exported, archive_store, small_transfer, bucket
):
    source = exported.add(SIZE)
    settings = replace(small_transfer, segment_limit=12 * MiB)  # 10 MiB segments: 2 parts each
    result = await archive_export(source, archive_store, settings)

    prefix = f"snaparchive/exoscale/ch-gva-2/{source.snapshot_id}/"
    keys = [o.key for o in result.objects]
    assert keys == [f"{prefix}image.seg0000{i}" for i in range(3)]
    assert [(o.offset, o.size) for o in result.objects] == [
        (0, 10 * MiB),
        (10 * MiB, 10 * MiB),
        (20 * MiB, SIZE - 20 * MiB),
    ]
    assert b"".join(bucket.read(key) for key in keys) == exported.image(source.snapshot_id)
    manifest = json.loads(bucket.read(result.manifest_key))
    assert [s["key"] for s in manifest["segments"]] == keys
    assert bucket.open_uploads() == []


async def test_an_expired_url_is_refreshed_mid_stream(
    archive_store, small_transfer, bucket, caplog
):
    caplog.set_level(logging.DEBUG, logger="worker")
    clock = ManualClock()
    sim = Simulator(
        key=SIMULATOR_KEY, secret=SIMULATOR_SECRET, export_seconds=0, url_ttl=60, clock=clock
    )
    with sim.running():
        async with ExoscaleClient(sim.settings()) as client:
            exports = Exports(sim, client)
            source = exports.add(SIZE)
            # The URL expires at 8 MiB; the connection drops at 12 MiB; the resume gets a 403.
            sim.set_faults(Faults(reset_at=12 * MiB), source.snapshot_id)
            expired = False

            def on_progress(done, total):
                nonlocal expired
                if done >= 8 * MiB and not expired:
                    clock.advance(120)
                    expired = True

            result = await archive_export(
                source, archive_store, small_transfer, on_progress=on_progress, retry=FAST_RETRY
            )
            assert exports.refreshes == 1
            assert bucket.md5([result.objects[0].key]) == source.md5
    # The presigned URLs are credentials: no log line of ours carries their query.
    ours = [
        r
        for r in caplog.records
        if r.name.startswith("worker.") and not r.name.startswith("worker.simulator")
    ]
    assert any("retrying" in r.getMessage() for r in ours)
    assert all("?" not in r.getMessage() for r in ours)
