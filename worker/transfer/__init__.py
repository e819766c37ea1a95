"""The transfer engine: export URL → MD5 while streaming → S3 multipart → verified archive.

One pass over the image, memory bounded by the part buffers (:mod:`.buffers`):

1. The download (:mod:`worker.download`) fills a free part buffer straight from the socket.
   A buffer is free again once the checkpoint has passed its part, so the download is never
   more than the buffers ahead of the saved checkpoint: what a resume after a crash reads
   again, even when one slow part holds up the checkpoint while later ones are stored.
2. The full buffer goes to two places at once: the whole-image MD5 chain (one thread,
   strictly in order: :mod:`worker.md5state`) and UploadPart (the store's thread pool,
   several parts at a time). Meanwhile the next buffer fills (:mod:`.engine`).
3. Per-part integrity: a second thread computes the part's own MD5 while it uploads and
   compares it with the ETag the store returns (the part's MD5 on AWS without KMS/SSE-C,
   SOS, MinIO, Ceph and moto); a part the store received wrongly is sent again, then
   refused with :class:`~worker.errors.StoreIntegrityError`. It switches itself off where
   ETags are not MD5s. It replaces botocore's SHA256 payload signing at the same cost
   (measured in ``bench/RESULTS.md``), and unlike a CRC header it does not depend on the
   store verifying checksums (moto and possibly SOS do not).
4. When a part and every part before it are stored and hashed, ``on_checkpoint`` gets a
   :class:`Checkpoint` (:mod:`.checkpoint`). It stays small for 50 TiB.
5. After the last byte, :mod:`.commit` checks the MD5 against the published ``md5sum`` and
   ListParts against the parts sent, completes each object (``If-None-Match: *``), checks
   its multipart ETag, and writes the manifest last: the commit point.

A resume (:mod:`.resume`) adopts a checkpoint only as far as the store agrees with it, and
never lets a part into an object unless it was checked against the bytes that went into the
image MD5. Only a permanent error drops the uploads; a transient one keeps them and the
checkpoint for the next try. A set ``stop`` event ends the transfer at a part boundary with
the uploads open and raises :class:`TransferStopped`; an asyncio cancellation leaves them
open too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from worker.archive import ArchiveStore
from worker.download import DownloadRetry, check_download_url
from worker.errors import ArchiveExists
from worker.manifest import ArchiveResult
from worker.settings import TransferSettings
from worker.transfer.checkpoint import (
    COMPLETED,
    COMPLETING,
    UPLOADING,
    Checkpoint,
    SegmentUpload,
    TransferStopped,
    etags_digest,
)
from worker.transfer.commit import multipart_etag
from worker.transfer.engine import Transfer
from worker.transfer.resume import discard_transfer
from worker.transfer.source import ExportSource

__all__ = [
    "COMPLETED",
    "COMPLETING",
    "UPLOADING",
    "Checkpoint",
    "ExportSource",
    "SegmentUpload",
    "TransferStopped",
    "archive_export",
    "discard_transfer",
    "etags_digest",
    "multipart_etag",
]


async def archive_export(
    source: ExportSource,
    store: ArchiveStore,
    settings: TransferSettings,
    *,
    checkpoint: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], Awaitable[None]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop: asyncio.Event | None = None,
    retry: DownloadRetry | None = None,
) -> ArchiveResult:
    """Stream the export into a verified archive and return where it is.

    Parameters:
      source: The export and its snapshot.
      store: The archive store.
      settings: Part size, segment limit, concurrency, memory limit, allowed hosts.
      checkpoint: Resume from here (with a fresh ``source.url``); default: start anew.
        A checkpoint the store contradicts (its uploads gone, another md5) is dropped and
        its uploads aborted: the transfer then starts over.
      on_checkpoint: Awaited after each part that extends the stored prefix, and before and
        after each object's completion.
      on_progress: Called with ``(bytes_downloaded, total)`` after every chunk; keep it cheap.
      stop: When set, the transfer ends at a part boundary and raises :class:`TransferStopped`.
      retry: Download retry bounds; default :class:`~worker.download.DownloadRetry()`.

    Raises:
      ArchiveExists: A verified archive of the snapshot is stored already.
      ChecksumMismatch: The image's MD5 is not the published one.
      ShortRead: The download ended early and could not be resumed.
      StoreIntegrityError: The store holds other bytes than the ones sent.
      DownloadRefused: The URL breaks the download policy.
      TransferStopped: ``stop`` was set.
      StoreError, AuthError, NotFound, TransferError: Other failures, after retries.
    """
    check_download_url(source.url, settings.allowed_download_hosts)
    if await store.find_archive(source.provider, source.zone, source.snapshot_id) is not None:
        raise ArchiveExists(store.manifest_key(source.provider, source.zone, source.snapshot_id))
    transfer = Transfer(source, store, settings, on_checkpoint, on_progress, stop)
    # The transfer moves its own copy: the caller's checkpoint stays as it was saved.
    saved = checkpoint.copy() if checkpoint else None
    # Each download request carries its own timeouts (:class:`~worker.download.Download`);
    # the session's default total of 5 minutes must not cut a body of hours.
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        return await transfer.run(session, saved, retry or DownloadRetry())
