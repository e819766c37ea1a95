"""What a transfer reads and where it writes: the :class:`TransferSource` extension point.

The engine (:mod:`.engine`), its commit (:mod:`.commit`) and its resume (:mod:`.resume`)
ask the source for everything specific to what is transferred: the byte stream
(:class:`ByteStream`), the part layout, the objects' keys and metadata, how the whole is
verified and which manifest commits it. Two sources exist:

- :class:`ExportSource`: an Exoscale export read over its presigned URL into an archive
  (:mod:`worker.download`; the MD5 must be the published ``md5sum``);
- :class:`worker.convert.source.ConversionSource`: an archived qcow2 image converted to
  raw+zstd beside its archive (an open-ended stream: its length is known at its end only).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp

import worker
from worker.download import Download, DownloadRetry
from worker.errors import ChecksumMismatch
from worker.manifest import IMAGE_NAME, ArchivedObject, ArchiveId, Manifest, SourceTemplate
from worker.parts import PartPlan, plan_parts
from worker.settings import TransferSettings

if TYPE_CHECKING:
    from worker.archive import ArchiveStore
    from worker.transfer.checkpoint import Checkpoint


class ByteStream(Protocol):
    """The bytes of one transfer, read in order from an offset (:class:`~worker.download.
    Download` is one).

    Attributes:
      validator: What pins the source across resumes (an ETag), saved in the checkpoint.
    """

    validator: str | None

    async def open(self) -> int:
        """Start reading; return the total size (an upper bound for an :class:`OpenEnded`
        stream)."""
        ...

    async def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next bytes; fewer only at the end."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class OpenEnded(Protocol):
    """A :class:`ByteStream` whose length is known only at its end (:meth:`ByteStream.open`
    returns an upper bound), and which resumes from state it hands to each checkpoint."""

    def resume_state(self, offset: int) -> dict[str, Any] | None:
        """What a later stream needs to go on at ``offset`` (a part boundary this stream has
        passed, or its end); saved as the checkpoint's ``source_state``."""
        ...


@dataclass(frozen=True)
class Scope:
    """Where one transfer's objects live in the store.

    Parameters:
      uploads: The key prefix its multipart uploads are under (leftovers are looked for there).
      manifest: The key of the manifest that commits it.
      objects: Whether a key under ``uploads`` is one of its objects (a commit that did not
        finish may leave them).
    """

    uploads: str
    manifest: str
    objects: Callable[[str], bool]


def archive_scope(store: ArchiveStore, archive: ArchiveId) -> Scope:
    """The scope of an archive's transfer: its folder, ``manifest.json``, ``image*``."""
    prefix = store.archive_prefix(archive.provider, archive.zone, archive.snapshot_id)
    return Scope(
        uploads=prefix,
        manifest=store.manifest_key(archive.provider, archive.zone, archive.snapshot_id),
        objects=lambda key: bool(IMAGE_NAME.fullmatch(key[len(prefix) :])),
    )


class TransferSource(Protocol):
    """What the engine needs from what it transfers (see the module docstring)."""

    @property
    def archive(self) -> ArchiveId:
        """The snapshot whose bytes these are (names it in logs)."""
        ...

    @property
    def expected_md5(self) -> str:
        """Pins the source in the checkpoint: a checkpoint with another is not resumed."""
        ...

    def scope(self, store: ArchiveStore) -> Scope: ...

    def plan(self, total: int, settings: TransferSettings) -> PartPlan:
        """The part layout for ``total`` bytes (an upper bound for an open-ended stream)."""
        ...

    def object_key(self, store: ArchiveStore, segment: int, segments: int) -> str: ...

    def object_metadata(self, plan: PartPlan, segment: int) -> dict[str, str]: ...

    def open_stream(
        self,
        session: aiohttp.ClientSession,
        settings: TransferSettings,
        *,
        offset: int,
        checkpoint: Checkpoint | None,
        retry: DownloadRetry,
        on_bytes: Callable[[int], None],
    ) -> ByteStream:
        """The stream from ``offset`` (the checkpoint's, when resuming)."""
        ...

    def verify(self, md5: str, checkpoint: Checkpoint) -> None:
        """Check the whole stream's MD5 before any object is completed (raise
        :class:`~worker.errors.ChecksumMismatch` or another permanent error)."""
        ...

    async def write_manifest(
        self, store: ArchiveStore, md5: str, objects: list[ArchivedObject], checkpoint: Checkpoint
    ) -> str:
        """Write the manifest that commits the objects; return its key (raise
        :class:`~worker.errors.ArchiveExists` when one is there)."""
        ...


@dataclass(frozen=True)
class ExportSource:
    """What is being archived. No credentials inside except the URL itself.

    Parameters:
      provider, zone, snapshot_id, snapshot_name, instance_id, created_at: The snapshot.
      md5: The export's published md5sum (hex).
      url: The current presigned URL: a credential, never logged, stored or put in metadata.
      refresh_url: Coroutine function returning a fresh presigned URL.
      policy: The backup policy that took the snapshot, if one did (default ``None``).
      template: The source instance's template settings, when known (default ``None``).
    """

    provider: str
    zone: str
    snapshot_id: str
    snapshot_name: str
    instance_id: str | None
    created_at: str | None
    md5: str
    url: str = field(repr=False)
    refresh_url: Callable[[], Awaitable[str]] = field(repr=False)
    policy: str | None = None
    template: SourceTemplate | None = None

    @property
    def archive(self) -> ArchiveId:
        """The archive this source goes into."""
        return ArchiveId(self.provider, self.zone, self.snapshot_id)

    @property
    def expected_md5(self) -> str:
        """The published MD5, normalised (lowercase, no spaces)."""
        return self.md5.strip().lower()

    def scope(self, store: ArchiveStore) -> Scope:
        return archive_scope(store, self.archive)

    def plan(self, total: int, settings: TransferSettings) -> PartPlan:
        return plan_parts(total, settings)

    def object_key(self, store: ArchiveStore, segment: int, segments: int) -> str:
        return store.image_key(self.provider, self.zone, self.snapshot_id, segment, segments)

    def object_metadata(self, plan: PartPlan, segment: int) -> dict[str, str]:
        return {
            "source-md5": self.expected_md5,
            "provider": self.provider,
            "zone": self.zone,
            "snapshot-id": self.snapshot_id,
            "image-size": str(plan.total),
            "segment": f"{segment + 1}/{plan.segment_count}",
            "segment-offset": str(plan.segment(segment).offset),
            "part-size": str(plan.part_size),
            "tool-version": worker.__version__,
        }

    def open_stream(
        self,
        session: aiohttp.ClientSession,
        settings: TransferSettings,
        *,
        offset: int,
        checkpoint: Checkpoint | None,
        retry: DownloadRetry,
        on_bytes: Callable[[int], None],
    ) -> ByteStream:
        return Download(
            session,
            self.url,
            self.refresh_url,
            settings.allowed_download_hosts,
            offset=offset,
            total=checkpoint.plan.total if checkpoint else None,
            validator=checkpoint.validator if checkpoint else None,
            retry=retry,
            on_bytes=on_bytes,
        )

    def verify(self, md5: str, checkpoint: Checkpoint) -> None:
        if md5 != self.expected_md5:
            raise ChecksumMismatch(self.expected_md5, md5)

    async def write_manifest(
        self, store: ArchiveStore, md5: str, objects: list[ArchivedObject], checkpoint: Checkpoint
    ) -> str:
        plan = checkpoint.plan
        return await store.put_manifest(
            Manifest(
                provider=self.provider,
                zone=self.zone,
                snapshot_id=self.snapshot_id,
                snapshot_name=self.snapshot_name,
                instance_id=self.instance_id,
                created_at=self.created_at,
                size=plan.total,
                md5=md5,
                part_size=plan.part_size,
                objects=tuple(objects),
                tool_version=worker.__version__,
                archived_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                policy=self.policy,
                template=self.template,
            )
        )

