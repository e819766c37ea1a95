"""The qcow2 reader on its own: extents in guest order to the virtual end, a dirty image read,
broken tables and clusters refused with one line (conversions are checked against qemu-img in
tests/integration/test_convert.py)."""

from __future__ import annotations

import itertools
import struct

import pytest

from worker.qcow2.format import INCOMPAT_DIRTY, OFLAG_COPIED, parse_header
from worker.qcow2.reader import COMPRESSED, DATA, ZERO, CorruptImage, Unsupported, open_image
from worker.simulator.disk import BlockPool
from worker.simulator.qcow2image import Qcow2Image
from worker.units import MiB


class Bytes:
    """A :class:`~worker.qcow2.reader.RangeSource` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def image(**kw) -> bytes:
    made = Qcow2Image(BlockPool(2), "reader", 3 * MiB, 16 * MiB + 512, compressed=True, **kw)
    return made.read(0, made.size)


def test_extents_cover_the_disk_in_order_to_its_virtual_end():
    reader = open_image(Bytes(image()))
    extents = list(reader.extents())
    assert extents[0].guest == 0
    for before, after in itertools.pairwise(extents):
        assert before.guest + before.length == after.guest
    assert extents[-1].guest + extents[-1].length == 16 * MiB + 512
    assert {e.kind for e in extents} == {ZERO, DATA, COMPRESSED}
    middle = list(reader.extents(8 * MiB + 100))
    assert middle[0].guest <= 8 * MiB + 100 < middle[0].guest + middle[0].length


def test_a_dirty_image_is_read():
    data = bytearray(image())
    struct.pack_into(">Q", data, 72, INCOMPAT_DIRTY)
    assert list(open_image(Bytes(bytes(data))).extents())


def test_an_l2_table_past_the_end_of_the_file_is_corrupt():
    data = bytearray(image())
    header = parse_header(bytes(data[:4096]))
    struct.pack_into(">Q", data, header.l1_table_offset, (len(data) + 65536) | OFLAG_COPIED)
    with pytest.raises(CorruptImage, match="past the end of the file"):
        list(open_image(Bytes(bytes(data))).extents())


def test_a_compressed_cluster_that_does_not_inflate_is_corrupt():
    reader = open_image(Bytes(image()))
    with pytest.raises(CorruptImage, match="inflate"):
        reader.inflate(b"\xff" * 300)


def test_not_qcow2_and_an_empty_disk_are_refused():
    with pytest.raises(Unsupported, match="not a qcow2 image"):
        open_image(Bytes(b"\x00" * 4096))
    data = bytearray(image())
    struct.pack_into(">Q", data, 24, 0)
    with pytest.raises(Unsupported, match="virtual size is 0"):
        open_image(Bytes(bytes(data)))
