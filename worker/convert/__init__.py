"""An archived qcow2 image converted to a raw+zstd object beside it, streamed and verified.

:func:`convert_archive` reuses a verified ``image.raw.zst`` of the same archive (see
:mod:`.manifest`), or makes one: the qcow2 file is read with random access through ranged
GETs of the archive's objects (:mod:`.objects`), its header checked before anything is
uploaded (:func:`worker.qcow2.reader.open_image` refuses a backing file, encryption, an
unknown version or feature bit, an external data file), and the raw disk, zstd-compressed by
a thread of its own (:mod:`.stream`), goes through the transfer engine of
:mod:`worker.transfer` (:mod:`.source`): multipart parts checked against their MD5s,
checkpoints after every part, resumable after a crash, committed by ``image.raw.zst.json``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from worker.archive import ArchiveStore
from worker.convert.manifest import (
    RawImage,
    find_raw_image,
    raw_image_key,
    raw_manifest_key,
    read_raw_image,
)
from worker.convert.objects import ArchiveObjects
from worker.convert.source import ConversionSource
from worker.convert.stream import CannotResume
from worker.download import DownloadRetry
from worker.errors import ArchiveExists, NotFound, StoreIntegrityError
from worker.manifest import ArchiveId, Manifest
from worker.qcow2.reader import open_image
from worker.settings import TransferSettings
from worker.transfer.checkpoint import Checkpoint
from worker.transfer.engine import Transfer

__all__ = ["RawImage", "convert_archive", "find_raw_image", "raw_image_key"]

log = logging.getLogger(__name__)


async def convert_archive(
    store: ArchiveStore,
    manifest: Manifest,
    settings: TransferSettings,
    client: Any,
    *,
    checkpoint: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], Awaitable[None]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    stop: asyncio.Event | None = None,
    threads: int = 0,
) -> RawImage:
    """Return the verified raw+zstd image of the archive ``manifest`` describes, converting it
    now unless one of the same archive is stored. Call it holding the archive's lease (its
    uploads under the archive's ``image.raw.zst`` are then this conversion's own).

    Parameters:
      store: The archive store (where the raw image goes, beside the archive).
      manifest: The archive's manifest, as the store read and checked it.
      settings: Part size, memory limit, upload concurrency.
      client: A boto3 S3 client for the ranged reads of the archive's objects.
      checkpoint: Resume from here (a conversion's checkpoint); default: start anew. One the
        store contradicts, or that the bytes made again do not match, is dropped.
      on_checkpoint: Awaited after each part, as for an archive transfer.
      on_progress: Called with (raw bytes done, raw size).
      stop: When set, the conversion ends at a part boundary (``TransferStopped``).
      threads: zstd threads (default 0: one per CPU).

    Raises:
      Unsupported: The image cannot be restored as a raw disk (before anything is uploaded).
      CorruptImage: Its tables or compressed clusters are broken.
      StoreIntegrityError: An archived object changed or is missing; a part stored wrongly.
      TransferStopped: ``stop`` was set.
      StoreError, TransferError: Other failures, after retries.
    """
    ids = ArchiveId(manifest.provider, manifest.zone, manifest.snapshot_id)
    manifest_key = store.manifest_key(ids.provider, ids.zone, ids.snapshot_id)
    try:
        found = await find_raw_image(store, manifest)
    except StoreIntegrityError as error:
        log.warning("%s: %s; converting again", ids, error)
        found = None
    if found is not None:
        log.info("%s: reusing %s", ids, found.zstd_key)
        return found
    await _drop_stale(store, ids)
    objects = ArchiveObjects(client, store.bucket, manifest)
    reader = await asyncio.to_thread(open_image, objects)
    source = ConversionSource(
        manifest, manifest_key, reader, threads=threads, on_progress=on_progress
    )
    saved = checkpoint.copy() if checkpoint is not None else None
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:  # unused: no download
        for attempt in (1, 2):
            transfer = Transfer(source, store, settings, on_checkpoint, None, stop)
            try:
                await transfer.run(session, saved, DownloadRetry())
                break
            except CannotResume as error:
                # Its uploads are dropped (a permanent error): convert from the start.
                if attempt == 2 or saved is None:
                    raise
                log.warning("%s: %s; converting from the start", ids, error)
                saved = None
            except ArchiveExists:
                break  # another run committed it meanwhile
    if source.written is not None:
        return source.written
    return await read_raw_image(store, raw_manifest_key(store, ids))


async def _drop_stale(store: ArchiveStore, ids: ArchiveId) -> None:
    """Delete a raw manifest that is not of this archive (or not valid), and its object: a
    conversion replaces them (under the archive's lease)."""
    key = raw_manifest_key(store, ids)
    try:
        if not await store.exists(key):
            return
    except NotFound:
        return
    log.info("%s: replacing a stale raw image", ids)
    await store.delete_object(key)
    await store.delete_object(raw_image_key(store, ids))
