"""Stores whose ETags are not MD5s (SSE-KMS, SSE-C, MinIO with encryption) are not corrupt.

A proxy in front of moto rewrites ETags as such stores give them (:class:`FaultyProxy`):
SSE-KMS parts whose ETag is opaque (with the ``aws:kms`` header), and completed objects
whose ETag is a plain 32-hex string without ``-N``. What can be checked still is (the image
MD5 against the export's, each object's size); nothing is reported as corruption.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest

from tests.fixtures.s3 import FaultyProxy
from tests.integration.pipeline_env import ZONE, cli, forget_queue, pipeline_env
from worker.archive import ArchiveStore
from worker.errors import StoreIntegrityError
from worker.settings import S3Settings
from worker.transfer import COMPLETED, Checkpoint, archive_export
from worker.units import MiB

pytestmark = pytest.mark.integration

SIZE = 23 * MiB + 5  # five parts of 5 MiB, the last one short
OPAQUE = re.compile(r"[0-9a-f]{32}")

#: name -> (parts answered as SSE-KMS: None for all, how objects' ETags are rewritten)
STORES = {
    "kms": (None, "plain"),  # AWS SSE-KMS / SSE-C: no ETag is an MD5
    "kms-some-parts": ({2, 4}, "plain"),  # a policy that applies to some uploads only
    "minio-encrypted-multipart": (None, None),  # opaque parts, an md5-N-shaped object ETag
    "plain-object-etag": (set(), "plain"),  # MD5 parts, the object's ETag a plain 32-hex string
}


@pytest.fixture(params=list(STORES))
def store_kind(request, s3_proxy: FaultyProxy) -> str:
    s3_proxy.kms_parts, s3_proxy.object_etags = STORES[request.param]
    return request.param


@pytest.fixture
async def proxied_store(s3_proxy, s3_bucket):
    async with ArchiveStore(S3Settings(endpoint=s3_proxy.url, bucket=s3_bucket)) as store:
        yield store


async def test_an_archive_on_a_store_without_md5_etags_commits(
    exported, proxied_store, small_transfer, bucket, store_kind
):
    source = exported.add(SIZE)
    result = await archive_export(source, proxied_store, small_transfer)
    assert bucket.md5([o.key for o in result.objects]) == source.md5
    (stored,) = result.objects
    if STORES[store_kind][1] == "plain":
        assert OPAQUE.fullmatch(stored.etag)  # the store's ETag, recorded as it gave it
    manifest = await proxied_store.find_archive("exoscale", source.zone, source.snapshot_id)
    assert manifest is not None and manifest.md5 == source.md5


async def test_a_store_corrupting_a_part_is_still_caught_where_etags_are_md5s(
    exported, proxied_store, small_transfer, s3_proxy
):
    # Plain object ETags switch off the object's check, not the parts': a part received
    # wrongly is still sent again.
    s3_proxy.object_etags = "plain"
    s3_proxy.corrupt[2] = 1
    source = exported.add(SIZE)
    await archive_export(source, proxied_store, small_transfer)
    assert s3_proxy.uploads.count(2) == 2
    s3_proxy.corrupt[3] = 99
    with pytest.raises(StoreIntegrityError, match="keeps getting part 3"):
        await archive_export(exported.add(SIZE), proxied_store, small_transfer)


async def test_an_object_assembled_wrongly_is_still_caught(
    exported, proxied_store, small_transfer, s3_proxy, bucket
):
    # An md5-N ETag is compared with the one of the parts sent: a store whose ETags are
    # MD5s and that assembled other parts is refused, and leaves no archive.
    s3_proxy.object_etags = "wrong"
    source = exported.add(SIZE)
    with pytest.raises(StoreIntegrityError, match=r"assembled .* wrongly"):
        await archive_export(source, proxied_store, small_transfer)
    bucket.assert_empty()


async def test_a_commit_resumed_on_plain_object_etags_keeps_its_objects(
    exported, proxied_store, small_transfer, s3_proxy, bucket
):
    # Objects of 10 MiB: the commit stops after the first; the resume finds it by its
    # (plain) ETag and size, and completes the others.
    s3_proxy.kms_parts, s3_proxy.object_etags = None, "plain"
    settings = small_transfer.__class__(**{**small_transfer.__dict__, "segment_limit": 10 * MiB})
    source = exported.add(SIZE)
    saved = []

    async def on_checkpoint(checkpoint):
        saved.append(json.loads(json.dumps(checkpoint.to_dict())))
        if any(u.state == COMPLETED for u in checkpoint.segments.values()):
            task.cancel()

    task = asyncio.create_task(
        archive_export(source, proxied_store, settings, on_checkpoint=on_checkpoint)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    checkpoint = Checkpoint.from_dict(saved[-1])
    uploads = len(s3_proxy.uploads)
    result = await archive_export(source, proxied_store, settings, checkpoint=checkpoint)
    assert len(s3_proxy.uploads) == uploads  # nothing sent again
    assert len(result.objects) == 3
    assert all(OPAQUE.fullmatch(o.etag) for o in result.objects)
    assert bucket.md5([o.key for o in result.objects]) == source.md5


@pytest.fixture
def env(simulator, s3_proxy, s3_bucket):
    values = pipeline_env(
        simulator, s3_proxy.url, s3_bucket, "redis://127.0.0.1:6379/4", "redis://127.0.0.1:6379/4"
    )
    yield values
    forget_queue(values)


def test_archive_restore_and_verify_on_a_kms_store(env, simulator, s3_proxy, tmp_path):
    s3_proxy.kms_parts, s3_proxy.object_etags = None, "plain"
    snapshot_id = str(uuid.uuid4())
    simulator.add_snapshot(snapshot_id, 12 * MiB, zone=ZONE)
    archived = cli(env, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert archived.returncode == 0, archived.stderr
    result = json.loads(archived.stdout)
    assert result["md5"] == simulator.image_md5(snapshot_id)
    assert all(OPAQUE.fullmatch(o["etag"].strip('"')) for o in result["objects"])
    verified = cli(env, "restore", snapshot_id, "--zone", ZONE, "--verify")
    assert verified.returncode == 0, verified.stderr
    output = tmp_path / "disk.img"
    restored = cli(env, "restore", snapshot_id, "--zone", ZONE, "--output", str(output))
    assert restored.returncode == 0, restored.stderr
    with simulator.open_image(snapshot_id) as image:
        assert output.read_bytes() == image.read()
    again = cli(env, "archive", snapshot_id, "--zone", ZONE, "--local", "--json")
    assert again.returncode == 0, again.stderr
    assert "already archived" in again.stdout
