"""A valid qcow2 v3 image, generated on the fly: what the simulator exports by default.

``qemu-img check`` finds it clean and ``qemu-img info`` shows ``virtual_size``. Its host
layout, cluster by cluster::

    0                header (v3, 16-bit refcounts, no extensions; a digest of seed and key
                     at byte 480 makes every image's first cluster its own)
    L1 table         one entry per L2 table's worth of guest clusters
    refcount table   and the refcount blocks after it: every cluster below the end is 1
    L2 tables        one per L1 entry that covers written data, in guest order
    data clusters    in guest order, one host cluster each (compressed ones too, padded)

What the disk holds: ``data_size`` bytes are written as runs of about 1 MiB of guest clusters
at places chosen by the seed (the first and the last run of the disk always among them, so
the image reaches its virtual end, where the last cluster holds data). Within a run each
cluster is, by one of a few patterns, random data (about half), compressible text, a zero
cluster (``QCOW_OFLAG_ZERO``, no host cluster) or unallocated; with ``compressed`` the text
clusters are stored deflated (as ``qemu-img convert -c`` stores them). Everything else reads
as zeros. Metadata is computed from a few arrays per run, so any byte range costs a hash per
cluster, and a cache of the last metadata clusters keeps sequential reads cheap.
"""

from __future__ import annotations

import array
import bisect
import functools
import random
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from worker.qcow2.format import (
    COMPRESSED_SECTOR,
    MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    OFLAG_ZERO,
    Header,
    pack_header,
)
from worker.simulator.disk import (
    BLOCK_SIZE,
    IMAGE_FORMATS,
    POOL_BLOCKS,
    BlockPool,
    DiskImage,
    Image,
)

#: Bytes of guest data one run of written clusters covers (whole clusters, at least one).
RUN_BYTES = 1 << 20
#: Cluster patterns of the runs (each run uses one, chosen by a hash of its place).
PATTERNS = 8
#: Compressible blocks the text clusters are made of.
TEXT_BLOCKS = 4
DATA, TEXT, COMPRESSED, ZERO, HOLE = range(5)
_WORDS = (
    b"the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet kernel block "
    b"device sector cluster snapshot archive restore backup volume mount ext4 inode journal"
).split()


class Qcow2Image(Image):
    """A generated qcow2 image (see the module docstring).

    Parameters:
      pool: The random blocks data clusters are made of (its seed is part of the identity).
      key: Distinguishes images built from the same pool (the simulator uses the snapshot id).
      data_size: About how many bytes of the guest disk are written (0: an empty disk).
      virtual_size: The guest disk's size in bytes, a positive multiple of 512.
      cluster_size: A power of two from 512 bytes to 2 MiB (default 64 KiB, qemu's).
      compressed: Store the compressible clusters deflated (default ``False``).

    Raises:
      ValueError: On a size or cluster size out of range.
    """

    format = "qcow2"

    def __init__(
        self,
        pool: BlockPool,
        key: str,
        data_size: int,
        virtual_size: int,
        *,
        cluster_size: int = 1 << 16,
        compressed: bool = False,
    ) -> None:
        bits = cluster_size.bit_length() - 1
        if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
            raise ValueError(f"cluster size must be a power of two, 512 B..2 MiB: {cluster_size}")
        if virtual_size <= 0 or virtual_size % 512:
            raise ValueError(f"virtual size must be a positive multiple of 512: {virtual_size}")
        if data_size < 0:
            raise ValueError(f"data size must not be negative: {data_size}")
        super().__init__(pool, key)
        self.data_size = data_size
        self.virtual_size = virtual_size
        self.cluster_size = size = cluster_size
        self.compressed = compressed
        self._bits = bits
        rng = random.Random(f"snaparchive-qcow2-{pool.seed}-{key}-{size}")
        self._text, self._deflated = self._text_blocks(rng)
        self._patterns = self._make_patterns(rng)
        self._place_runs(rng)
        self._lay_out()
        self.size = self._clusters * size
        self._header = self._header_cluster()

    def identity(self) -> tuple[object, ...]:
        return (
            "qcow2",
            self.pool.seed,
            self.key,
            self.data_size,
            self.virtual_size,
            self.cluster_size,
            self.compressed,
        )

    # -- what the disk holds -----------------------------------------------------------------

    def _text_blocks(self, rng: random.Random) -> tuple[list[memoryview], list[bytes | None]]:
        """Compressible cluster contents, and each one deflated as qemu does (window 2^12),
        or ``None`` where it would not come out shorter than a cluster."""
        text: list[memoryview] = []
        deflated: list[bytes | None] = []
        for _ in range(TEXT_BLOCKS):
            words = b" ".join(rng.choice(_WORDS) for _ in range(self.cluster_size // 4))
            block = words[: self.cluster_size].ljust(self.cluster_size, b".")
            text.append(memoryview(block))
            packer = zlib.compressobj(6, zlib.DEFLATED, -12)
            packed = packer.compress(block) + packer.flush()
            deflated.append(packed if len(packed) < self.cluster_size else None)
        return text, deflated

    def _make_patterns(self, rng: random.Random) -> list[list[int]]:
        run = max(1, RUN_BYTES // self.cluster_size)
        kinds = [DATA] * 10 + [TEXT] * 4 + [ZERO] * 3 + [HOLE] * 3
        return [[rng.choice(kinds) for _ in range(run)] for _ in range(PATTERNS)]

    def _place_runs(self, rng: random.Random) -> None:
        size = self.cluster_size
        self._run = run = max(1, RUN_BYTES // size)
        self._guest_clusters = guest = -(-self.virtual_size // size)
        slots = -(-guest // run)
        wanted = min(slots, -(-self.data_size // (run * size)))
        chosen: set[int] = set()
        if wanted:
            chosen = {0, slots - 1}
            rest = range(1, slots - 1)
            chosen.update(rng.sample(rest, max(0, min(len(rest), wanted - len(chosen)))))
        #: Slot of each run, in guest order; its pattern; host clusters before it.
        self._slots = sorted(chosen)
        self._pattern_of = [self._pick(slot) % PATTERNS for slot in self._slots]
        if self._slots:
            # The disk's last cluster holds data, cut short where the virtual size is not a
            # whole number of clusters: a reader must stop at the virtual end.
            last = list(self._patterns[self._pattern_of[-1]])
            last[self._run_length(self._slots[-1]) - 1] = DATA
            self._patterns.append(last)
            self._pattern_of[-1] = len(self._patterns) - 1
        self._host_before: list[int] = []
        self._host_kinds = [self._stored_kinds(p) for p in self._patterns]
        count = 0
        for i, slot in enumerate(self._slots):
            self._host_before.append(count)
            count += self._stored_in(i, slot)
        self._data_clusters = count

    def _stored_kinds(self, pattern: list[int]) -> list[int]:
        """Positions of a pattern whose cluster takes a host cluster, in order."""
        return [n for n, kind in enumerate(pattern) if kind in (DATA, TEXT)]

    def _stored_in(self, i: int, slot: int) -> int:
        length = self._run_length(slot)
        return bisect.bisect_left(self._host_kinds[self._pattern_of[i]], length)

    def _run_length(self, slot: int) -> int:
        return min(self._run, self._guest_clusters - slot * self._run)

    def _kind(self, i: int, position: int) -> tuple[int, int]:
        """(kind, content pick) of cluster ``position`` of run ``i``."""
        guest = self._slots[i] * self._run + position
        kind = self._patterns[self._pattern_of[i]][position]
        pick = self._pick(guest)
        if kind == TEXT and self.compressed and self._deflated[(pick >> 8) % TEXT_BLOCKS]:
            kind = COMPRESSED
        return kind, pick

    # -- host layout -------------------------------------------------------------------------

    def _lay_out(self) -> None:
        size = self.cluster_size
        entries = size // 8
        self._l1_size = -(-self._guest_clusters // entries)
        tables: set[int] = set()
        for slot in self._slots:
            first = slot * self._run
            last = first + self._run_length(slot) - 1
            tables.update(range(first // entries, last // entries + 1))
        #: L1 index of each L2 table, in guest order (and host order).
        self._tables = sorted(tables)
        self._table_at = {index: n for n, index in enumerate(self._tables)}
        l1_clusters = -(-self._l1_size * 8 // size)
        fixed = 1 + l1_clusters + len(self._tables) + self._data_clusters
        per_block = size * 8 // 16  # 16-bit refcounts
        blocks = table = 0
        while True:  # the refcount structures count themselves too
            total = fixed + table + blocks
            need_blocks = -(-total // per_block)
            need_table = -(-need_blocks * 8 // size)
            if (need_blocks, need_table) == (blocks, table):
                break
            blocks, table = need_blocks, need_table
        self._l1_at = 1
        self._refcount_table_at = 1 + l1_clusters
        self._refcount_blocks_at = self._refcount_table_at + table
        self._refcount_blocks = blocks
        self._tables_at = self._refcount_blocks_at + blocks
        self._data_at = self._tables_at + len(self._tables)
        self._metadata_end = self._data_at
        self._clusters = self._data_at + self._data_clusters
        self._refcount_table_clusters = table

    def header(self) -> Header:
        """The image's header."""
        size = self.cluster_size
        return Header(
            version=3,
            cluster_bits=self._bits,
            size=self.virtual_size,
            l1_size=self._l1_size,
            l1_table_offset=self._l1_at * size,
            refcount_table_offset=self._refcount_table_at * size,
            refcount_table_clusters=self._refcount_table_clusters,
        )

    def _header_cluster(self) -> memoryview:
        raw = bytearray(self.cluster_size)
        packed = pack_header(self.header())
        raw[: len(packed)] = packed  # the 8 zero bytes after it end the extensions
        raw[480:512] = self._hash_key
        return memoryview(bytes(raw))

    # -- reading -----------------------------------------------------------------------------

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        end = self.size if end is None else min(end, self.size)
        position = max(0, start)
        size = self.cluster_size
        while position < end:
            cluster, offset = divmod(position, size)
            for piece in self._cluster(cluster):
                if offset >= len(piece):
                    offset -= len(piece)
                    continue
                take = piece[offset : offset + end - position]
                offset = 0
                yield take
                position += len(take)
                if position >= end:
                    return

    def _cluster(self, cluster: int) -> list[memoryview]:
        """The bytes of host cluster ``cluster``, in pieces adding up to one cluster."""
        if cluster >= self._data_at:
            return self._data_cluster(cluster - self._data_at)
        return [self._metadata(cluster)]

    @functools.lru_cache(maxsize=16)  # noqa: B019 (a few per image; images live with the server)
    def _metadata(self, cluster: int) -> memoryview:
        size = self.cluster_size
        entries = size // 8
        if cluster == 0:
            return self._header
        table = array.array("Q", bytes(size))
        if cluster < self._refcount_table_at:
            first = (cluster - self._l1_at) * entries
            for n, index in enumerate(self._tables):
                if first <= index < first + entries:
                    table[index - first] = ((self._tables_at + n) * size) | OFLAG_COPIED
        elif cluster < self._refcount_blocks_at:
            first = (cluster - self._refcount_table_at) * entries
            for block in range(first, min(first + entries, self._refcount_blocks)):
                table[block - first] = (self._refcount_blocks_at + block) * size
        elif cluster < self._tables_at:
            per_block = size // 2
            below = (cluster - self._refcount_blocks_at) * per_block
            used = min(per_block, max(0, self._clusters - below))
            return memoryview(b"\x00\x01" * used + bytes(size - 2 * used))
        else:
            self._fill_l2(table, self._tables[cluster - self._tables_at])
        if sys.byteorder == "little":
            table.byteswap()  # stored big-endian
        return memoryview(table.tobytes())

    def _fill_l2(self, table: array.array[int], index: int) -> None:
        size = self.cluster_size
        entries = size // 8
        first, last = index * entries, (index + 1) * entries
        run = self._run
        i = max(0, bisect.bisect_right(self._slots, first // run) - 1)
        while i < len(self._slots) and self._slots[i] * run < last:
            start = self._slots[i] * run
            stored = self._host_kinds[self._pattern_of[i]]
            for position in range(self._run_length(self._slots[i])):
                guest = start + position
                if not first <= guest < last:
                    continue
                kind, pick = self._kind(i, position)
                host = (
                    self._data_at
                    + self._host_before[i]
                    + bisect.bisect_left(stored, position)
                ) * size
                if kind in (DATA, TEXT):
                    table[guest - first] = host | OFLAG_COPIED
                elif kind == COMPRESSED:
                    packed = self._deflated[(pick >> 8) % TEXT_BLOCKS]
                    assert packed is not None
                    sectors = -(-len(packed) // COMPRESSED_SECTOR) - 1
                    shift = 62 - (self._bits - 8)
                    table[guest - first] = OFLAG_COMPRESSED | (sectors << shift) | host
                elif kind == ZERO:
                    table[guest - first] = OFLAG_ZERO
            i += 1

    def _data_cluster(self, n: int) -> list[memoryview]:
        i = bisect.bisect_right(self._host_before, n) - 1
        position = self._host_kinds[self._pattern_of[i]][n - self._host_before[i]]
        kind, pick = self._kind(i, position)
        size = self.cluster_size
        if kind == TEXT:
            return [self._text[(pick >> 8) % TEXT_BLOCKS]]
        if kind == COMPRESSED:
            packed = self._deflated[(pick >> 8) % TEXT_BLOCKS]
            assert packed is not None
            return [memoryview(packed), self.pool.zero[: size - len(packed)]]
        guest = self._slots[i] * self._run + position
        block = pick % POOL_BLOCKS
        if size <= BLOCK_SIZE:
            offset = guest * size % BLOCK_SIZE
            return [self.pool.data[block][offset : offset + size]]
        count = size // BLOCK_SIZE
        return [self.pool.data[(block + k) % POOL_BLOCKS] for k in range(count)]



@dataclass(frozen=True)
class ImageOptions:
    """How the simulator makes the images it exports.

    Parameters:
      format: ``qcow2`` (a valid qcow2 image of the snapshot's size, holding about the bytes
        asked for) or ``raw`` (a plain file of exactly the bytes asked for: the tests that do
        arithmetic on file sizes use it); default ``raw``.
      cluster_size: qcow2 cluster size (default 64 KiB).
      compressed: Store qcow2 text clusters deflated (default ``False``).
    """

    format: str = "raw"
    cluster_size: int = 1 << 16
    compressed: bool = False

    def __post_init__(self) -> None:
        if self.format not in IMAGE_FORMATS:
            raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}")

    def make(self, pool: BlockPool, key: str, size: int, virtual_size: int) -> Image:
        """The image of snapshot ``key``: ``size`` bytes of file (raw) or of written data
        (qcow2) on a disk of ``virtual_size`` bytes."""
        if self.format == "raw":
            return DiskImage(pool, key, size, virtual_size=virtual_size)
        return Qcow2Image(
            pool,
            key,
            size,
            virtual_size,
            cluster_size=self.cluster_size,
            compressed=self.compressed,
        )
