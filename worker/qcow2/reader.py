"""A qcow2 reader over ranged reads: the guest disk as extents in guest order.

:func:`open_image` reads the header, refuses what cannot be restored as a plain raw disk
(:class:`Unsupported`: a backing file, encryption, an external data file, extended L2
entries, an unknown version, compression type or incompatible feature bit, a corrupt mark)
and reads the L1 table. :meth:`Qcow2Reader.extents` then walks the L2 tables in guest
order and yields :class:`Extent` runs: zeros (unallocated clusters and
``QCOW_OFLAG_ZERO`` ones), stored data (host-contiguous clusters merged) and compressed
clusters (deflate or zstd, :meth:`Qcow2Reader.inflate`). The last extent stops at the
virtual size, which need not be a whole number of clusters. Metadata reads go through a
small block cache (:class:`BlockCache`); a dirty image (lazy refcounts) reads fine, since
only L1/L2 tables are used. Internal snapshots are ignored: the active layer is read.

Why a reader of our own. The issue asks for a maintained reader on a file-like object first;
both candidates were tried (late 2026) against ``qemu-img convert -O raw``:

- ``libqcow-python`` (C, LGPL-3.0, versioned as a dated alpha): its bytes differed from
  qemu-img's on an image ``qemu-img convert -c`` wrote with 4 KiB clusters, and it refuses
  zstd-compressed images (incompatible bit 3).
- ``dissect.hypervisor`` (pure Python) read every test image right, but it is
  AGPL-3.0-or-later (a licence the project cannot take on as a side effect of one feature:
  that is the owners' decision), reads zstd clusters only through ``backports.zstd``, keeps
  128 whole L2 tables cached (256 MiB with 2 MiB clusters, outside
  ``SNAPARCHIVE_MEMORY_LIMIT``), does not refuse unknown incompatible feature bits or a
  corrupt mark, and reads each compressed cluster with its own seek and read (one ranged GET
  each over object storage unless wrapped).

What is needed here is small (no writing, no snapshots, no backing chains, no subclusters):
about 200 lines, tested cluster size by cluster size against ``qemu-img``.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import zstandard

from worker.errors import TransferError
from worker.qcow2.format import (
    COMPRESSED_SECTOR,
    COMPRESSION_DEFLATE,
    COMPRESSION_ZSTD,
    EXT_CRYPTO,
    INCOMPAT_COMPRESSION,
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    INCOMPAT_NAMES,
    L1_RESERVED,
    L2_RESERVED,
    OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_ZERO,
    FormatError,
    Header,
    extensions,
    parse_header,
)

ZERO, DATA, COMPRESSED = "zero", "data", "compressed"
#: Longest extent of stored data: one ranged read.
MAX_EXTENT = 8 << 20
#: Incompatible feature bits a raw conversion can live with.
_READABLE = INCOMPAT_DIRTY | INCOMPAT_COMPRESSION


class Unsupported(TransferError):
    """The image cannot be restored as a raw disk this way (permanent; names why)."""


class CorruptImage(TransferError):
    """The image's tables point outside the file or hold reserved bits (permanent)."""


class RangeSource(Protocol):
    """Random access to the qcow2 file: its ``size`` and :meth:`read` (called from threads)."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        ...


class BlockCache:
    """Reads of a :class:`RangeSource` through ``blocks`` cached aligned blocks (LRU).

    Parameters:
      source: What is read.
      block: Bytes per block (default 1 MiB): one ranged read fetches a whole block.
      blocks: Blocks kept (default 8).
    """

    def __init__(self, source: RangeSource, block: int = 1 << 20, blocks: int = 8) -> None:
        self.source = source
        self.block = block
        self.blocks = blocks
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        pieces: list[bytes] = []
        end = min(offset + length, self.source.size)
        while offset < end:
            index, within = divmod(offset, self.block)
            data = self._get(index)
            piece = data[within : within + end - offset]
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    def _get(self, index: int) -> bytes:
        with self._lock:
            data = self._cache.get(index)
            if data is not None:
                self._cache.move_to_end(index)
                return data
        data = self.source.read(index * self.block, self.block)
        with self._lock:
            self._cache[index] = data
            while len(self._cache) > self.blocks:
                self._cache.popitem(last=False)
        return data


@dataclass(frozen=True)
class Extent:
    """A run of the guest disk: ``length`` bytes from guest offset ``guest``.

    ``kind`` is :data:`ZERO` (nothing to read), :data:`DATA` (``length`` bytes stored from
    host offset ``host``) or :data:`COMPRESSED` (one cluster, or its start at the virtual
    end, deflated in ``host_length`` bytes at ``host``).
    """

    guest: int
    length: int
    kind: str
    host: int = 0
    host_length: int = 0


class Qcow2Reader:
    """The guest disk of a qcow2 image (see the module docstring); make it with
    :func:`open_image`."""

    def __init__(self, source: RangeSource, header: Header, l1: tuple[int, ...]) -> None:
        self.source = source
        self.header = header
        self.l1 = l1
        self.virtual_size = header.size
        self.cluster_size = header.cluster_size
        block = max(1 << 20, self.cluster_size)
        self.metadata = BlockCache(source, block, blocks=max(2, (8 << 20) // block))

    def extents(self, start: int = 0) -> Iterator[Extent]:
        """Yield the disk from the extent holding guest offset ``start`` to its end, in order
        (a zero or data extent may begin before ``start``; the caller skips to it).

        Raises:
          CorruptImage: A table points outside the file or holds reserved bits.
        """
        header, size = self.header, self.cluster_size
        per_table = header.l2_entries * size
        pending: Extent | None = None
        for index in range(start // per_table, len(self.l1)):
            base = index * per_table
            if base >= self.virtual_size:
                break
            for extent in self._table(index, base, per_table):
                if extent.guest + extent.length <= start:
                    continue
                if pending is not None:
                    merged = _merge(pending, extent)
                    if merged is not None:
                        pending = merged
                        continue
                    yield pending
                pending = extent
        if pending is not None:
            yield pending

    def _table(self, index: int, base: int, per_table: int) -> Iterator[Extent]:
        entry = self.l1[index]
        table_at = entry & OFFSET_MASK
        span = min(per_table, self.virtual_size - base)
        if entry & L1_RESERVED or table_at % self.cluster_size:
            raise CorruptImage(f"qcow2: L1 entry {index} is malformed (0x{entry:016x})")
        if not table_at:
            yield Extent(base, span, ZERO)
            return
        self._inside(table_at, self.cluster_size, f"the L2 table of L1 entry {index}")
        raw = self.metadata.read(table_at, self.cluster_size)
        entries = struct.unpack(f">{self.header.l2_entries}Q", raw)
        size = self.cluster_size
        for n in range(-(-span // size)):
            guest = base + n * size
            yield self._cluster(entries[n], guest, min(size, self.virtual_size - guest))

    def _cluster(self, entry: int, guest: int, length: int) -> Extent:
        header = self.header
        if entry & OFLAG_COMPRESSED:
            bits = header.compressed_offset_bits
            host = entry & ((1 << bits) - 1)
            sectors = ((entry >> bits) & ((1 << (header.cluster_bits - 8)) - 1)) + 1
            stored = sectors * COMPRESSED_SECTOR - (host % COMPRESSED_SECTOR)
            stored = min(stored, self.source.size - host)
            self._inside(host, 1, f"the compressed cluster at guest offset {guest}")
            return Extent(guest, length, COMPRESSED, host, stored)
        if header.version == 3 and entry & OFLAG_ZERO:
            return Extent(guest, length, ZERO)
        if entry & L2_RESERVED or (entry & OFFSET_MASK) % self.cluster_size:
            raise CorruptImage(f"qcow2: the L2 entry of guest offset {guest} is malformed")
        host = entry & OFFSET_MASK
        if not host:
            return Extent(guest, length, ZERO)  # unallocated, and there is no backing file
        self._inside(host, 1, f"the cluster at guest offset {guest}")
        return Extent(guest, length, DATA, host, length)

    def _inside(self, offset: int, length: int, what: str) -> None:
        if offset + length > self.source.size:
            raise CorruptImage(f"qcow2: {what} lies past the end of the file")

    def inflate(self, stored: bytes) -> bytes:
        """Return the cluster a compressed cluster's ``stored`` bytes hold.

        Raises:
          CorruptImage: They do not inflate to exactly one cluster.
        """
        size = self.cluster_size
        try:
            if self.header.compression_type == COMPRESSION_ZSTD:
                out = zstandard.ZstdDecompressor().decompressobj().decompress(stored)[:size]
            else:
                # qemu deflates with a 4 KiB window; a 32 KiB one reads any raw deflate.
                out = zlib.decompressobj(-15).decompress(stored, size)
        except (zlib.error, zstandard.ZstdError) as exc:
            raise CorruptImage(f"qcow2: a compressed cluster does not inflate ({exc})") from None
        if len(out) != size:
            raise CorruptImage(f"qcow2: a compressed cluster inflates to {len(out)} bytes")
        return out


def _merge(first: Extent, second: Extent) -> Extent | None:
    """``first`` and ``second`` as one extent, when they are one run (``None`` if not)."""
    if first.kind != second.kind or first.kind == COMPRESSED:
        return None
    if first.guest + first.length != second.guest:
        return None
    length = first.length + second.length
    if first.kind == ZERO:
        return Extent(first.guest, length, ZERO)
    if first.host + first.length != second.host or length > MAX_EXTENT:
        return None
    return Extent(first.guest, length, DATA, first.host, length)


def open_image(source: RangeSource) -> Qcow2Reader:
    """Read and check the header and the L1 table of the qcow2 image in ``source``.

    Raises:
      Unsupported: What cannot be restored as a raw disk this way, named.
      CorruptImage: The header's tables lie outside the file.
    """
    first = source.read(0, 4096)
    try:
        header = parse_header(first)
    except FormatError as exc:
        raise Unsupported(f"cannot convert this image: {exc}") from None
    if header.cluster_size > len(first):
        first += source.read(len(first), header.cluster_size - len(first))
    refuse = _refusal(header, first)
    if refuse:
        raise Unsupported(f"cannot convert this qcow2 image to a raw disk: {refuse}")
    if header.size == 0:
        raise Unsupported("cannot convert this qcow2 image: its virtual size is 0")
    needed = -(-header.size // (header.l2_entries * header.cluster_size))
    if header.l1_size < needed:
        raise CorruptImage(f"qcow2: L1 table of {header.l1_size} entries, {needed} needed")
    if header.l1_table_offset % header.cluster_size or (
        header.l1_table_offset + needed * 8 > source.size
    ):
        raise CorruptImage("qcow2: the L1 table lies outside the file")
    raw = source.read(header.l1_table_offset, needed * 8)
    return Qcow2Reader(source, header, struct.unpack(f">{needed}Q", raw))


def _refusal(header: Header, cluster0: bytes) -> str | None:
    """Why a raw conversion of this image cannot be trusted, or ``None``."""
    if header.backing_file_offset:
        start, length = header.backing_file_offset, min(header.backing_file_size, 1023)
        name = cluster0[start : start + length].decode(errors="replace") or "?"
        return f"it has a backing file ({name!r}); flatten it first (qemu-img convert)"
    if header.crypt_method:
        method = {1: "AES", 2: "LUKS"}.get(header.crypt_method, str(header.crypt_method))
        return f"it is encrypted ({method})"
    unknown = header.incompatible_features & ~_READABLE
    if unknown:
        names = [
            INCOMPAT_NAMES.get(1 << bit, f"unknown bit {bit}")
            for bit in range(64)
            if unknown >> bit & 1
        ]
        verb = "is marked" if unknown == INCOMPAT_CORRUPT else "uses"
        return f"it {verb} {', '.join(names)} (incompatible feature)"
    if header.compression_type not in (COMPRESSION_DEFLATE, COMPRESSION_ZSTD):
        return f"unknown compression type {header.compression_type}"
    try:
        found = extensions(cluster0, header)
    except FormatError as exc:
        return str(exc)
    if any(kind == EXT_CRYPTO for kind, _ in found):
        return "it is encrypted (crypto header extension)"
    return None
