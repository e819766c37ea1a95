"""The simulator's qcow2 images: valid for qemu-img, of the snapshot's virtual size,
deterministic, with data, zero, unallocated and (as an option) compressed clusters."""

from __future__ import annotations

import struct

import pytest

from tests.fixtures.qcow2 import assert_clean, image_info, to_raw
from worker.qcow2.format import OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_ZERO, parse_header
from worker.simulator.disk import BlockPool
from worker.simulator.qcow2image import ImageOptions, Qcow2Image
from worker.units import GiB, MiB

KiB = 1024


def make(cluster: int = 64 * KiB, compressed: bool = False, **kw) -> Qcow2Image:
    options = {"data_size": 4 * MiB, "virtual_size": 64 * MiB + 512, **kw}
    pool = BlockPool(0)
    return Qcow2Image(pool, "snap-a", cluster_size=cluster, compressed=compressed, **options)


def l2_entries(image: Qcow2Image) -> list[int]:
    """Every L2 entry of the image, read back from its bytes."""
    header = parse_header(image.read(0, 4096))
    l1_bytes = image.read(header.l1_table_offset, header.l1_size * 8)
    l1 = struct.unpack(f">{header.l1_size}Q", l1_bytes)
    entries: list[int] = []
    for entry in l1:
        if entry & OFFSET_MASK:
            table = image.read(entry & OFFSET_MASK, header.cluster_size)
            entries += struct.unpack(f">{header.cluster_size // 8}Q", table)
    return entries


@pytest.mark.parametrize(
    ("cluster", "compressed"),
    [(512, True), (4 * KiB, False), (64 * KiB, True), (2 * MiB, True)],
)
def test_qemu_img_finds_the_image_clean_with_its_virtual_size(tmp_path, cluster, compressed):
    image = make(cluster, compressed, data_size=3 * MiB if cluster < 2 * MiB else 12 * MiB)
    path = tmp_path / "disk.qcow2"
    path.write_bytes(image.read(0, image.size))
    assert_clean(path)
    info = image_info(path)
    assert (info["format"], info["virtual-size"], info["cluster-size"]) == (
        "qcow2",
        64 * MiB + 512,
        cluster,
    )
    raw = to_raw(path, tmp_path / "disk.raw")
    assert len(raw) == 64 * MiB + 512
    assert any(raw[-512:])  # the last (partial) cluster holds data


def test_holds_data_zero_unallocated_and_compressed_clusters():
    entries = l2_entries(make(compressed=True, data_size=8 * MiB))
    compressed = [e for e in entries if e & OFLAG_COMPRESSED]
    zero = [e for e in entries if e == OFLAG_ZERO]
    data = [e for e in entries if e & OFFSET_MASK and not e & OFLAG_COMPRESSED]
    holes = [e for e in entries if e == 0]
    assert compressed and zero and data and holes
    plain = l2_entries(make(compressed=False, data_size=8 * MiB))
    assert not [e for e in plain if e & OFLAG_COMPRESSED]


def test_same_inputs_same_bytes_and_chunks_cover_any_range():
    one, two = make(compressed=True), make(compressed=True)
    whole = one.read(0, one.size)
    assert whole == two.read(0, two.size)
    assert whole != make(compressed=True, data_size=5 * MiB).read(0, one.size)
    assert Qcow2Image(BlockPool(0), "snap-b", 4 * MiB, 64 * MiB).read(480, 32) != whole[480:512]
    for start, end in [(0, 1), (65530, 65542), (one.size - 7, one.size), (3, one.size + 5)]:
        assert b"".join(one.chunks(start, end)) == whole[start:end]


def test_an_empty_disk_is_all_unallocated_and_a_big_one_stays_small():
    empty = make(data_size=0)
    assert not [e for e in l2_entries(empty) if e]
    big = Qcow2Image(BlockPool(0), "snap-a", 8 * MiB, 10 * GiB)
    assert big.virtual_size == 10 * GiB and big.size < 16 * MiB


def test_image_options_choose_the_format():
    pool = BlockPool(0)
    assert ImageOptions().make(pool, "a", 5 * MiB, 10 * GiB).size == 5 * MiB
    qcow2 = ImageOptions("qcow2", 4 * KiB, True).make(pool, "a", 5 * MiB, 10 * GiB)
    assert qcow2.format == "qcow2" and qcow2.virtual_size == 10 * GiB
    with pytest.raises(ValueError, match="image format"):
        ImageOptions("vmdk")
    with pytest.raises(ValueError, match="cluster size"):
        make(cluster=3000)
    with pytest.raises(ValueError, match="multiple of 512"):
        make(virtual_size=1000)
