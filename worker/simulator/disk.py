"""Deterministic disk images, generated on the fly.

:class:`Image` is what the simulator serves: bytes of a known size, readable at any offset,
hashed off-thread. Two kinds:

- :class:`DiskImage` (``raw``): a plain file of exactly the size asked for, a sequence of 1 MiB
  blocks, each either zeros or one of a few random blocks from a :class:`BlockPool`, chosen by
  a keyed hash of the block index. Most blocks are zero, like the disk of a real instance.
  Tests that do arithmetic on the file's size use it.
- :class:`~worker.simulator.qcow2image.Qcow2Image` (``qcow2``): a valid qcow2 v3 image, what
  Exoscale really exports.

Reading any range costs a hash per block and no copying, so a server streams many GiB per
second from a few MiB of memory, and the same seed, image key and size always give the same
bytes. The first 512 bytes end with a digest of seed and key, so different images differ.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Iterator
from concurrent.futures import Future

#: Size of the blocks an image is made of.
BLOCK_SIZE = 1 << 20
#: Number of distinct random blocks per pool.
POOL_BLOCKS = 8
#: Share of blocks (in percent) that hold random data rather than zeros.
DATA_PERCENT = 25

_HEADER_SIZE = 512
#: The image formats the simulator serves.
IMAGE_FORMATS = ("raw", "qcow2")

# MD5 by what makes an image (:meth:`Image.identity`): tests build many simulators with the
# same images, and hashing a few GiB takes seconds.
_md5_cache: dict[tuple[object, ...], str] = {}
_md5_cache_lock = threading.Lock()


class BlockPool:
    """The preallocated blocks images are assembled from.

    Parameters:
      seed: Seeds the random blocks; the same seed gives the same blocks.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = random.Random(f"snaparchive-simulator-pool-{seed}")
        self.zero = memoryview(bytes(BLOCK_SIZE))
        self.data = [memoryview(rng.randbytes(BLOCK_SIZE)) for _ in range(POOL_BLOCKS)]


class Image:
    """A read-only image whose bytes are computed on demand; subclasses say which.

    Parameters:
      pool: The blocks to assemble the image from (its seed is part of the image's identity).
      key: Distinguishes images built from the same pool (the simulator uses the snapshot id).

    Subclasses set :attr:`size` (bytes of the file) and :attr:`virtual_size` (of the disk),
    and implement :meth:`chunks` and :meth:`identity`.
    """

    format = "raw"
    size: int
    virtual_size: int

    def __init__(self, pool: BlockPool, key: str) -> None:
        self.pool = pool
        self.key = key
        # Keyed by seed and key: both choose which blocks hold data.
        self._hash_key = hashlib.blake2b(f"{pool.seed}:{key}".encode(), digest_size=32).digest()
        self._md5_future: Future[str] | None = None
        self._md5_lock = threading.Lock()

    def _pick(self, index: int) -> int:
        """A keyed hash of ``index``: which content block ``index`` gets."""
        digest = hashlib.blake2b(
            index.to_bytes(8, "little"), key=self._hash_key, digest_size=8
        ).digest()
        return int.from_bytes(digest, "little")

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """Yield the bytes of ``[start, end)`` as read-only views of at most one block each.

        Parameters:
          start: First offset (default 0).
          end: Offset after the last byte (default and at most: the image size).
        """
        raise NotImplementedError

    def identity(self) -> tuple[object, ...]:
        """What makes the image's bytes: equal identities, equal bytes."""
        raise NotImplementedError

    def read(self, start: int, length: int) -> bytes:
        """Return ``length`` bytes from ``start`` (fewer at the end of the image)."""
        return b"".join(self.chunks(start, start + length))

    def compute_md5(self) -> str:
        """Hash the whole image and return the MD5 hex digest (cached per process)."""
        with _md5_cache_lock:
            cached = _md5_cache.get(self.identity())
        if cached is not None:
            return cached
        digest = hashlib.md5()
        for chunk in self.chunks():
            digest.update(chunk)
        result = digest.hexdigest()
        with _md5_cache_lock:
            _md5_cache[self.identity()] = result
        return result

    def md5_future(self) -> Future[str]:
        """Return a future of :meth:`compute_md5`, started in a daemon thread on first call.

        The thread keeps hashing off any event loop (hashlib releases the GIL on large
        buffers), and a pending future is what keeps an export operation pending.
        """
        with self._md5_lock:
            if self._md5_future is None:
                future: Future[str] = Future()
                self._md5_future = future
                with _md5_cache_lock:
                    cached = _md5_cache.get(self.identity())
                if cached is not None:
                    # Settled at once, so a hashed image never makes an operation wait.
                    future.set_result(cached)
                    return future

                def work() -> None:
                    try:
                        future.set_result(self.compute_md5())
                    except BaseException as exc:  # a future must always settle
                        future.set_exception(exc)

                threading.Thread(target=work, name=f"md5-{self.key}", daemon=True).start()
            return self._md5_future

    def open(self) -> io.BufferedReader:
        """Return a seekable binary file object over the image bytes."""
        return io.BufferedReader(DiskReader(self), buffer_size=BLOCK_SIZE)


class DiskImage(Image):
    """A raw disk image: a plain file of ``size`` bytes (see the module docstring).

    Parameters:
      pool: The blocks to assemble the image from (its seed is part of the image's identity).
      key: Distinguishes images built from the same pool (the simulator uses the snapshot id).
      size: Length of the file in bytes.
      virtual_size: The disk's size, in bytes (default: ``size``); a raw file is its disk, so
        this only says what the snapshot claims.
    """

    def __init__(self, pool: BlockPool, key: str, size: int, virtual_size: int | None = None):
        if size < 0:
            raise ValueError(f"image size must not be negative, got {size}")
        super().__init__(pool, key)
        self.size = size
        self.virtual_size = size if virtual_size is None else virtual_size
        # The first 512 bytes end with the layout key, so no two images share their first
        # block, even when all their other blocks happen to be zero.
        header = bytes(_HEADER_SIZE - len(self._hash_key)) + self._hash_key
        self._first = memoryview(header + bytes(BLOCK_SIZE - len(header)))

    def _block(self, index: int) -> memoryview:
        if index == 0:
            return self._first
        value = self._pick(index)
        if value % 100 >= DATA_PERCENT:
            return self.pool.zero
        return self.pool.data[(value >> 8) % POOL_BLOCKS]

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        end = self.size if end is None else min(end, self.size)
        position = max(0, start)
        while position < end:
            index, offset = divmod(position, BLOCK_SIZE)
            length = min(BLOCK_SIZE - offset, end - position)
            yield self._block(index)[offset : offset + length]
            position += length

    def identity(self) -> tuple[object, ...]:
        return ("raw", self.pool.seed, self.key, self.size)


class DiskReader(io.RawIOBase):
    """A raw, seekable, read-only file over an :class:`Image`."""

    def __init__(self, image: Image) -> None:
        self._image = image
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._image.size}
        if whence not in base:
            raise ValueError(f"invalid whence: {whence}")
        position = base[whence] + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        written = 0
        for chunk in self._image.chunks(self._position, self._position + len(target)):
            target[written : written + len(chunk)] = chunk
            written += len(chunk)
        self._position += written
        return written
