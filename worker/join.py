"""Joining an archive's segments into one object, server-side: what a restore as a template
registers from when the image was stored in segments (Exoscale reads one URL).

UploadPartCopy copies byte ranges of the segments into the parts of one multipart upload:
nothing is downloaded. :func:`plan_join` cuts the image into copy parts (at most 10,000, each
within one segment, 5 MiB to 5 GiB) and refuses, before anything is copied, an image bigger
than the store's largest object (``SNAPARCHIVE_OBJECT_LIMIT``). :class:`Join` runs the copies
a few at a time and records each finished part in a :class:`JoinState`, so a join stopped
half-way (a slice over, a worker gone) goes on from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from worker.errors import SnaparchiveError, StoreIntegrityError
from worker.manifest import ArchivedObject
from worker.parts import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from worker.s3 import Bucket
from worker.s3client import unquote
from worker.units import MiB, format_size


class JoinRefused(SnaparchiveError):
    """The segments cannot be joined into one object of this store (too big, or cut in pieces
    S3 cannot copy): refused before anything is copied or registered."""


@dataclass(frozen=True)
class CopyPart:
    """Part ``number`` (from 1) of the joined object: bytes ``start`` to ``end`` (exclusive)
    of the segment ``key``."""

    number: int
    key: str
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_join(objects: Sequence[ArchivedObject], object_limit: int) -> list[CopyPart]:
    """Cut the concatenation of ``objects`` into copy parts.

    Parts are as even as S3 allows: the smallest multiple of 1 MiB (at least 5 MiB) that keeps
    the image within 10,000 parts; a segment's short tail joins the part before it.

    Raises:
      JoinRefused: The image is bigger than ``object_limit`` (the store's largest object), or
        a segment other than the last is smaller than S3's 5 MiB part minimum.
    """
    total = sum(obj.size for obj in objects)
    if total > object_limit:
        raise JoinRefused(
            f"the archive is {format_size(total)} in {len(objects)} segments: one object of the "
            f"store holds at most {format_size(object_limit)} (SNAPARCHIVE_OBJECT_LIMIT), so it "
            "cannot be joined for a registration; restore it to a file instead (--output)"
        )
    size = max(MIN_PART_SIZE, -(-total // MAX_PARTS // MiB) * MiB)
    parts: list[CopyPart] = []
    for index, obj in enumerate(objects):
        last_object = index == len(objects) - 1
        if obj.size < MIN_PART_SIZE and not last_object:
            raise JoinRefused(
                f"segment {obj.key} is {format_size(obj.size)}, below S3's 5 MiB part minimum: "
                "it cannot be copied into a joined object; restore it to a file instead"
            )
        start = 0
        while start < obj.size:
            end = min(obj.size, start + size)
            if obj.size - end < MIN_PART_SIZE and not last_object:
                end = obj.size  # a short tail would be a short part in the middle
            parts.append(CopyPart(len(parts) + 1, obj.key, start, end))
            start = end
    if len(parts) > MAX_PARTS or any(part.size > MAX_PART_SIZE for part in parts):
        raise JoinRefused(f"the archive's segments cannot be cut into {MAX_PARTS} copy parts")
    return parts


@dataclass
class JoinState:
    """How far a join is: the temporary object's ``key``, its multipart ``upload_id`` (once
    started), the ETag of each part copied, and whether the object is ``completed``."""

    key: str
    upload_id: str | None = None
    etags: dict[int, str] = field(default_factory=dict)
    completed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "upload_id": self.upload_id,
            "etags": {str(number): etag for number, etag in self.etags.items()},
            "completed": self.completed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JoinState:
        """Read :meth:`to_dict` output (raises ValueError when it is not one)."""
        try:
            key, upload_id = data["key"], data.get("upload_id")
            etags = {int(number): str(etag) for number, etag in dict(data["etags"]).items()}
            completed = data.get("completed") is True
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("not a join state") from None
        if not isinstance(key, str) or not (upload_id is None or isinstance(upload_id, str)):
            raise ValueError("not a join state")
        return cls(key, upload_id, etags, completed)


class Join:
    """Copies the parts of ``plan`` into ``state.key``, ``concurrency`` at a time.

    Parameters:
      bucket: The store (source segments and joined object are in its bucket).
      plan: :func:`plan_join`'s parts.
      state: Where the join stands; updated as parts finish.
      on_progress: Awaited with the state after each part copied (to save it).
      stop: When set, no further part starts; :meth:`run` returns ``False``.
      concurrency: Copies at once (default 4).
    """

    def __init__(
        self,
        bucket: Bucket,
        plan: Sequence[CopyPart],
        state: JoinState,
        on_progress: Callable[[JoinState], Awaitable[None]],
        stop: asyncio.Event,
        concurrency: int = 4,
    ) -> None:
        self.bucket, self.plan, self.state = bucket, list(plan), state
        self.on_progress, self.stop, self.concurrency = on_progress, stop, max(1, concurrency)

    @property
    def copied(self) -> int:
        """Bytes of the image copied so far."""
        return sum(part.size for part in self.plan if part.number in self.state.etags)

    async def run(self) -> bool:
        """Copy what is left and complete the object; return whether it is complete
        (``False``: stopped by ``stop``, the state saved for the next run).

        Raises:
          StoreError: The store refused or failed (after its retries).
          StoreIntegrityError: The joined object is not the size of the image.
        """
        if self.state.completed:
            return True
        if self.state.upload_id is None:
            self.state.upload_id = await self.bucket.create_upload(self.state.key, {})
            await self.on_progress(self.state)
        todo = iter([part for part in self.plan if part.number not in self.state.etags])
        saving = asyncio.Lock()

        async def copier() -> None:
            for part in todo:  # one iterator shared by every copier
                if self.stop.is_set():
                    return
                etag = await self._copy(part)
                async with saving:
                    self.state.etags[part.number] = etag
                    await self.on_progress(self.state)

        await asyncio.gather(*(copier() for _ in range(self.concurrency)))
        if len(self.state.etags) < len(self.plan):
            return False
        assert self.state.upload_id is not None
        etags = [self.state.etags[part.number] for part in self.plan]
        await self.bucket.complete_upload(self.state.key, self.state.upload_id, etags)
        stored = await self.bucket.stat(self.state.key)
        expected = sum(part.size for part in self.plan)
        if stored is None or stored.size != expected:
            raise StoreIntegrityError(
                f"{self.state.key}: the joined object holds "
                f"{'nothing' if stored is None else stored.size} bytes, not {expected}"
            )
        self.state.completed = True
        await self.on_progress(self.state)
        return True

    async def _copy(self, part: CopyPart) -> str:
        what = f"UploadPartCopy {part.number} from {part.key}"
        try:
            answer = await self.bucket.call(
                what,
                self.bucket.client.upload_part_copy,
                Bucket=self.bucket.bucket,
                Key=self.state.key,
                UploadId=self.state.upload_id,
                PartNumber=part.number,
                CopySource={"Bucket": self.bucket.bucket, "Key": part.key},
                CopySourceRange=f"bytes={part.start}-{part.end - 1}",
            )
        except ClientError as exc:
            raise self.bucket.error(what, exc) from None
        return unquote(answer["CopyPartResult"]["ETag"])


async def drop_join(bucket: Bucket, state: JoinState) -> None:
    """Abort the join's upload and delete its object: nothing of it is left (absent is fine)."""
    if state.upload_id is not None and not state.completed:
        await bucket.abort_upload(state.key, state.upload_id)
    await bucket.delete_object(state.key)
