"""Reading an archive back to a file or a stream: fast, verified, never a wrong file in place.

The objects are read by ranged GETs several at a time (:class:`~worker.reader.RangedReader`),
hashed strictly in order (in a thread, beside the next writes and reads) and written with
``aiofiles``; memory stays at a few chunks whatever the image size.

A restore never leaves a wrong file where the caller asked for one: bytes go to a
temporary file beside the destination, renamed into place only after the whole image
hashed to the manifest's MD5 and had the manifest's size. The temporary file is created
before the first byte is fetched, only if nothing is there yet (not through a symlink
planted in its place), readable by its owner only, and removed when the restore fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import aiofiles

from worker.errors import ChecksumMismatch, SnaparchiveError
from worker.manifest import Manifest
from worker.reader import CHUNK_SIZE, CONCURRENCY, RangedReader, check_objects
from worker.s3 import Bucket

#: Chunks waiting for the hash, and for the write, at most.
QUEUED = 2
#: Where the bytes go: an awaitable write of one chunk (``None``: verify only).
Write = Callable[[bytes], Awaitable[object]]


class OutputError(SnaparchiveError):
    """The restored image cannot be written where it was asked for."""


async def stream_archive(
    bucket: Bucket,
    manifest: Manifest,
    write: Write | None,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    concurrency: int = CONCURRENCY,
) -> str:
    """Read every object of ``manifest`` in order, hash it, and hand it to ``write``.

    Every object is looked at first (HEAD, with its size), so a missing one fails before a
    byte is read.

    Parameters:
      bucket: The archive's bucket (with at least ``concurrency`` threads).
      manifest: The archive's manifest (as :meth:`Manifest.from_json` checked it).
      write: Where the image bytes go (``None``: verify only). Each chunk is written while
        it is hashed and the next ones are read.
      on_progress: Called with (bytes read, total) after each chunk.
      chunk_size, concurrency: Bytes per ranged GET and GETs in flight (defaults
        :data:`~worker.reader.CHUNK_SIZE`, :data:`~worker.reader.CONCURRENCY`).

    Returns:
      The MD5 hex of what was read.

    Raises:
      MissingObject: An object is missing.
      StoreIntegrityError: An object's size differs from the manifest's.
      StoreError: The store failed reading an object (the message names it).
      OutputError: ``write`` failed.
      ChecksumMismatch: The bytes do not hash to the manifest's MD5.
    """
    await check_objects(bucket, manifest.objects)
    reader = RangedReader(bucket, manifest.objects, chunk_size=chunk_size, concurrency=concurrency)
    digest = hashlib.md5()
    done = 0
    # The hash (one thread, strictly in order: the slowest stage) and the writes each take
    # chunks from a short queue of their own, so neither waits for the other and the reads
    # run ahead; at most ``concurrency`` + 2 * QUEUED chunks are held at once.
    hashing: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED)
    writing: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED)

    async def hasher() -> None:
        while (chunk := await hashing.get()) is not None:
            # hashlib lets go of the GIL for big buffers: the hash runs beside everything else.
            await asyncio.to_thread(digest.update, chunk)

    async def writer() -> None:
        assert write is not None
        while (chunk := await writing.get()) is not None:
            await write(chunk)

    async def reading() -> None:
        nonlocal done
        async for chunk in reader.chunks():
            await hashing.put(chunk)
            if write is not None:
                await writing.put(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, manifest.size)
        await hashing.put(None)
        await writing.put(None)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(reading())
            group.create_task(hasher())
            if write is not None:
                group.create_task(writer())
    except BaseExceptionGroup as failed:
        # One stage failed and the others were cancelled: its error, as it was raised.
        raise failed.exceptions[0] from None
    actual = digest.hexdigest()
    if actual != manifest.md5 or done != manifest.size:
        raise ChecksumMismatch(manifest.md5, actual)
    return actual


def stream_writer(sink: BinaryIO, sink_name: str) -> Write:
    """A :data:`Write` to a binary stream (stdout), in a thread."""

    async def write(chunk: bytes) -> None:
        await asyncio.to_thread(_write_all, sink, chunk, sink_name)

    return write


def _write_all(sink: BinaryIO, chunk: bytes, sink_name: str) -> None:
    """Write all of ``chunk``: an unbuffered sink (stdout under ``python -u`` or
    ``PYTHONUNBUFFERED``) may take only part of it, as a pipe does when its reader leaves."""
    view = memoryview(chunk)
    try:
        while view:
            written = sink.write(view)
            if not written:  # None: a non-blocking sink that is full
                raise OutputError(f"cannot write {sink_name}: it takes no more bytes")
            view = view[written:]
    except OSError as exc:
        raise OutputError(f"cannot write {sink_name}: {_reason(exc)}") from None


async def restore_to_file(
    bucket: Bucket,
    manifest: Manifest,
    destination: Path,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    concurrency: int = CONCURRENCY,
) -> str:
    """Write the verified image to ``destination`` (atomically); return its MD5.

    The image goes to ``.{name}.partial`` beside ``destination`` first, created before any
    object is read, with ``O_EXCL|O_NOFOLLOW`` and mode 0600, written with ``aiofiles``; it
    is renamed over ``destination`` once verified, and removed if anything fails.

    Raises:
      OutputError: The temporary file cannot be created (already there, no permission),
        written or renamed.
      And what :func:`stream_archive` raises.
    """
    partial = destination.with_name(f".{destination.name}.partial")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(partial, flags, 0o600)
    except FileExistsError:
        raise OutputError(
            f"{partial} already exists: another restore to {destination} is running, or "
            f"one was interrupted (remove it and try again)"
        ) from None
    except OSError as exc:
        raise OutputError(f"cannot create {partial}: {_reason(exc)}") from None
    try:
        try:
            async with aiofiles.open(fd, "wb", buffering=0) as sink:

                async def write(chunk: bytes) -> None:
                    try:
                        await sink.write(chunk)
                    except OSError as exc:
                        raise OutputError(f"cannot write {partial}: {_reason(exc)}") from None

                md5 = await stream_archive(
                    bucket, manifest, write, on_progress,
                    chunk_size=chunk_size, concurrency=concurrency,
                )  # fmt: skip
                await asyncio.to_thread(os.fsync, fd)
            os.replace(partial, destination)
        except OSError as exc:
            raise OutputError(f"cannot write {destination}: {_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return md5


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
