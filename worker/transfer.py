"""The transfer engine: export URL → MD5 while streaming → S3 multipart → verified archive.

One pass over the image, memory bounded by the part buffers (:mod:`worker.parts`):

1. The download (:mod:`worker.download`) fills a free part buffer straight from the socket.
   A buffer is free again once the checkpoint has passed its part, so the download is never
   more than the buffers ahead of the saved checkpoint: what a resume after a crash reads
   again, even when one slow part holds up the checkpoint while later ones are stored.
2. The full buffer goes to two places at once: the whole-image MD5 chain (one
   thread, strictly in order: :mod:`worker.md5state`) and UploadPart (the store's
   thread pool, several parts at a time). Meanwhile the next buffer fills.
3. Per-part integrity: a second thread computes the part's own MD5 while it uploads and
   compares it with the ETag the store returns (the part's MD5 on AWS without KMS/SSE-C,
   SOS, MinIO, Ceph and moto); a part the store received wrongly is sent again, then
   refused with :class:`~worker.errors.StoreIntegrityError`. It switches itself off
   where ETags are not MD5s. Why this and not a cheaper check, by measurement (2 vCPU dev
   box, 1 GiB from a local sendfile server into a null S3 sink, medians of 3, noisy):
   without the check ~420 MB/s, with it ~300 MB/s; botocore's default of SHA256-signing
   every part (what happens without a checksum header, even over https) also cost ~300.
   So payload signing is off (:mod:`worker.archive`) and the part MD5 takes its place at
   the same price: unlike a CRC32C/CRC64NVME header it does not depend on the store
   verifying checksums (moto and possibly SOS do not), and it makes the multipart ETag
   check at Complete a check of our own bytes. With more than two cores it runs on an
   otherwise idle one.
4. When a part and every part before it are stored and hashed, ``on_checkpoint``
   gets a :class:`Checkpoint` (upload ids, per segment the count and a digest of its
   parts' ETags, the offset, the MD5 state there). It stays small for 50 TiB.
5. After the last byte: the MD5 must equal the published ``md5sum``, ListParts must
   match the parts sent (numbers, sizes, ETag digest); then each object is completed
   (``If-None-Match: *``), its ETag checked against the multipart ETag computed from the
   parts' MD5s, and the manifest written last. The manifest is the commit point.

Any error aborts every multipart upload of the archive (nothing half-made stays,
nothing unverified becomes visible) and is raised as is: transient faults were
already retried below (download resume, URL refresh, botocore retries). A set
``stop`` event instead ends the transfer at a part boundary with the uploads open and
raises :class:`TransferStopped`; an asyncio cancellation leaves them open too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import aiohttp

import worker
from worker.archive import ArchivedObject, ArchiveResult, ArchiveStore, Manifest
from worker.download import Download, DownloadRetry, check_download_url
from worker.errors import (
    ArchiveExists,
    ChecksumMismatch,
    StoreIntegrityError,
    TransferError,
)
from worker.md5state import Md5, new_md5
from worker.parts import Part, PartPlan, SegmentSpan, buffer_count, plan_parts
from worker.settings import TransferSettings

__all__ = [
    "ArchiveResult",
    "ArchivedObject",
    "Checkpoint",
    "ExportSource",
    "TransferStopped",
    "archive_export",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
CHECKPOINT_FORMAT = 1
#: A part the store received wrongly (ETag != our MD5) is sent this many times more.
PART_RESENDS = 2


@dataclass(frozen=True)
class ExportSource:
    """What is being archived. No credentials inside except the URL itself.

    Parameters:
      provider, zone, snapshot_id, snapshot_name, instance_id, created_at: The snapshot.
      md5: The export's published md5sum (hex).
      url: The current presigned URL: a credential, never logged, stored or put in metadata.
      refresh_url: Coroutine function returning a fresh presigned URL.
    """

    provider: str
    zone: str
    snapshot_id: str
    snapshot_name: str
    instance_id: str | None
    created_at: str | None
    md5: str
    url: str = field(repr=False)
    refresh_url: Callable[[], Awaitable[str]] = field(repr=False)


def etags_digest(etags: list[str]) -> str:
    """Return the hex MD5 of ``etags`` one per line: a fixed-size fingerprint of a part list."""
    digest = hashlib.md5()
    for etag in etags:
        digest.update(f"{etag}\n".encode())
    return digest.hexdigest()


@dataclass
class SegmentUpload:
    """The multipart upload of one segment, as far as it is stored in order.

    Parameters:
      key: The object key.
      upload_id: The multipart upload id.
      parts: Parts 1..``parts`` are stored and hashed.
      etags_md5: :func:`etags_digest` of their ETags (checked against ListParts on resume
        and before Complete; a list of 10,000 ETags per segment would bloat checkpoints).
    """

    key: str
    upload_id: str
    parts: int = 0
    etags_md5: str = field(default_factory=lambda: etags_digest([]))


@dataclass
class Checkpoint:
    """Where a transfer stands at a part boundary; JSON-serialisable via :meth:`to_dict`.

    Parameters:
      plan: The segment and part layout (kept, so a resume cuts the image the same way).
      md5: The published md5 the transfer verifies against (a re-export changes it).
      offset: Bytes stored and hashed, from the start: the resume point.
      md5_state: The MD5 chain's state at ``offset`` (:meth:`ResumableMd5.export`), or
        ``None`` where it cannot be exported (the resume then re-hashes the prefix).
      segments: The multipart upload of each segment started so far, by segment index.
      validator: The download's ETag or Last-Modified, to pin ``If-Range`` on resume.
    """

    plan: PartPlan
    md5: str
    offset: int = 0
    md5_state: str | None = None
    segments: dict[int, SegmentUpload] = field(default_factory=dict)
    validator: str | None = None

    @property
    def parts_done(self) -> int:
        """Parts stored and hashed in order from the first (the index of the next one)."""
        return -(-self.offset // self.plan.part_size)

    def open_uploads(self) -> list[tuple[str, str]]:
        """Return ``(key, upload_id)`` of every upload the transfer started."""
        return [(s.key, s.upload_id) for _, s in sorted(self.segments.items())]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "plan": self.plan.to_dict(),
            "md5": self.md5,
            "offset": self.offset,
            "md5_state": self.md5_state,
            "segments": {str(i): asdict(upload) for i, upload in self.segments.items()},
            "validator": self.validator,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        """Rebuild a checkpoint from :meth:`to_dict` output.

        Raises:
          ValueError: When ``data`` is not a checkpoint of a known format.
        """
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a transfer checkpoint of a known format")
        try:
            return cls(
                plan=PartPlan.from_dict(data["plan"]),
                md5=str(data["md5"]),
                offset=int(data["offset"]),
                md5_state=data.get("md5_state"),
                segments={
                    int(i): SegmentUpload(
                        str(item["key"]),
                        str(item["upload_id"]),
                        int(item["parts"]),
                        str(item["etags_md5"]),
                    )
                    for i, item in data["segments"].items()
                },
                validator=data.get("validator"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed transfer checkpoint: {exc}") from None


class TransferStopped(TransferError):
    """The ``stop`` event ended the transfer at a part boundary; resume from :attr:`checkpoint`.

    The uploads of :attr:`checkpoint` stay open. It is ``None`` when no part was stored
    yet (then nothing stays open).
    """

    permanent = False

    def __init__(self, checkpoint: Checkpoint | None) -> None:
        done = checkpoint.offset if checkpoint else 0
        super().__init__(f"transfer stopped at byte {done}; it resumes from there")
        self.checkpoint = checkpoint


def multipart_etag(part_md5s: list[str]) -> str:
    """Return the ETag S3 gives a multipart object whose parts have these hex MD5s."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f"{hashlib.md5(joined).hexdigest()}-{len(part_md5s)}"


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
      on_checkpoint: Awaited after each part that extends the stored prefix.
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
    transfer = _Transfer(source, store, settings, on_checkpoint, on_progress, stop)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    # The transfer moves its own copy: the caller's checkpoint stays as it was saved.
    saved = Checkpoint.from_dict(checkpoint.to_dict()) if checkpoint else None
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        return await transfer.run(session, saved, retry or DownloadRetry())


class _Stopped(Exception):
    """Internal: ``stop`` was set while waiting."""


class _Transfer:
    """The state of one :func:`archive_export` call."""

    def __init__(
        self,
        source: ExportSource,
        store: ArchiveStore,
        settings: TransferSettings,
        on_checkpoint: Callable[[Checkpoint], Awaitable[None]] | None,
        on_progress: Callable[[int, int], None] | None,
        stop: asyncio.Event | None,
    ) -> None:
        self.source = source
        self.store = store
        self.settings = settings
        self.on_checkpoint = on_checkpoint
        self.on_progress = on_progress
        self.stop = stop or asyncio.Event()
        self.expected_md5 = source.md5.strip().lower()
        self.name = f"{source.zone}/{source.snapshot_id}"
        self.checkpoint: Checkpoint | None = None
        # Parts below this offset are stored and checkpointed: they are only re-hashed.
        self.rehash_until = 0
        # Parts of a resumed upload found beyond its checkpoint: index -> ETag, unverified.
        self.found: dict[int, str] = {}
        # Parts done out of order, waiting for the ones before them: index -> ETag, state.
        self.etags: dict[int, str] = {}
        self.states: dict[int, str | None] = {}
        # Part buffers: free ones, and the ones of parts done but not yet checkpointed.
        self.buffers: asyncio.Queue[bytearray] = asyncio.Queue()
        self.held: dict[int, bytearray] = {}
        # Running etags_digest of each segment's in-order parts.
        self.etag_hashes: dict[int, Any] = {}
        self.check_parts = True
        self.failed = asyncio.Event()
        self.errors: list[BaseException] = []
        self.checkpoint_lock = asyncio.Lock()
        self.upload_lock = asyncio.Lock()
        # One thread keeps the MD5 chain in order; another checks parts beside it.
        self.chain_pool = ThreadPoolExecutor(1, thread_name_prefix="md5-chain")
        self.check_pool = ThreadPoolExecutor(1, thread_name_prefix="md5-part")

    # -- the whole run ---------------------------------------------------------------------

    async def run(
        self, session: aiohttp.ClientSession, saved: Checkpoint | None, retry: DownloadRetry
    ) -> ArchiveResult:
        try:
            if saved is not None and not await self._adopt(saved):
                await self._abort(saved)
                saved = None
            await self._clear_leftovers(saved)
            try:
                return await self._transfer(session, saved, retry)
            except TransferStopped as stopped:
                if stopped.checkpoint is None and self.checkpoint is not None:
                    await self._abort(self.checkpoint)
                raise
            except Exception:
                # CancelledError is no Exception: a cancelled transfer keeps its uploads.
                if self.checkpoint is not None:
                    await self._abort(self.checkpoint)
                raise
        finally:
            self.chain_pool.shutdown(wait=False)
            self.check_pool.shutdown(wait=False)

    async def _transfer(
        self, session: aiohttp.ClientSession, saved: Checkpoint | None, retry: DownloadRetry
    ) -> ArchiveResult:
        md5, start = self._restore_md5(saved) if saved else (new_md5(), 0)
        if saved is not None and start == saved.plan.total:
            return await self._commit(md5)  # stored and hashed to the end: the commit was lost
        download = Download(
            session,
            self.source.url,
            self.source.refresh_url,
            self.settings.allowed_download_hosts,
            offset=start,
            total=saved.plan.total if saved else None,
            validator=saved.validator if saved else None,
            retry=retry,
            on_bytes=self._progress,
        )
        try:
            total = await self._until_stopped(download.open())
            if total == 0:
                raise TransferError("the export is empty (0 bytes)")
            if saved is None:
                plan = plan_parts(total, self.settings)
                self.checkpoint = Checkpoint(plan, self.expected_md5, validator=download.validator)
            await self._pump(download, md5, start)
        except _Stopped:
            done = self.checkpoint if self.checkpoint and self.checkpoint.offset else None
            raise TransferStopped(done) from None
        finally:
            await download.close()
        return await self._commit(md5)

    # -- resume ----------------------------------------------------------------------------

    async def _adopt(self, saved: Checkpoint) -> bool:
        """Check ``saved`` against the store; if it holds, continue from it."""
        if saved.md5 != self.expected_md5:
            log.warning("%s: the export changed since the checkpoint; starting over", self.name)
            return False
        plan = saved.plan
        done = saved.parts_done
        # Each segment holds its share of the parts below the offset, and no more.
        shares = {
            span.index: min(max(done - span.index * plan.parts_per_segment, 0), span.parts)
            for span in plan.segments()
        }
        if any(shares.get(i) != upload.parts for i, upload in saved.segments.items()) or any(
            share and i not in saved.segments for i, share in shares.items()
        ):
            log.warning("%s: the checkpoint does not add up; starting over", self.name)
            return False
        for index, upload in saved.segments.items():
            expected_key = self.store.image_key(
                self.source.provider,
                self.source.zone,
                self.source.snapshot_id,
                index,
                plan.segment_count,
            )
            stored = await self.store.list_parts(upload.key, upload.upload_id)
            if upload.key != expected_key or stored is None:
                log.warning("%s: a checkpointed upload is gone; starting over", self.name)
                return False
            first = index * plan.parts_per_segment
            in_order = [p for p in stored if p.number <= upload.parts]
            if (
                [p.number for p in in_order] != list(range(1, upload.parts + 1))
                or any(p.size != plan.part(first + p.number - 1).size for p in in_order)
                or etags_digest([p.etag for p in in_order]) != upload.etags_md5
            ):
                log.warning("%s: stored parts differ from the checkpoint; starting over", self.name)
                return False
            hashed = hashlib.md5()
            for part in in_order:
                hashed.update(f"{part.etag}\n".encode())
            self.etag_hashes[index] = hashed
            for part in stored:
                position = first + part.number - 1
                if done <= position < plan.part_count and part.size == plan.part(position).size:
                    self.found[position] = part.etag
        self.checkpoint = saved
        return True

    def _restore_md5(self, saved: Checkpoint) -> tuple[Md5, int]:
        """Continue the MD5 chain from the checkpoint, or from zero to re-hash the prefix."""
        if saved.md5_state is not None:
            try:
                md5 = new_md5(saved.md5_state)
            except ValueError as exc:
                log.warning("%s: cannot restore the MD5 state (%s)", self.name, exc)
            else:
                if md5.length == saved.offset:
                    return md5, saved.offset
                log.warning("%s: the MD5 state does not match the checkpoint", self.name)
        log.info("%s: re-hashing the first %d bytes from the source", self.name, saved.offset)
        saved.md5_state = None
        self.rehash_until = saved.offset
        return new_md5(), 0

    async def _clear_leftovers(self, saved: Checkpoint | None) -> None:
        """Remove what a lost run of this archive left: uploads no checkpoint knows, and
        image objects completed by a commit that never wrote the manifest (there is no
        manifest, or archive_export would have stopped with ArchiveExists)."""
        known = {upload.upload_id for upload in saved.segments.values()} if saved else set()
        source = self.source
        prefix = self.store.archive_prefix(source.provider, source.zone, source.snapshot_id)
        for upload in await self.store.list_open_uploads(prefix):
            if upload.upload_id not in known:
                log.info("%s: aborting a stray upload of %s", self.name, upload.key)
                await self.store.abort_upload(upload.key, upload.upload_id)
        for key in await self.store.list_keys(prefix):
            log.info("%s: deleting %s, left by a commit that did not finish", self.name, key)
            await self.store.delete_object(key)

    async def _abort(self, checkpoint: Checkpoint) -> None:
        for key, upload_id in checkpoint.open_uploads():
            try:
                await self.store.abort_upload(key, upload_id)
            except Exception as exc:  # the original error matters more; gc sweeps later
                log.error("%s: cannot abort the upload of %s: %s", self.name, key, exc)

    # -- streaming -------------------------------------------------------------------------

    async def _pump(self, download: Download, md5: Md5, start: int) -> None:
        """Download every part from ``start``; each goes on to :meth:`_finish_part`."""
        assert self.checkpoint is not None
        plan = self.checkpoint.plan
        loop = asyncio.get_running_loop()
        buffers = self.buffers
        allocated = 0
        limit = buffer_count(plan.part_size, self.settings)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for part in plan.parts(start):
                if self.stop.is_set():
                    raise _Stopped
                if buffers.empty() and allocated < limit:
                    allocated += 1
                    buffers.put_nowait(bytearray(min(plan.part_size, plan.total)))
                buffer = await self._until_stopped(buffers.get())
                view = memoryview(buffer)[: part.size]
                if await self._until_stopped(download.readinto(view)) != part.size:
                    raise TransferError("the download ended before its Content-Length")
                chain = loop.run_in_executor(self.chain_pool, _extend_chain, md5, view)
                task = loop.create_task(self._finish_part(part, buffer, view, chain))
                tasks.add(task)
                task.add_done_callback(self._part_done(tasks))
        finally:
            # Parts in flight land (or fail) before anything is aborted or checkpointed.
            if tasks:
                await asyncio.wait(set(tasks))
        if self.errors:
            raise self.errors[0]

    def _part_done(self, tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.errors.append(task.exception())  # type: ignore[arg-type]
                self.failed.set()

        return done

    async def _until_stopped(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless ``stop`` is set or a part fails first."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stop.wait())
        failed = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait({task, stop, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            failed.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        if self.errors:
            raise self.errors[0]
        raise _Stopped

    def _progress(self, offset: int) -> None:
        if self.on_progress is not None and self.checkpoint is not None:
            self.on_progress(offset, self.checkpoint.plan.total)

    async def _finish_part(
        self,
        part: Part,
        buffer: bytearray,
        view: memoryview,
        chain: asyncio.Future[str | None],
    ) -> None:
        """Store one part (unless stored already), then move the checkpoint if it can."""
        check: asyncio.Future[str] | None = None
        stored = False
        try:
            if part.end > self.rehash_until:
                if self.check_parts or part.index in self.found:
                    check = asyncio.get_running_loop().run_in_executor(
                        self.check_pool, _md5_hex, view
                    )
                self.etags[part.index] = await self._store_part(part, buffer, view, check)
            state = await chain
            stored = part.end > self.rehash_until
        finally:
            # The threads read the buffer: it is reused only once both are done with it.
            busy = [f for f in (chain, check) if f is not None and not f.done()]
            if busy:
                await asyncio.wait(busy)
            if not stored:
                self.buffers.put_nowait(buffer)
        if stored:
            # Its buffer is free again when the checkpoint has passed it (:meth:`_advance`).
            self.held[part.index] = buffer
            self.states[part.index] = state
            await self._advance()

    async def _store_part(
        self, part: Part, buffer: bytearray, view: memoryview, check: asyncio.Future[str] | None
    ) -> str:
        """Upload a part, unless the store already holds it; return its ETag."""
        found = self.found.get(part.index)
        if found is not None and check is not None and await check == found:
            return found
        key, upload_id = await self._upload_of(part.segment)
        # Only the image's last part is short: it goes as a view of its buffer.
        body = buffer if part.size == len(buffer) else view
        for attempt in range(1, PART_RESENDS + 2):
            answer = await self.store.upload_part(key, upload_id, part.number, body)
            if check is None:
                return answer.etag
            if not answer.etag_is_md5:
                log.info("%s: the store's ETags are not MD5s; part checks off", self.name)
                self.check_parts = False
                return answer.etag
            local = await check
            if answer.etag == local:
                return answer.etag
            log.warning(
                "%s: the store got part %d of %s wrong (attempt %d)",
                self.name,
                part.number,
                key,
                attempt,
            )
        raise StoreIntegrityError(
            f"the store keeps getting part {part.number} of {key} wrong: "
            f"ETag {answer.etag}, MD5 sent {local}"
        )

    async def _upload_of(self, segment: int) -> tuple[str, str]:
        """Return (key, upload id) of a segment, starting its multipart upload on first use."""
        checkpoint = self.checkpoint
        assert checkpoint is not None
        async with self.upload_lock:
            if segment not in checkpoint.segments:
                source, plan = self.source, checkpoint.plan
                key = self.store.image_key(
                    source.provider, source.zone, source.snapshot_id, segment, plan.segment_count
                )
                metadata = {
                    "source-md5": self.expected_md5,
                    "provider": source.provider,
                    "zone": source.zone,
                    "snapshot-id": source.snapshot_id,
                    "image-size": str(plan.total),
                    "segment": f"{segment + 1}/{plan.segment_count}",
                    "segment-offset": str(plan.segment(segment).offset),
                    "part-size": str(plan.part_size),
                    "tool-version": worker.__version__,
                }
                upload_id = await self.store.create_upload(key, metadata)
                checkpoint.segments[segment] = SegmentUpload(key, upload_id)
                self.etag_hashes[segment] = hashlib.md5()
            upload = checkpoint.segments[segment]
            return upload.key, upload.upload_id

    async def _advance(self) -> None:
        """Move the checkpoint past every part now done in order, and report it."""
        async with self.checkpoint_lock:
            checkpoint = self.checkpoint
            assert checkpoint is not None
            plan = checkpoint.plan
            passed: list[int] = []
            while (index := checkpoint.parts_done) in self.states and index in self.etags:
                part = plan.part(index)
                upload = checkpoint.segments[part.segment]
                etag = self.etags.pop(index)
                self.etag_hashes[part.segment].update(f"{etag}\n".encode())
                upload.parts = part.number
                upload.etags_md5 = self.etag_hashes[part.segment].hexdigest()
                checkpoint.md5_state = self.states.pop(index)
                checkpoint.offset = part.end
                passed.append(index)
            if passed and self.on_checkpoint is not None:
                await self.on_checkpoint(checkpoint)
            for index in passed:
                self.buffers.put_nowait(self.held.pop(index))

    # -- commit ----------------------------------------------------------------------------

    async def _commit(self, md5: Md5) -> ArchiveResult:
        """Verify everything, complete every object, write the manifest."""
        checkpoint = self.checkpoint
        assert checkpoint is not None
        plan = checkpoint.plan
        digest = md5.hexdigest()
        if digest != self.expected_md5:
            raise ChecksumMismatch(self.expected_md5, digest)
        if md5.length != plan.total or checkpoint.offset != plan.total:
            raise TransferError(
                f"hashed {md5.length} bytes, stored {checkpoint.offset} of {plan.total}"
            )
        part_lists = [await self._stored_etags(span) for span in plan.segments()]
        objects: list[ArchivedObject] = []
        try:
            for span, etags in zip(plan.segments(), part_lists, strict=True):
                upload = checkpoint.segments[span.index]
                etag = await self.store.complete_upload(upload.key, upload.upload_id, etags)
                del checkpoint.segments[span.index]
                objects.append(ArchivedObject(upload.key, span.size, etag, span.offset))
                expected = multipart_etag(etags) if self._md5_etags(etags) else None
                if expected is not None and _MD5_HEX_PREFIX.match(etag) and etag != expected:
                    raise StoreIntegrityError(
                        f"the store assembled {upload.key} wrongly: "
                        f"ETag {etag}, expected {expected}"
                    )
            manifest_key = await self.store.put_manifest(self._manifest(digest, objects))
        except ArchiveExists:
            raise  # the objects there belong to the existing archive
        except BaseException:
            # Completed objects without a manifest are no archive: remove them.
            for item in objects:
                try:
                    await self.store.delete_object(item.key)
                except Exception as exc:
                    log.error("%s: cannot delete %s: %s", self.name, item.key, exc)
            raise
        log.info("%s: archived %d bytes, md5 %s", self.name, plan.total, digest)
        return ArchiveResult(self.store.bucket, manifest_key, digest, plan.total, objects)

    def _md5_etags(self, etags: list[str]) -> bool:
        return self.check_parts and all(_MD5_HEX_PREFIX.fullmatch(etag) for etag in etags)

    async def _stored_etags(self, span: SegmentSpan) -> list[str]:
        """Return the ETags ListParts gives for a segment, after checking them against ours."""
        assert self.checkpoint is not None
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

    def _manifest(self, digest: str, objects: list[ArchivedObject]) -> Manifest:
        assert self.checkpoint is not None
        source = self.source
        return Manifest(
            provider=source.provider,
            zone=source.zone,
            snapshot_id=source.snapshot_id,
            snapshot_name=source.snapshot_name,
            instance_id=source.instance_id,
            created_at=source.created_at,
            size=self.checkpoint.plan.total,
            md5=digest,
            part_size=self.checkpoint.plan.part_size,
            objects=tuple(objects),
            tool_version=worker.__version__,
            archived_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )


_MD5_HEX_PREFIX = re.compile(r"[0-9a-f]{32}")


def _extend_chain(md5: Md5, view: memoryview) -> str | None:
    """In the chain thread: hash the part, return the chain's state at its end."""
    md5.update(view)
    return md5.export()


def _md5_hex(view: memoryview) -> str:
    """In the check thread: the part's own MD5 (hashlib releases the GIL)."""
    return hashlib.md5(view).hexdigest()
