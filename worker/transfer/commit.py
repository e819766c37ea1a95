"""The commit of a transfer: verify the whole image, complete each object, write the manifest.

The manifest is the commit point: objects without one are no archive. The commit is
resumable: each segment's state is checkpointed before CompleteMultipartUpload (with the
ETag its object must get) and after it (with the ETag it got), so a crash or a transient
failure keeps the objects completed already; a resume keeps one only if it still has that
ETag and its size (:mod:`worker.transfer.resume`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable

from worker.archive import ArchiveStore
from worker.errors import (
    ArchiveExists,
    ObjectExists,
    StoreIntegrityError,
    TransferError,
)
from worker.manifest import ArchivedObject, ArchiveResult
from worker.md5state import Md5
from worker.parts import SegmentSpan
from worker.transfer.checkpoint import (
    COMPLETED,
    COMPLETING,
    Checkpoint,
    SegmentUpload,
    TransferStopped,
    etags_digest,
)
from worker.transfer.source import TransferSource

log = logging.getLogger(__name__)

_MD5_HEX_PREFIX = re.compile(r"[0-9a-f]{32}")
#: A multipart ETag as S3 computes it (``md5(concat(part md5s))-N``). Stores that encrypt
#: (MinIO, SSE-KMS, SSE-C) may give a completed object another one, a plain 32-hex string
#: among them: only one of this shape can be compared with the one computed here.
_MULTIPART_ETAG = re.compile(r"[0-9a-f]{32}-[0-9]+")


def multipart_etag(part_md5s: list[str]) -> str:
    """Return the ETag S3 gives a multipart object whose parts have these hex MD5s."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"


class Commit:
    """Turns a transfer stored and hashed to its end into a verified archive.

    Parameters:
      store: The archive store.
      source: What was transferred (it verifies the whole and writes the manifest).
      checkpoint: The transfer's checkpoint, at the image's end.
      md5_etags: Whether the store's part ETags are MD5s (then each object's multipart
        ETag is checked against the one computed from them).
      stop: When set before a commit write, the commit stops (the lease may be lost).
      report: Saves the checkpoint as it is now.
    """

    def __init__(
        self,
        store: ArchiveStore,
        source: TransferSource,
        checkpoint: Checkpoint,
        *,
        md5_etags: bool,
        stop: asyncio.Event,
        report: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.source = source
        self.checkpoint = checkpoint
        self.md5_etags = md5_etags
        self.stop = stop
        self.report = report

    async def run(self, md5: Md5) -> ArchiveResult:
        """Verify the image's MD5, complete every object, write the manifest; return where
        the archive is.

        Raises:
          ChecksumMismatch: The image's MD5 is not the published one (or the source's own
            verification failed).
          StoreIntegrityError: The store's parts or objects are not the ones sent.
          ArchiveExists: Another run committed the archive meanwhile.
          ObjectExists: An object appeared at a key of this archive, with no manifest.
          TransferStopped: ``stop`` was set.
        """
        checkpoint, plan = self.checkpoint, self.checkpoint.plan
        digest = md5.hexdigest()
        self.source.verify(digest, checkpoint)
        if md5.length != plan.total or checkpoint.offset != plan.total:
            raise TransferError(
                f"hashed {md5.length} bytes, stored {checkpoint.offset} of {plan.total}"
            )
        objects: list[ArchivedObject] = []
        for span in plan.segments():
            upload = checkpoint.segments[span.index]
            if upload.state != COMPLETED:
                await self._complete(span, upload)
            assert upload.object_etag is not None
            objects.append(ArchivedObject(upload.key, span.size, upload.object_etag, span.offset))
        self._still_ours()
        manifest_key = await self.source.write_manifest(self.store, digest, objects, checkpoint)
        log.info("%s: archived %d bytes, md5 %s", self.source.archive, plan.total, digest)
        return ArchiveResult(self.store.bucket, manifest_key, digest, plan.total, objects)

    async def _complete(self, span: SegmentSpan, upload: SegmentUpload) -> None:
        """Complete one segment's object from its checked parts, checkpointed on both sides."""
        etags = await self._stored_etags(span)
        expected = multipart_etag(etags) if self._comparable(etags) else None
        upload.state, upload.object_etag = COMPLETING, expected
        await self.report()
        self._still_ours()
        try:
            etag = await self.store.complete_upload(upload.key, upload.upload_id, etags)
        except ObjectExists:
            manifest_key = self.source.scope(self.store).manifest
            if await self.store.exists(manifest_key):
                raise ArchiveExists(manifest_key) from None
            raise
        if expected is not None and not _MULTIPART_ETAG.fullmatch(etag):
            log.info(
                "%s: the store's ETag of %s is no multipart MD5: not compared",
                self.source.archive,
                upload.key,
            )
        elif expected is not None and etag != expected:
            raise StoreIntegrityError(
                f"the store assembled {upload.key} wrongly: ETag {etag}, expected {expected}"
            )
        upload.state, upload.object_etag = COMPLETED, etag
        await self.report()

    def _still_ours(self) -> None:
        """Before a commit write: stop if ``stop`` is set (the lease may be lost, and a worker
        that took over must not find objects appearing under its feet)."""
        if self.stop.is_set():
            raise TransferStopped(self.checkpoint)

    def _comparable(self, etags: list[str]) -> bool:
        return self.md5_etags and all(_MD5_HEX_PREFIX.fullmatch(etag) for etag in etags)

    async def _stored_etags(self, span: SegmentSpan) -> list[str]:
        """Return the ETags ListParts gives for a segment, after checking them against ours."""
        plan = self.checkpoint.plan
        upload = self.checkpoint.segments[span.index]
        stored = await self.store.list_parts(upload.key, upload.upload_id)
        first = span.index * plan.parts_per_segment
        if (
            stored is None
            or [p.number for p in stored] != list(range(1, span.parts + 1))
            or any(p.size != plan.part(first + p.number - 1).size for p in stored)
            or upload.parts != span.parts
            or etags_digest([p.etag for p in stored]) != upload.etags_md5
        ):
            raise StoreIntegrityError(
                f"the store's parts of {upload.key} differ from the ones sent"
            )
        return [p.etag for p in stored]
