"""Reading archived objects back, fast and in order: ranged GETs, several at a time.

:class:`RangedReader` cuts a list of objects (an archive's image objects, in order) into
ranges of ``chunk_size`` bytes and keeps ``concurrency`` of them in flight, each a GetObject
with a ``Range`` header on the bucket's thread pool; it yields their bytes strictly in order.
Memory stays bounded at about ``(concurrency + 1) * chunk_size`` whatever the image size.

Each range is retried on its own: botocore retries a request that got no answer or a 5xx (the
S3 client's 8 attempts), and this reader a range whose body broke off or came short. A fault
costs one range, not the object. What cannot be read becomes one error naming the object,
never botocore's text (it holds the endpoint URL and request details): a missing object is a
:class:`MissingObject`, a refusal (403, a bucket that is gone) a
:class:`~worker.errors.StoreError` with the HTTP status and error code.

:func:`check_objects` is the cheap look before a restore: HEAD every object, with its size.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from worker.errors import StoreError, StoreIntegrityError
from worker.manifest import ArchivedObject
from worker.retry import RetryPolicy
from worker.s3 import Bucket
from worker.s3client import error_code
from worker.units import MiB

logger = logging.getLogger(__name__)

#: Bytes per ranged GET.
CHUNK_SIZE = 16 * MiB
#: Ranged GETs in flight.
CONCURRENCY = 4
#: Tries of one range whose body broke off or came short (botocore retries a request that got
#: no answer, or a 5xx, by itself), with backoff.
RANGE_RETRY = RetryPolicy(attempts=6, base=0.5, cap=10.0)


class MissingObject(StoreIntegrityError):
    """An object the manifest lists is not in the store.

    No bytes failed a check: the archive is broken, but a restore's exit status is 1
    (as for a store that cannot be read), not the 3 of a verification that failed.
    """

    verification = False

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: missing from the store, though the manifest lists it")
        self.key = key


class _ShortRange(Exception):
    """A range came back with fewer bytes than asked for (a connection cut mid-body)."""


@dataclass(frozen=True)
class Range:
    """Bytes ``start`` to ``end`` (exclusive) of object ``obj``."""

    obj: ArchivedObject
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def ranges(objects: Sequence[ArchivedObject], chunk_size: int) -> list[Range]:
    """Cut ``objects`` into ranges of at most ``chunk_size`` bytes, in order."""
    cut = []
    for obj in objects:
        for start in range(0, obj.size, chunk_size):
            cut.append(Range(obj, start, min(obj.size, start + chunk_size)))
    return cut


def _what(key: str) -> str:
    return f"GetObject {key}"


class RangedReader:
    """The bytes of ``objects`` concatenated, read by ranged GETs ``concurrency`` at a time.

    Parameters:
      bucket: Where the objects are (its thread pool runs the GETs: give it at least
        ``concurrency`` workers).
      objects: The objects, in order, with their sizes.
      chunk_size: Bytes per GET (default :data:`CHUNK_SIZE`).
      concurrency: GETs in flight (default :data:`CONCURRENCY`).
      retry: Tries of one range (default :data:`RANGE_RETRY`).
    """

    def __init__(
        self,
        bucket: Bucket,
        objects: Sequence[ArchivedObject],
        *,
        chunk_size: int = CHUNK_SIZE,
        concurrency: int = CONCURRENCY,
        retry: RetryPolicy = RANGE_RETRY,
    ) -> None:
        if chunk_size < 1 or concurrency < 1:
            raise ValueError("chunk_size and concurrency must be positive")
        self.bucket = bucket
        self.objects = list(objects)
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        self.retry = retry
        #: Ranges tried again after a fault, in all.
        self.retried = 0

    @property
    def size(self) -> int:
        return sum(obj.size for obj in self.objects)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the bytes in order, one range at a time.

        Raises:
          MissingObject: An object is not in the store.
          StoreIntegrityError: The store answers another length than the range's.
          StoreError: The store refused (naming the object, the status and the code), or a
            range still failed after every try.
        """
        todo = iter(ranges(self.objects, self.chunk_size))
        flight: deque[asyncio.Task[bytes]] = deque()
        try:
            for piece in todo:
                flight.append(asyncio.ensure_future(self.read(piece)))
                if len(flight) >= self.concurrency:
                    break
            while flight:
                data = await flight.popleft()
                following = next(todo, None)
                if following is not None:
                    flight.append(asyncio.ensure_future(self.read(following)))
                yield data
        finally:
            for task in flight:
                task.cancel()
            await asyncio.gather(*flight, return_exceptions=True)

    async def read(self, piece: Range) -> bytes:
        """Return the bytes of one range, trying it again when its body broke off or came
        short (see :meth:`chunks` for what it raises)."""
        failures = 0
        while True:
            try:
                return await self.bucket.call(
                    _what(piece.obj.key),
                    _get_range,
                    client=self.bucket.client,
                    bucket=self.bucket.bucket,
                    piece=piece,
                )
            except ClientError as exc:
                # An answer, after botocore's own retries of 5xx and SlowDown: final.
                code, status = error_code(exc)
                if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                    raise MissingObject(piece.obj.key) from None
                raise self.bucket.error(_what(piece.obj.key), exc) from None
            except _ShortRange as exc:
                failure = StoreError(f"S3 {_what(piece.obj.key)} failed: {exc}")
            except StoreError as exc:  # no answer, or the connection broke mid-body
                failure = exc
            failures += 1
            if failures >= self.retry.attempts:
                raise failure
            self.retried += 1
            pause = self.retry.delay(failures)
            logger.info(
                "%s bytes %d-%d: %s; trying again in %.1fs",
                piece.obj.key,
                piece.start,
                piece.end - 1,
                failure,
                pause,
            )
            await asyncio.sleep(pause)


def _get_range(client: Any, bucket: str, piece: Range) -> bytes:
    """One ranged GetObject, read to its end (in a pool thread)."""
    answer = client.get_object(
        Bucket=bucket, Key=piece.obj.key, Range=f"bytes={piece.start}-{piece.end - 1}"
    )
    body = answer["Body"]
    try:
        stated = answer.get("ContentLength")
        if isinstance(stated, int) and stated != piece.size:
            # A store that ignored the Range (and sends the whole object), or an object of
            # another size than the manifest's: never read more than was asked for.
            raise StoreIntegrityError(
                f"{piece.obj.key}: the store answered {stated} bytes for a range of "
                f"{piece.size} (bytes {piece.start}-{piece.end - 1})"
            )
        data = body.read()
    finally:
        body.close()
    if len(data) != piece.size:
        raise _ShortRange(f"{len(data)} of {piece.size} bytes at {piece.start}")
    return data


async def check_objects(bucket: Bucket, objects: Sequence[ArchivedObject]) -> None:
    """HEAD every object: each must be there with the manifest's size.

    Raises:
      MissingObject: An object is not there.
      StoreIntegrityError: An object has another size.
      StoreError: The store refused or failed (naming the object).
    """
    for obj in objects:
        what = f"HeadObject {obj.key}"
        try:
            answer = await bucket.call(
                what, bucket.client.head_object, Bucket=bucket.bucket, Key=obj.key
            )
        except ClientError as exc:
            code, status = error_code(exc)
            if status == 404 and code != "NoSuchBucket":
                raise MissingObject(obj.key) from None
            raise bucket.error(what, exc) from None
        stored = int(answer["ContentLength"])
        if stored != obj.size:
            raise StoreIntegrityError(
                f"{obj.key}: stored {stored} bytes, the manifest says {obj.size}"
            )
