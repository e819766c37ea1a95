"""Generated disk images: deterministic, sparse, readable at any offset, hashed off-thread."""

from __future__ import annotations

import hashlib
import io

import pytest

from worker.simulator.disk import BLOCK_SIZE, BlockPool, DiskImage
from worker.units import MiB

SIZE = 5 * MiB + 333


def image(seed: int = 0, key: str = "snap-a", size: int = SIZE) -> DiskImage:
    return DiskImage(BlockPool(seed), key, size, virtual_size=10 << 30)


def test_same_seed_key_and_size_give_the_same_bytes():
    assert image().read(0, SIZE) == image().read(0, SIZE)


@pytest.mark.parametrize("other", [image(seed=1), image(key="snap-b")])
def test_seed_and_key_change_the_bytes(other):
    assert other.read(0, SIZE) != image().read(0, SIZE)


def test_mostly_zero_with_some_data_like_a_disk():
    data = image(size=64 * MiB).read(0, 64 * MiB)
    blocks = [data[i : i + BLOCK_SIZE] for i in range(BLOCK_SIZE, len(data), BLOCK_SIZE)]
    zero = sum(1 for block in blocks if not any(block))
    assert len(blocks) / 2 < zero < len(blocks)


def test_first_block_ends_with_a_digest_of_seed_and_key():
    assert image().read(480, 32) != image(key="snap-b").read(480, 32)
    assert not any(image().read(0, 480))


def test_chunks_cover_any_range_exactly():
    whole = image().read(0, SIZE)
    for start, end in [(0, 1), (BLOCK_SIZE - 3, BLOCK_SIZE + 3), (SIZE - 5, SIZE), (7, SIZE + 99)]:
        chunks = list(image().chunks(start, end))
        assert all(len(chunk) <= BLOCK_SIZE for chunk in chunks)
        assert b"".join(chunks) == whole[start:end]
    assert list(image().chunks(SIZE, SIZE + 10)) == []


def test_file_object_reads_and_seeks():
    whole = image().read(0, SIZE)
    with image().open() as handle:
        handle.seek(BLOCK_SIZE - 2)
        assert handle.read(4) == whole[BLOCK_SIZE - 2 : BLOCK_SIZE + 2]
        handle.seek(-10, io.SEEK_END)
        assert handle.read() == whole[-10:]
        assert handle.read(1) == b""
        handle.seek(0)
        assert hashlib.file_digest(handle, "md5").hexdigest() == hashlib.md5(whole).hexdigest()


def test_md5_in_a_thread_matches_the_bytes():
    expected = hashlib.md5(image().read(0, SIZE)).hexdigest()
    subject = image(seed=7)  # a new seed: not cached yet
    future = subject.md5_future()
    assert subject.md5_future() is future
    assert future.result(timeout=60) == subject.compute_md5()
    assert image().compute_md5() == expected


def test_empty_image():
    empty = image(size=0)
    assert empty.read(0, 10) == b""
    assert empty.compute_md5() == hashlib.md5(b"").hexdigest()


def test_negative_size_is_refused():
    with pytest.raises(ValueError, match="negative"):
        image(size=-1)


def test_a_50_tib_image_reads_at_its_end_without_holding_it():
    huge = image(size=50 << 40)
    tail = huge.read((50 << 40) - 10, 100)
    assert len(tail) == 10
    assert tail == huge.read((50 << 40) - 10, 10)
