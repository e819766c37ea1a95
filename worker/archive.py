"""The archive store: verified snapshot archives in an S3-compatible bucket.

:class:`ArchiveStore` is a :class:`~worker.s3.Bucket` that knows the archive format
(:mod:`worker.manifest`): where an archive's objects and manifest go, how a manifest is
written once and read back checked, and which archives the bucket holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from worker.errors import (
    ArchiveExists,
    NotFound,
    SnaparchiveError,
    StoreIntegrityError,
)
from worker.manifest import (
    IMAGE_NAME,
    MANIFEST_LIMIT,
    MANIFEST_NAME,
    ArchiveId,
    ArchiveResult,
    Manifest,
    archive_prefix,
    image_name,
    manifest_archive,
    shown,
)
from worker.s3 import Bucket, OpenUpload
from worker.settings import S3Settings


@dataclass
class ArchiveScan:
    """What :meth:`ArchiveStore.scan_archives` found: ``manifests``, every valid manifest by
    its key, and ``refused``, one line per manifest that is not valid (not counted)."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    @property
    def archived(self) -> set[tuple[str, str, str]]:
        """``(provider, zone, snapshot_id)`` of every archive with a valid manifest."""
        return {(m.provider, m.zone, m.snapshot_id) for m in self.manifests.values()}


class ArchiveStore(Bucket):
    """Archives in one bucket, under ``SNAPARCHIVE_S3_PREFIX``.

    Parameters:
      settings: The bucket, prefix, endpoint and addressing style.
      client, max_workers: As for :class:`~worker.s3.Bucket`.
    """

    def __init__(self, settings: S3Settings, client: Any = None, *, max_workers: int = 5) -> None:
        super().__init__(settings, client, max_workers=max_workers)
        self.prefix = settings.prefix

    async def __aenter__(self) -> ArchiveStore:
        return self

    # -- keys ------------------------------------------------------------------------------

    def archive_prefix(self, provider: str, zone: str, snapshot_id: str) -> str:
        """Return ``{prefix}{provider}/{zone}/{snapshot_id}/``.

        Raises:
          ValueError: When a component is empty or contains ``/``.
        """
        return archive_prefix(self.prefix, ArchiveId(provider, zone, snapshot_id))

    def manifest_key(self, provider: str, zone: str, snapshot_id: str) -> str:
        """Return the key of the archive's manifest."""
        return self.archive_prefix(provider, zone, snapshot_id) + MANIFEST_NAME

    def image_key(
        self, provider: str, zone: str, snapshot_id: str, segment: int, segments: int
    ) -> str:
        """Return the key of image object ``segment`` (from 0) of ``segments``: ``image``
        when there is one, else ``image.seg00000``, ``image.seg00001``, ..."""
        return image_name(segment, segments, self.archive_prefix(provider, zone, snapshot_id))

    async def list_open_uploads(self, prefix: str | None = None) -> list[OpenUpload]:
        """Return the incomplete multipart uploads under ``prefix`` (default: the store's)."""
        return await super().list_open_uploads(self.prefix if prefix is None else prefix)

    async def list_image_keys(self, prefix: str) -> list[str]:
        """Return the keys of the image objects (``image``, ``image.segNNNNN``) directly
        under an archive's ``prefix``; anything else there is not the transfer's."""
        return [k for k in await self.list_keys(prefix) if IMAGE_NAME.fullmatch(k[len(prefix) :])]

    # -- manifests -------------------------------------------------------------------------

    async def put_manifest(self, manifest: Manifest) -> str:
        """Write ``manifest`` at its key, never over an existing one; return the key.

        Raises:
          ArchiveExists: When a manifest is already there.
        """
        key = self.manifest_key(manifest.provider, manifest.zone, manifest.snapshot_id)
        await self.put_once(
            key,
            manifest.to_json(),
            ArchiveExists,
            content_type="application/json",
            metadata={"source-md5": manifest.md5},
        )
        return key

    async def read_manifest(self, key: str) -> Manifest:
        """Return the manifest stored at ``key``, checked by :meth:`Manifest.from_json`.

        Only a manifest key (``{prefix}{provider}/{zone}/{snapshot_id}/manifest.json``) is
        read, and only its first :data:`~worker.manifest.MANIFEST_LIMIT` bytes are asked for;
        an object longer than that is refused unread. An image key passed by mistake never
        pulls an image into memory.

        Raises:
          NotFound: When there is no object at ``key``.
          StoreIntegrityError: When ``key`` is not a manifest key, or the object is not a
            valid manifest (too long, empty, malformed).
          StoreError: When the store fails.
        """
        if manifest_archive(self.prefix, key) is None:
            raise StoreIntegrityError(
                f"not a manifest key: {shown(key)} (expected "
                f"{self.prefix}PROVIDER/ZONE/SNAPSHOT/{MANIFEST_NAME})"
            )
        try:
            raw = await self.read_small(key, MANIFEST_LIMIT)
        except NotFound:
            raise NotFound(f"no manifest at {key}", 404) from None
        if raw is None:
            raise StoreIntegrityError(
                f"malformed manifest {key}: longer than a manifest's {MANIFEST_LIMIT} bytes"
            )
        if not raw:
            raise StoreIntegrityError(f"malformed manifest {key}: empty object")
        return Manifest.from_json(raw, key)

    def result_from_manifest(self, manifest: Manifest) -> ArchiveResult:
        """Return the :class:`~worker.manifest.ArchiveResult` a stored ``manifest`` describes."""
        return ArchiveResult(
            bucket=self.bucket,
            manifest_key=self.manifest_key(manifest.provider, manifest.zone, manifest.snapshot_id),
            md5=manifest.md5,
            size=manifest.size,
            objects=list(manifest.objects),
        )

    async def find_archive(self, provider: str, zone: str, snapshot_id: str) -> Manifest | None:
        """Return the manifest of the verified archive of a snapshot, or ``None``."""
        try:
            return await self.read_manifest(self.manifest_key(provider, zone, snapshot_id))
        except NotFound:
            return None

    async def require_archive(self, provider: str, zone: str, snapshot_id: str) -> Manifest:
        """Return the manifest of the verified archive of a snapshot.

        Raises:
          NotFound: There is none (the message names the bucket and prefix looked in).
        """
        manifest = await self.find_archive(provider, zone, snapshot_id)
        if manifest is None:
            raise NotFound(
                f"no verified archive of {zone}/{snapshot_id} in s3://{self.bucket}/{self.prefix}"
            )
        return manifest

    async def archived_snapshots(self, concurrency: int = 8) -> set[tuple[str, str, str]]:
        """Return ``(provider, zone, snapshot_id)`` of every archive whose manifest is valid
        (see :meth:`scan_archives`)."""
        return (await self.scan_archives(concurrency)).archived

    async def scan_archives(self, concurrency: int = 8, under: str = "") -> ArchiveScan:
        """Read and check every manifest under the store's prefix (and ``under`` it, e.g.
        ``exoscale/ch-gva-2/`` for one zone).

        A manifest key is only a claim: the archive counts when its manifest reads back
        valid (:meth:`read_manifest`). Manifests are read ``concurrency`` at a time
        (default 8; the store's threads bound it too); one deleted meanwhile is skipped.

        Raises:
          StoreError: When the store fails (the scan stops at the first failure).
        """
        keys = iter(
            [
                k
                for k in await self.list_keys(self.prefix + under)
                if manifest_archive(self.prefix, k)
            ]
        )
        scan = ArchiveScan()
        failures: list[SnaparchiveError] = []

        async def reader() -> None:
            for key in keys:  # one iterator shared by every reader: each key is read once
                if failures:
                    return
                try:
                    manifest = await self.read_manifest(key)
                except NotFound:
                    continue
                except StoreIntegrityError as exc:
                    scan.refused.append(str(exc))
                    continue
                except SnaparchiveError as exc:
                    failures.append(exc)
                    return
                scan.manifests[key] = manifest

        await asyncio.gather(*(reader() for _ in range(max(1, concurrency))))
        if failures:
            raise failures[0]
        scan.refused.sort()
        return scan
