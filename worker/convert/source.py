"""The conversion as a transfer: :class:`ConversionSource` for the engine of
:mod:`worker.transfer`, and :class:`ConversionStream`, the open-ended byte stream that carries
the producer thread's zstd output (:mod:`.stream`) into the engine's part buffers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import aiohttp

import worker
from worker.archive import ArchiveStore
from worker.convert.manifest import (
    RawImage,
    RawSource,
    put_raw_image,
    raw_image_key,
    raw_manifest_key,
)
from worker.convert.stream import FRAME_SIZE, RawZstdProducer, Resume, zstd_bound
from worker.download import DownloadRetry
from worker.errors import TransferError
from worker.manifest import ArchivedObject, ArchiveId, Manifest
from worker.parts import MAX_PARTS, PartPlan, part_size_for
from worker.qcow2.reader import Qcow2Reader
from worker.settings import TransferSettings
from worker.transfer.checkpoint import Checkpoint
from worker.transfer.source import ByteStream, Scope
from worker.units import MiB

log = logging.getLogger(__name__)
#: Compressed chunks queued between the producer thread and the engine.
QUEUED_CHUNKS = 8
#: The largest object S3 stores: ``image.raw.zst`` must be one.
MAX_OBJECT = 5 << 40
_END = object()


class _Halt(Exception):
    """Internal: the stream was closed; the producer thread unwinds."""


class ConversionStream:
    """The producer's compressed bytes, read in order by the engine (an
    :class:`~worker.transfer.source.OpenEnded` :class:`~worker.transfer.source.ByteStream`).

    Parameters:
      reader: The qcow2 image.
      part_size: The transfer's part size.
      resume: Where to start (``None``: at the beginning).
      threads: zstd threads (0: one per CPU).
      on_progress: Called with (raw bytes done, raw size) as the engine reads.
    """

    validator: str | None = None

    def __init__(
        self,
        reader: Qcow2Reader,
        part_size: int,
        resume: Resume | None,
        threads: int,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(QUEUED_CHUNKS)
        self._halt = threading.Event()
        self.producer = RawZstdProducer(
            reader, part_size, self._put, resume=resume, threads=threads, stop=self._halt
        )
        self._on_progress = on_progress
        self._thread: threading.Thread | None = None
        self._pending = memoryview(b"")
        self._ended = False

    async def open(self) -> int:
        self._thread = threading.Thread(target=self._run, name="raw-zstd", daemon=True)
        self._thread.start()
        return zstd_bound(self.producer.raw_size)

    def _run(self) -> None:
        try:
            self.producer.run()
            item: object = _END
        except _Halt:
            return
        except BaseException as error:  # handed to the engine, which decides
            item = error
        with contextlib.suppress(_Halt):
            self._put(item)

    def _put(self, item: object) -> None:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.25)
                return
            except queue.Full:
                continue
        raise _Halt

    async def _get(self) -> object:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return await asyncio.to_thread(self._queue.get)

    async def readinto(self, view: memoryview) -> int:
        filled = 0
        while filled < len(view):
            if not self._pending:
                if self._ended:
                    break
                item = await self._get()
                if item is _END:
                    self._ended = True
                    break
                if isinstance(item, BaseException):
                    self._ended = True
                    raise item
                assert isinstance(item, bytes)
                self._pending = memoryview(item)
            take = min(len(self._pending), len(view) - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        if self._on_progress is not None:
            self._on_progress(self.producer.raw_done, self.producer.raw_size)
        return filled

    async def close(self) -> None:
        self._halt.set()
        while True:  # a producer blocked on a full queue sees the halt at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        # Nobody fills the queue any more: wake a reader that is still waiting.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_END)

    def resume_state(self, offset: int) -> dict[str, Any] | None:
        return self.producer.state_at(offset)


def conversion_scope(store: ArchiveStore, archive: ArchiveId) -> Scope:
    """Where a conversion's upload and object are (``image.raw.zst``) and what commits it."""
    key = raw_image_key(store, archive)
    return Scope(
        uploads=key,
        manifest=raw_manifest_key(store, archive),
        objects=lambda found: found == key,
    )


class ConversionSource:
    """An archived qcow2 image converted to ``image.raw.zst`` beside it (a
    :class:`~worker.transfer.source.TransferSource`).

    Parameters:
      manifest: The archive's manifest (its MD5 pins the conversion's checkpoint).
      manifest_key: Where it is.
      reader: The image, opened (and so checked) before anything is uploaded.
      threads: zstd threads (0: one per CPU).
      on_progress: Called with (raw bytes done, raw size).
    """

    def __init__(
        self,
        manifest: Manifest,
        manifest_key: str,
        reader: Qcow2Reader,
        *,
        threads: int = 0,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.manifest = manifest
        self.manifest_key = manifest_key
        self.reader = reader
        self.threads = threads
        self.on_progress = on_progress
        #: The raw manifest once :meth:`write_manifest` wrote it.
        self.written: RawImage | None = None

    @property
    def archive(self) -> ArchiveId:
        return ArchiveId(self.manifest.provider, self.manifest.zone, self.manifest.snapshot_id)

    @property
    def expected_md5(self) -> str:
        return self.manifest.md5

    def scope(self, store: ArchiveStore) -> Scope:
        return conversion_scope(store, self.archive)

    def plan(self, total: int, settings: TransferSettings) -> PartPlan:
        """One object (a URL names one): parts of the configured size, larger where 10,000
        of them would not hold ``total``.

        Raises:
          TransferError: ``total`` may exceed the largest object S3 stores.
        """
        if total > MAX_OBJECT:
            raise TransferError(
                f"the raw image may need {total} bytes compressed: more than one object holds"
            )
        part_size = max(part_size_for(settings), -(-total // MAX_PARTS // MiB) * MiB)
        return PartPlan(total, part_size, -(-total // part_size) * part_size)

    def object_key(self, store: ArchiveStore, segment: int, segments: int) -> str:
        if segments != 1:
            raise TransferError("a raw image is one object")
        return raw_image_key(store, self.archive)

    def object_metadata(self, plan: PartPlan, segment: int) -> dict[str, str]:
        return {
            "source-md5": self.manifest.md5,
            "provider": self.manifest.provider,
            "zone": self.manifest.zone,
            "snapshot-id": self.manifest.snapshot_id,
            "content": "raw+zstd",
            "raw-size": str(self.reader.virtual_size),
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
        if checkpoint is not None:
            part_size = checkpoint.plan.part_size
        else:
            part_size = self.plan(zstd_bound(self.reader.virtual_size), settings).part_size
        resume = None
        if offset:
            assert checkpoint is not None
            resume = Resume.from_state(checkpoint.source_state, offset)
            log.info("%s: the conversion resumes at raw byte %d", self.archive, resume.raw)
        return ConversionStream(self.reader, part_size, resume, self.threads, self.on_progress)

    def _end_state(self, checkpoint: Checkpoint) -> dict[str, Any]:
        state = checkpoint.source_state or {}
        if not state.get("end") or state.get("raw_size") != self.reader.virtual_size:
            raise TransferError("the conversion ended without its raw size and MD5")
        return state

    def verify(self, md5: str, checkpoint: Checkpoint) -> None:
        """The raw disk was made to its virtual end and every frame decompressed back to it
        (the producer checked both); the object's MD5 is recorded, not compared."""
        self._end_state(checkpoint)

    async def write_manifest(
        self, store: ArchiveStore, md5: str, objects: list[ArchivedObject], checkpoint: Checkpoint
    ) -> str:
        state = self._end_state(checkpoint)
        (item,) = objects
        image = RawImage(
            provider=self.manifest.provider,
            zone=self.manifest.zone,
            snapshot_id=self.manifest.snapshot_id,
            source=RawSource(self.manifest_key, self.manifest.md5, self.manifest.size),
            raw_size=state["raw_size"],
            raw_md5=state["raw_md5"],
            zstd_key=item.key,
            zstd_size=item.size,
            zstd_md5=md5,
            zstd_etag=item.etag,
            frame_size=FRAME_SIZE,
            tool_version=worker.__version__,
            converted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        key = await put_raw_image(store, image)
        self.written = image
        return key
