"""The qcow2 on-disk format, as far as snaparchive reads (and its simulator writes) it.

Reference: QEMU's ``docs/interop/qcow2.txt``. All integers are big-endian. The header (v2:
72 bytes, v3: at least 104) is followed by header extensions up to the end of cluster 0.
A guest offset maps through the L1 table (one 8-byte entry per L2 table) and an L2 table
(one 8-byte entry per cluster) to a host offset::

    L1 entry:  bits 9-55 offset of the L2 table (0: not allocated), bit 63 COPIED
    L2 entry:  standard cluster: bit 0 ZERO (v3), bits 9-55 host offset, bit 62 = 0,
               bit 63 COPIED; compressed (bit 62): bits 0..x-1 host byte offset,
               bits x..61 additional 512-byte sectors, x = 62 - (cluster_bits - 8)

:func:`parse_header` reads and checks a header; :func:`pack_header` writes a v3 one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
#: v3 header up to and including ``header_length``; the compression type byte follows.
HEADER_V3 = struct.Struct(">4sIQIIQIIQQIIQQQQII")
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
#: The header length qemu writes for v3 (with the compression type byte and padding).
HEADER_V3_LENGTH = 112

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
#: Host offset bits of an L1 entry and of a standard L2 entry (bits 9-55).
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
#: Bits of an L1 or standard L2 entry that must be zero (1-8 and 56-61; 62 only in L1).
L1_RESERVED = 0x7F00_0000_0000_01FF
L2_RESERVED = 0x3F00_0000_0000_01FE
COMPRESSED_SECTOR = 512

#: Incompatible feature bits (header ``incompatible_features``).
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_NAMES = {
    INCOMPAT_DIRTY: "dirty (refcounts need repair)",
    INCOMPAT_CORRUPT: "corrupt",
    INCOMPAT_DATA_FILE: "external data file",
    INCOMPAT_COMPRESSION: "compression type",
    INCOMPAT_EXTL2: "extended L2 entries (subclusters)",
}

COMPRESSION_DEFLATE = 0
COMPRESSION_ZSTD = 1

#: Header extension types.
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_CRYPTO = 0x0537BE77
EXT_BITMAPS = 0x23852875
EXT_DATA_FILE = 0x44415441


class FormatError(ValueError):
    """The bytes are not a qcow2 header this module understands (the message says why)."""


@dataclass(frozen=True)
class Header:
    """The fields of a qcow2 header snaparchive uses.

    Parameters:
      version: 2 or 3.
      cluster_bits: log2 of the cluster size (9 to 21).
      size: Virtual disk size in bytes.
      l1_size: L1 entries.
      l1_table_offset: Host offset of the L1 table.
      refcount_table_offset, refcount_table_clusters: The refcount table.
      backing_file_offset, backing_file_size: Where the backing file's name is (0: none).
      crypt_method: 0 none, 1 AES, 2 LUKS.
      nb_snapshots, snapshots_offset: Internal snapshots (ignored: the active layer is read).
      incompatible_features, compatible_features, autoclear_features: Feature bits (v3).
      refcount_order: log2 of the refcount width in bits (v3; 4 in v2).
      header_length: Bytes of the header proper (v3).
      compression_type: :data:`COMPRESSION_DEFLATE` or :data:`COMPRESSION_ZSTD`.
    """

    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    backing_file_offset: int = 0
    backing_file_size: int = 0
    crypt_method: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_V3_LENGTH
    compression_type: int = COMPRESSION_DEFLATE

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        """Entries per L2 table (one cluster of 8-byte entries)."""
        return self.cluster_size // 8

    @property
    def compressed_offset_bits(self) -> int:
        """``x``: the bits of a compressed L2 entry that hold the host byte offset."""
        return 62 - (self.cluster_bits - 8)


def parse_header(raw: bytes) -> Header:
    """Read the header at the start of ``raw`` (at least 112 bytes, or the whole file).

    Raises:
      FormatError: Not qcow2 (the magic), or fields out of their ranges.
    """
    if len(raw) < HEADER_V2.size or raw[:4] != MAGIC:
        raise FormatError("not a qcow2 image (no QFI\\xfb magic)")
    version = struct.unpack_from(">I", raw, 4)[0]
    if version not in (2, 3):
        raise FormatError(f"qcow2 version {version} (only 2 and 3 are known)")
    if version == 2:
        fields = HEADER_V2.unpack_from(raw)
        extra: tuple[int, ...] = (0, 0, 0, 4, HEADER_V2.size)
    else:
        if len(raw) < HEADER_V3.size:
            raise FormatError("truncated qcow2 v3 header")
        fields = HEADER_V3.unpack_from(raw)
        extra = fields[13:]
    header_length = extra[4]
    compression = raw[104] if version == 3 and header_length > 104 and len(raw) > 104 else 0
    header = Header(
        version=version,
        backing_file_offset=fields[2],
        backing_file_size=fields[3],
        cluster_bits=fields[4],
        size=fields[5],
        crypt_method=fields[6],
        l1_size=fields[7],
        l1_table_offset=fields[8],
        refcount_table_offset=fields[9],
        refcount_table_clusters=fields[10],
        nb_snapshots=fields[11],
        snapshots_offset=fields[12],
        incompatible_features=extra[0],
        compatible_features=extra[1],
        autoclear_features=extra[2],
        refcount_order=extra[3],
        header_length=header_length,
        compression_type=compression,
    )
    if not MIN_CLUSTER_BITS <= header.cluster_bits <= MAX_CLUSTER_BITS:
        raise FormatError(f"cluster_bits {header.cluster_bits} outside 9..21")
    if version == 3 and header_length < 104:
        raise FormatError(f"header_length {header_length} is below 104")
    return header


def pack_header(header: Header) -> bytes:
    """Return a v3 header of :data:`HEADER_V3_LENGTH` bytes (compression type included)."""
    packed = HEADER_V3.pack(
        MAGIC,
        3,
        header.backing_file_offset,
        header.backing_file_size,
        header.cluster_bits,
        header.size,
        header.crypt_method,
        header.l1_size,
        header.l1_table_offset,
        header.refcount_table_offset,
        header.refcount_table_clusters,
        header.nb_snapshots,
        header.snapshots_offset,
        header.incompatible_features,
        header.compatible_features,
        header.autoclear_features,
        header.refcount_order,
        HEADER_V3_LENGTH,
    )
    return packed + bytes([header.compression_type]) + bytes(HEADER_V3_LENGTH - len(packed) - 1)


def extensions(cluster0: bytes, header: Header) -> list[tuple[int, bytes]]:
    """Return ``(type, data)`` of each header extension in ``cluster0`` (v3; v2 has them too,
    after its 72 bytes), up to the end marker or the backing file name.

    Raises:
      FormatError: An extension runs past the end of cluster 0.
    """
    end = min(len(cluster0), header.backing_file_offset or header.cluster_size)
    offset = header.header_length if header.version == 3 else HEADER_V2.size
    found: list[tuple[int, bytes]] = []
    while offset + 8 <= end:
        kind, length = struct.unpack_from(">II", cluster0, offset)
        if kind == EXT_END:
            return found
        offset += 8
        if offset + length > end:
            raise FormatError(f"header extension 0x{kind:08x} runs past cluster 0")
        found.append((kind, bytes(cluster0[offset : offset + length])))
        offset += (length + 7) & ~7
    return found
