"""Reading an archive back: stream its objects in order, verify the MD5, write the image.

A restore never leaves a wrong file where the caller asked for one: bytes go to a
temporary file beside the destination, renamed into place only after the whole image
hashed to the manifest's MD5 and had the manifest's size. The temporary file is created
before the first byte is fetched, only if nothing is there yet (not through a symlink
planted in its place), readable by its owner only, and removed when the restore fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from worker.errors import ChecksumMismatch, SnaparchiveError, StoreError, StoreIntegrityError
from worker.manifest import ArchivedObject, Manifest

CHUNK = 8 << 20


class OutputError(SnaparchiveError):
    """The restored image cannot be written where it was asked for."""


def stream_archive(
    client: Any,
    bucket: str,
    manifest: Manifest,
    sink: BinaryIO | None,
    on_progress: Callable[[int, int], None] | None = None,
    sink_name: str = "the output",
) -> str:
    """Read every object of ``manifest`` in order, hash it, and write it to ``sink``.

    Parameters:
      client: A boto3 S3 client.
      bucket: The archive's bucket.
      manifest: The archive's manifest (as :meth:`Manifest.from_json` checked it).
      sink: Where the image bytes go (``None``: verify only).
      on_progress: Called with (bytes read, total) after each chunk.
      sink_name: How errors name ``sink`` (default ``the output``).

    Returns:
      The MD5 hex of what was read.

    Raises:
      StoreIntegrityError: An object is missing, or its size differs from the manifest's.
      StoreError: The store failed reading an object (the message names it).
      OutputError: Writing to ``sink`` failed.
      ChecksumMismatch: The bytes do not hash to the manifest's MD5.
    """
    digest = hashlib.md5()
    done = 0
    for obj in manifest.objects:
        read = 0
        with contextlib.closing(_read_object(client, bucket, obj)) as chunks:
            for chunk in chunks:
                read += len(chunk)
                if read > obj.size:  # checked before the bytes go anywhere
                    raise StoreIntegrityError(
                        f"{obj.key}: stored more than the {obj.size} bytes the manifest says"
                    )
                digest.update(chunk)
                if sink is not None:
                    _write_all(sink, chunk, sink_name)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, manifest.size)
        if read != obj.size:
            raise StoreIntegrityError(
                f"{obj.key}: stored {read} bytes, the manifest says {obj.size}"
            )
    actual = digest.hexdigest()
    if actual != manifest.md5 or done != manifest.size:
        raise ChecksumMismatch(manifest.md5, actual)
    return actual


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


def _read_object(client: Any, bucket: str, obj: ArchivedObject) -> Generator[bytes]:
    """Yield the bytes of ``obj``; every failure of the store becomes one error naming it."""
    try:
        answer = client.get_object(Bucket=bucket, Key=obj.key)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "404") or status == 404:
            raise StoreIntegrityError(
                f"{obj.key}: missing from the store, though the manifest lists it"
            ) from None
        message = f"HTTP {status} {code} {error.get('Message', '')}".rstrip()
        raise StoreError(f"S3 GetObject {obj.key} failed: {message}") from None
    except BotoCoreError as exc:
        raise StoreError(f"S3 GetObject {obj.key} failed: {exc}") from None
    body = answer["Body"]
    try:
        stated = answer.get("ContentLength")
        if isinstance(stated, int) and stated != obj.size:
            raise StoreIntegrityError(
                f"{obj.key}: stored {stated} bytes, the manifest says {obj.size}"
            )
        try:
            yield from body.iter_chunks(CHUNK)
        except (BotoCoreError, OSError) as exc:
            raise StoreError(f"S3 GetObject {obj.key} failed while reading: {exc}") from None
    finally:
        body.close()


def restore_to_file(
    client: Any,
    bucket: str,
    manifest: Manifest,
    destination: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> str:
    """Write the verified image to ``destination`` (atomically); return its MD5.

    The image goes to ``.{name}.partial`` beside ``destination`` first, created before any
    object is read, with ``O_EXCL|O_NOFOLLOW`` and mode 0600; it is renamed over
    ``destination`` once verified, and removed if anything fails.

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
            with os.fdopen(fd, "wb") as sink:
                md5 = stream_archive(client, bucket, manifest, sink, on_progress, str(partial))
                sink.flush()
                os.fsync(sink.fileno())
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
