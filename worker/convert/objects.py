"""The archived image read at any offset: ranged GETs of the archive's objects.

:class:`ArchiveObjects` is the :class:`~worker.qcow2.reader.RangeSource` a conversion reads
the qcow2 file through: the concatenation of the objects a manifest lists, each GET pinned to
the object the manifest names with ``If-Match`` on its ETag, so bytes of an object replaced
since it was archived are never mixed in (a 412 is a :class:`StoreIntegrityError`). It is
called from the conversion's reader threads (boto3 clients are thread-safe).
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from worker.errors import StoreError, StoreIntegrityError
from worker.manifest import ArchivedObject, Manifest
from worker.s3client import error_code

#: Tries of one ranged GET whose body came short (the S3 client retries the rest itself).
SHORT_READ_TRIES = 3


class ArchiveObjects:
    """The image of ``manifest`` in ``bucket``, read through ``client`` (boto3, sync).

    Attributes:
      size: The image's size (the manifest's).
      requests, received: GETs sent and body bytes received (for benchmarks).
    """

    def __init__(self, client: Any, bucket: str, manifest: Manifest) -> None:
        self.client = client
        self.bucket = bucket
        self.objects = manifest.objects
        self.size = manifest.size
        self.requests = 0
        self.received = 0
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset`` (fewer only past the end of the image).

        Raises:
          StoreIntegrityError: An object is gone, changed since it was archived, or shorter.
          StoreError: The store failed.
        """
        end = min(offset + length, self.size)
        pieces: list[bytes] = []
        for obj in self.objects:
            low, high = max(offset, obj.offset), min(end, obj.offset + obj.size)
            if low < high:
                pieces.append(self._get(obj, low - obj.offset, high - obj.offset))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _get(self, obj: ArchivedObject, start: int, end: int) -> bytes:
        for _ in range(SHORT_READ_TRIES):
            with self._lock:
                self.requests += 1
            try:
                answer = self.client.get_object(
                    Bucket=self.bucket,
                    Key=obj.key,
                    Range=f"bytes={start}-{end - 1}",
                    IfMatch=f'"{obj.etag}"',
                )
                body = answer["Body"]
                try:
                    data = body.read()
                finally:
                    body.close()
            except ClientError as exc:
                code, status = error_code(exc)
                if status == 412 or code == "PreconditionFailed":
                    raise StoreIntegrityError(
                        f"{obj.key}: changed since it was archived (its ETag is not {obj.etag})"
                    ) from None
                if status == 404 or code in ("NoSuchKey", "404"):
                    raise StoreIntegrityError(
                        f"{obj.key}: missing from the store, though the manifest lists it"
                    ) from None
                raise StoreError(f"S3 GetObject {obj.key} failed: HTTP {status} {code}") from None
            except (BotoCoreError, OSError) as exc:
                raise StoreError(
                    f"S3 GetObject {obj.key} failed: {type(exc).__name__}"
                ) from None
            with self._lock:
                self.received += len(data)
            if len(data) == end - start:
                return data
        raise StoreError(f"S3 GetObject {obj.key}: bytes {start}-{end - 1} keep coming short")
