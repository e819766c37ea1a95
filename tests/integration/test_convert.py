"""Archived qcow2 → raw+zstd beside the archive, against ``qemu-img convert -O raw``: every
cluster size, deflate and zstd clusters, zero and unallocated clusters, a virtual size that
is not a whole number of clusters; a stopped or crashed conversion resumes; what cannot be
restored is refused before anything is uploaded; a verified image is reused."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging

import pytest
import zstandard

from tests.fixtures.qcow2 import qemu_image, qemu_img, store_as_archive, to_raw
from worker.convert import convert_archive, raw_image_key
from worker.convert import source as convert_source
from worker.convert import stream as convert_stream
from worker.convert.manifest import raw_manifest_key
from worker.errors import StoreIntegrityError
from worker.manifest import ArchiveId
from worker.qcow2.reader import Unsupported
from worker.settings import TransferSettings
from worker.simulator.disk import BlockPool
from worker.simulator.qcow2image import Qcow2Image
from worker.transfer import Checkpoint, TransferStopped
from worker.units import MiB

pytestmark = pytest.mark.integration

SNAPSHOT = "0b5e6a7c-1d2e-4f30-8a9b-0c1d2e3f4a5b"
SETTINGS = TransferSettings(part_size=5 * MiB, upload_concurrency=2, memory_limit=15 * MiB)


@pytest.fixture
def small_frames(monkeypatch):
    """Frames of 4 MiB: a test image spans several, and a resume starts inside it."""
    monkeypatch.setattr(convert_stream, "FRAME_SIZE", 4 * MiB)
    monkeypatch.setattr(convert_source, "FRAME_SIZE", 4 * MiB)


def unzstd(data: bytes) -> bytes:
    """Every frame of ``data``, decompressed (as a zstd CLI would)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


async def converted(archive_store, bucket, image_bytes: bytes, **kw):
    manifest = await store_as_archive(archive_store, bucket.client, image_bytes, SNAPSHOT)
    image = await convert_archive(archive_store, manifest, SETTINGS, bucket.client, **kw)
    return manifest, image


@pytest.mark.parametrize(
    ("name", "cluster", "compress", "virtual"),
    [
        ("c512-deflate", 512, "zlib", 6 * MiB + 3 * 512),
        ("c4k-plain", 4096, None, 24 * MiB + 4608),
        ("c64k-zstd", 65536, "zstd", 20 * MiB + 1536),
        ("c2m-plain", 2 * MiB, None, 13 * MiB + 512),
    ],
)
async def test_converts_exactly_as_qemu_img(
    archive_store, bucket, tmp_path, small_frames, name, cluster, compress, virtual
):
    path = qemu_image(tmp_path, name, virtual, cluster_size=cluster, compress=compress)
    expected = to_raw(path, tmp_path / f"{name}.raw")
    manifest, image = await converted(archive_store, bucket, path.read_bytes())
    stored = bucket.read(image.zstd_key)
    assert unzstd(stored) == expected
    assert (image.raw_size, image.raw_md5) == (len(expected), hashlib.md5(expected).hexdigest())
    assert (image.zstd_size, image.zstd_md5) == (len(stored), hashlib.md5(stored).hexdigest())
    assert image.source.md5 == manifest.md5
    assert image.zstd_key == raw_image_key(archive_store, manifest_id(manifest))
    assert bucket.open_uploads() == []


@pytest.mark.parametrize(("cluster", "compressed"), [(4096, True), (65536, True), (65536, False)])
async def test_converts_the_simulators_images_as_qemu_img(
    archive_store, bucket, tmp_path, small_frames, cluster, compressed
):
    generated = Qcow2Image(
        BlockPool(3), SNAPSHOT, 12 * MiB, 64 * MiB + 512, cluster_size=cluster,
        compressed=compressed,
    )
    data = generated.read(0, generated.size)
    path = tmp_path / "sim.qcow2"
    path.write_bytes(data)
    expected = to_raw(path, tmp_path / "sim.raw")
    _, image = await converted(archive_store, bucket, data)
    assert unzstd(bucket.read(image.zstd_key)) == expected
    assert image.raw_md5 == hashlib.md5(expected).hexdigest()


async def test_a_verified_raw_image_is_reused_and_a_stale_one_replaced(
    archive_store, bucket, tmp_path, small_frames
):
    path = qemu_image(tmp_path, "reuse", 8 * MiB, compress="zlib")
    manifest, first = await converted(archive_store, bucket, path.read_bytes())
    again = await convert_archive(archive_store, manifest, SETTINGS, bucket.client)
    assert again == first  # the same manifest: nothing converted
    # The object changed behind the manifest's back: it is converted again.
    bucket.client.put_object(Bucket=bucket.bucket, Key=first.zstd_key, Body=b"not zstd")
    third = await convert_archive(archive_store, manifest, SETTINGS, bucket.client)
    assert third.zstd_etag != hashlib.md5(b"not zstd").hexdigest()
    assert unzstd(bucket.read(third.zstd_key)) == to_raw(path, tmp_path / "reuse.raw")


async def test_a_stopped_then_crashed_conversion_resumes_from_its_checkpoints(
    archive_store, bucket, tmp_path, small_frames, caplog
):
    generated = Qcow2Image(BlockPool(5), SNAPSHOT, 40 * MiB, 48 * MiB, cluster_size=65536)
    data = generated.read(0, generated.size)
    path = tmp_path / "big.qcow2"
    path.write_bytes(data)
    expected = to_raw(path, tmp_path / "big.raw")
    manifest = await store_as_archive(archive_store, bucket.client, data, SNAPSHOT)
    saved: list[Checkpoint] = []
    stop = asyncio.Event()

    async def keep(checkpoint: Checkpoint) -> None:
        saved.append(checkpoint.copy())
        if len(saved) == 4:
            stop.set()

    with pytest.raises(TransferStopped):
        await convert_archive(
            archive_store, manifest, SETTINGS, bucket.client, on_checkpoint=keep, stop=stop
        )
    assert bucket.open_uploads() == [raw_image_key(archive_store, manifest_id(manifest))]
    # A crash: the last checkpoint saved is older than what the store holds.
    crashed = next(c for c in saved if c.offset and c.source_state["zst"] < c.offset)
    caplog.set_level(logging.INFO, logger="worker.convert")
    image = await convert_archive(
        archive_store, manifest, SETTINGS, bucket.client, checkpoint=crashed
    )
    resumed_at = crashed.source_state["raw"]
    assert resumed_at > 0  # from a frame start inside the image, not from its beginning
    assert f"resumes at raw byte {resumed_at}" in caplog.text
    assert unzstd(bucket.read(image.zstd_key)) == expected
    assert image.raw_md5 == hashlib.md5(expected).hexdigest()
    assert bucket.open_uploads() == []


async def test_a_checkpoint_whose_bytes_do_not_splice_starts_over(
    archive_store, bucket, tmp_path, small_frames, caplog
):
    generated = Qcow2Image(BlockPool(6), SNAPSHOT, 30 * MiB, 40 * MiB, cluster_size=65536)
    data = generated.read(0, generated.size)
    manifest = await store_as_archive(archive_store, bucket.client, data, SNAPSHOT)
    saved: list[Checkpoint] = []
    stop = asyncio.Event()

    async def keep(checkpoint: Checkpoint) -> None:
        saved.append(checkpoint.copy())
        stop.set()

    with pytest.raises(TransferStopped):
        await convert_archive(
            archive_store, manifest, SETTINGS, bucket.client, on_checkpoint=keep, stop=stop
        )
    forged = saved[-1].copy()
    forged.source_state = {**forged.source_state, "frame_md5": "0" * 32}
    caplog.set_level(logging.WARNING, logger="worker.convert")
    image = await convert_archive(
        archive_store, manifest, SETTINGS, bucket.client, checkpoint=forged
    )
    assert "converting from the start" in caplog.text
    path = tmp_path / "forged.qcow2"
    path.write_bytes(data)
    assert unzstd(bucket.read(image.zstd_key)) == to_raw(path, tmp_path / "forged.raw")


def manifest_id(manifest) -> ArchiveId:
    return ArchiveId(manifest.provider, manifest.zone, manifest.snapshot_id)


def _made(tmp_path, name: str, *args: str) -> bytes:
    path = tmp_path / f"{name}.qcow2"
    done = qemu_img(*args, str(path), "16M")
    assert done.returncode == 0, done.stderr
    return path.read_bytes()


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _refused_images(tmp_path) -> dict[str, bytes]:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    plain = _made(tmp_path, "plain", "create", "-f", "qcow2")
    return {
        "backing file": _made(
            tmp_path, "overlay", "create", "-f", "qcow2", "-F", "qcow2", "-b", str(base)
        ),
        # crypt_method 2 (LUKS): qemu-img cannot time LUKS key derivation in a sandbox
        # ("Unable to get accurate CPU usage"), so the header says it instead.
        "encrypted": _patched(plain, 32, (2).to_bytes(4, "big")),
        "external data file": _made(
            tmp_path, "external", "create", "-f", "qcow2", "-o", f"data_file={tmp_path}/data.raw"
        ),
        "unknown bit 17": _patched(plain, 72, (1 << 17).to_bytes(8, "big")),
        "version 4": _patched(plain, 4, (4).to_bytes(4, "big")),
        "marked corrupt": _patched(plain, 72, (2).to_bytes(8, "big")),
    }


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("backing file", "backing file"),
        ("encrypted", "encrypted"),
        ("external data file", "external data file"),
        ("unknown bit 17", "unknown bit 17"),
        ("version 4", "version 4"),
        ("marked corrupt", "marked corrupt"),
    ],
)
async def test_what_cannot_be_restored_is_refused_before_any_upload(
    archive_store, bucket, tmp_path, case, said
):
    data = _refused_images(tmp_path)[case]
    manifest = await store_as_archive(archive_store, bucket.client, data, SNAPSHOT, segments=1)
    before = sorted(bucket.keys())
    with pytest.raises(Unsupported, match=said):
        await convert_archive(archive_store, manifest, SETTINGS, bucket.client)
    assert sorted(bucket.keys()) == before
    assert bucket.open_uploads() == []
    assert raw_manifest_key(archive_store, manifest_id(manifest)) not in set(bucket.keys())


async def test_an_archived_object_replaced_since_is_not_read(archive_store, bucket, tmp_path):
    path = qemu_image(tmp_path, "swapped", 8 * MiB)
    manifest = await store_as_archive(archive_store, bucket.client, path.read_bytes(), SNAPSHOT)
    first = manifest.objects[0]
    original = bucket.read(first.key)
    changed = original[:100] + bytes([original[100] ^ 0xFF]) + original[101:]  # not the header
    bucket.client.put_object(Bucket=bucket.bucket, Key=first.key, Body=changed)
    with pytest.raises(StoreIntegrityError, match="changed since it was archived"):
        await convert_archive(archive_store, manifest, SETTINGS, bucket.client)
    assert bucket.open_uploads() == []
