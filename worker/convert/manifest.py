"""The raw+zstd image beside an archive, and its small manifest.

Keys, next to the archive (:mod:`worker.manifest`)::

    {prefix}{provider}/{zone}/{snapshot_id}/image.raw.zst        the disk, raw, zstd-compressed
    {prefix}{provider}/{zone}/{snapshot_id}/image.raw.zst.json   written last: the commit point

``image.raw.zst`` is one object (a URL must name it for a cloud to import it): zstd frames,
each of at most :data:`~worker.convert.stream.FRAME_SIZE` raw bytes and carrying its content
checksum, concatenated. ``image.raw.zst.json``::

    {"format": 1, "provider": "exoscale", "zone": "ch-gva-2", "snapshot_id": "<uuid>",
     "source": {"manifest": "<archive manifest key>", "md5": "<archive md5>",
                "size": <qcow2 bytes>},
     "raw_size": <disk bytes>, "raw_md5": "<md5 of the raw disk>",
     "zstd_key": "<key>", "zstd_size": <bytes>, "zstd_md5": "<md5 of the object>",
     "zstd_etag": "<multipart ETag>", "frame_size": <raw bytes per frame>,
     "tool_version": "...", "converted_at": "<ISO 8601 UTC>"}

A stored one is trusted (and the object reused instead of converting again) only when it
parses exactly so, names its own key's snapshot and the archive's current MD5, and the object
is there with its ETag and size (:func:`find_raw_image`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from worker.archive import ArchiveStore
from worker.errors import ArchiveExists, NotFound, StoreIntegrityError
from worker.manifest import MD5_HEX, ArchiveId, Manifest, shown

RAW_IMAGE_NAME = "image.raw.zst"
RAW_MANIFEST_NAME = "image.raw.zst.json"
RAW_MANIFEST_FORMAT = 1
#: The most bytes of a raw manifest read (a real one is about 700).
RAW_MANIFEST_LIMIT = 64 << 10


def raw_image_key(store: ArchiveStore, archive: ArchiveId) -> str:
    """``…/{snapshot_id}/image.raw.zst``."""
    return store.archive_prefix(archive.provider, archive.zone, archive.snapshot_id) + (
        RAW_IMAGE_NAME
    )


def raw_manifest_key(store: ArchiveStore, archive: ArchiveId) -> str:
    """``…/{snapshot_id}/image.raw.zst.json``."""
    return store.archive_prefix(archive.provider, archive.zone, archive.snapshot_id) + (
        RAW_MANIFEST_NAME
    )


@dataclass(frozen=True)
class RawSource:
    """The archive a raw image was made from: its ``manifest`` key, ``md5`` and ``size``."""

    manifest: str
    md5: str
    size: int


@dataclass(frozen=True)
class RawImage:
    """A committed raw+zstd image (see the module docstring for the fields)."""

    provider: str
    zone: str
    snapshot_id: str
    source: RawSource
    raw_size: int
    raw_md5: str
    zstd_key: str
    zstd_size: int
    zstd_md5: str
    zstd_etag: str
    frame_size: int
    tool_version: str
    converted_at: str
    format: int = RAW_MANIFEST_FORMAT

    @property
    def archive(self) -> ArchiveId:
        return ArchiveId(self.provider, self.zone, self.snapshot_id)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, key: str) -> RawImage:
        """Parse and check a stored raw manifest read from ``key``.

        Raises:
          StoreIntegrityError: Naming ``key`` and the first problem.
        """
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        problem = _problem(data, key)
        if problem:
            raise StoreIntegrityError(f"malformed raw image manifest {key}: {problem}")
        return cls(**{**data, "source": RawSource(**data["source"])})


_FIELDS: dict[str, type] = {
    "format": int,
    "provider": str,
    "zone": str,
    "snapshot_id": str,
    "source": dict,
    "raw_size": int,
    "raw_md5": str,
    "zstd_key": str,
    "zstd_size": int,
    "zstd_md5": str,
    "zstd_etag": str,
    "frame_size": int,
    "tool_version": str,
    "converted_at": str,
}
_SOURCE_FIELDS: dict[str, type] = {"manifest": str, "md5": str, "size": int}


def _problem(data: Any, key: str) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.keys() != _FIELDS.keys():
        return f"fields {sorted(data)} are not {sorted(_FIELDS)}"
    for name, kind in _FIELDS.items():
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            return f"{name} is not a {kind.__name__}"
    if data["format"] != RAW_MANIFEST_FORMAT:
        return f"unknown format {shown(data['format'])}"
    source = data["source"]
    if source.keys() != _SOURCE_FIELDS.keys() or not all(
        isinstance(source[n], k) and not isinstance(source[n], bool)
        for n, k in _SOURCE_FIELDS.items()
    ):
        return "source is not {manifest, md5, size}"
    folder = key.rpartition("/")[0]
    if key.rpartition("/")[2] != RAW_MANIFEST_NAME or folder.split("/")[-3:] != [
        data["provider"],
        data["zone"],
        data["snapshot_id"],
    ]:
        return "its snapshot is not its key's"
    if data["zstd_key"] != f"{folder}/{RAW_IMAGE_NAME}":
        return f"zstd_key {shown(data['zstd_key'])} is not its own folder's {RAW_IMAGE_NAME}"
    for name in ("raw_md5", "zstd_md5"):
        if not MD5_HEX.fullmatch(data[name]):
            return f"{name} is not 32 lowercase hex digits"
    if data["raw_size"] <= 0 or data["zstd_size"] <= 0 or data["frame_size"] <= 0:
        return "a size is not positive"
    return None


async def read_raw_image(store: ArchiveStore, key: str) -> RawImage:
    """The raw manifest at ``key``, checked.

    Raises:
      NotFound: There is none.
      StoreIntegrityError: It is not valid.
    """
    raw = await store.read_small(key, RAW_MANIFEST_LIMIT)
    if raw is None:
        raise StoreIntegrityError(f"malformed raw image manifest {key}: too long")
    return RawImage.from_json(raw, key)


async def find_raw_image(store: ArchiveStore, archive: Manifest) -> RawImage | None:
    """The verified raw image of ``archive``, or ``None`` when there is none to reuse: no
    raw manifest, one of another archive (the snapshot was archived again), or an object that
    is gone or changed (it is then converted again, over the stale manifest).

    Raises:
      StoreIntegrityError: A raw manifest is there but not valid.
    """
    ids = ArchiveId(archive.provider, archive.zone, archive.snapshot_id)
    try:
        image = await read_raw_image(store, raw_manifest_key(store, ids))
    except NotFound:
        return None
    if image.source.md5 != archive.md5 or image.source.size != archive.size:
        return None
    found = await store.stat(image.zstd_key)
    if found is None or found.etag != image.zstd_etag or found.size != image.zstd_size:
        return None
    return image


async def put_raw_image(store: ArchiveStore, image: RawImage) -> str:
    """Write the raw manifest (never over another one); return its key.

    Raises:
      ArchiveExists: One is there already.
    """
    key = raw_manifest_key(store, image.archive)
    await store.put_once(
        key,
        image.to_json(),
        ArchiveExists,
        content_type="application/json",
        metadata={"source-md5": image.source.md5, "raw-md5": image.raw_md5},
    )
    return key
