"""Reading an archive back: stream its objects in order, verify the MD5, write the image.

A restore never leaves a wrong file where the caller asked for one: bytes go to a
temporary file beside the destination, renamed into place only after the whole image
hashed to the manifest's MD5 and had the manifest's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from worker.archive import Manifest
from worker.errors import ChecksumMismatch, StoreIntegrityError

CHUNK = 8 << 20


def stream_archive(
    client: Any,
    bucket: str,
    manifest: Manifest,
    sink: BinaryIO | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> str:
    """Read every object of ``manifest`` in order, hash it, and write it to ``sink``.

    Parameters:
      client: A boto3 S3 client.
      bucket: The archive's bucket.
      manifest: The archive's manifest.
      sink: Where the image bytes go (``None``: verify only).
      on_progress: Called with (bytes read, total) after each chunk.

    Returns:
      The MD5 hex of what was read.

    Raises:
      StoreIntegrityError: An object's size differs from the manifest's.
      ChecksumMismatch: The bytes do not hash to the manifest's MD5.
    """
    digest = hashlib.md5()
    done = 0
    for obj in manifest.objects:
        body = client.get_object(Bucket=bucket, Key=obj.key)["Body"]
        read = 0
        for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
            read += len(chunk)
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


def restore_to_file(
    client: Any,
    bucket: str,
    manifest: Manifest,
    destination: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> str:
    """Write the verified image to ``destination`` (atomically); return its MD5."""
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        with partial.open("wb") as sink:
            md5 = stream_archive(client, bucket, manifest, sink, on_progress)
            sink.flush()
            os.fsync(sink.fileno())
        partial.replace(destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return md5
