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
from worker.archive import ArchivedObject, ArchiveId, ArchiveResult, ArchiveStore, Manifest
from worker.download import Download, DownloadRetry, check_download_url
from worker.errors import (
    ArchiveExists,
    ChecksumMismatch,
    ObjectExists,
    SnaparchiveError,
    StoreIntegrityError,
    TransferError,
    is_permanent,
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

    @property
    def archive(self) -> ArchiveId:
        """The archive this source goes into."""
        return ArchiveId(self.provider, self.zone, self.snapshot_id)


def etags_digest(etags: list[str]) -> str:
    """Return the hex MD5 of ``etags`` one per line: a fixed-size fingerprint of a part list."""
    digest = hashlib.md5()
    for etag in etags:
        digest.update(f"{etag}\n".encode())
    return digest.hexdigest()


#: States of a segment's upload: parts going up; CompleteMultipartUpload sent (it may have
#: succeeded without our knowing); the object exists.
UPLOADING, COMPLETING, COMPLETED = "uploading", "completing", "completed"


@dataclass
class SegmentUpload:
    """The multipart upload of one segment, as far as it is stored in order.

    Parameters:
      key: The object key.
      upload_id: The multipart upload id.
      parts: Parts 1..``parts`` are stored and hashed.
      etags_md5: :func:`etags_digest` of their ETags (checked against ListParts on resume
        and before Complete; a list of 10,000 ETags per segment would bloat checkpoints).
      state: :data:`UPLOADING` (default), :data:`COMPLETING` or :data:`COMPLETED`.
      object_etag: Once the commit of the segment began, the ETag its object must have
        (computed from the parts' MD5s; ``None`` where ETags are not MD5s), and once
        :data:`COMPLETED`, the ETag it has. A resumed commit keeps an object only if it
        still has this ETag and the segment's size.
    """

    key: str
    upload_id: str
    parts: int = 0
    etags_md5: str = field(default_factory=lambda: etags_digest([]))
    state: str = UPLOADING
    object_etag: str | None = None


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
        """Return ``(key, upload_id)`` of every upload the transfer started and did not
        complete."""
        return [
            (s.key, s.upload_id) for _, s in sorted(self.segments.items()) if s.state != COMPLETED
        ]

    def completed_keys(self) -> list[str]:
        """Return the keys of the objects the transfer may have completed."""
        return [s.key for _, s in sorted(self.segments.items()) if s.state != UPLOADING]

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
                segments={int(i): _segment_upload(item) for i, item in data["segments"].items()},
                validator=data.get("validator"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed transfer checkpoint: {exc}") from None


def _segment_upload(item: dict[str, Any]) -> SegmentUpload:
    state = item.get("state", UPLOADING)  # checkpoints from before resumable commits
    if state not in (UPLOADING, COMPLETING, COMPLETED):
        raise ValueError(f"unknown segment state {state!r}")
    etag = item.get("object_etag")
    return SegmentUpload(
        str(item["key"]),
        str(item["upload_id"]),
        int(item["parts"]),
        str(item["etags_md5"]),
        state,
        None if etag is None else str(etag),
    )


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


async def discard_transfer(
    store: ArchiveStore, source: ArchiveId, checkpoint: Checkpoint | None
) -> None:
    """Drop what a transfer of ``source`` left: abort its multipart uploads (the ones of
    ``checkpoint`` and any other open one under the archive's prefix, for a checkpoint
    that is lost or unreadable) and delete the objects its commit completed, unless an
    archive's manifest now exists. Best effort: failures are logged, ``gc`` sweeps later.

    Only call it while holding the archive's lease: the uploads under the prefix are then
    this transfer's own.
    """
    prefix = store.archive_prefix(source.provider, source.zone, source.snapshot_id)
    try:
        uploads = set(checkpoint.open_uploads()) if checkpoint else set()
        uploads.update((u.key, u.upload_id) for u in await store.list_open_uploads(prefix))
        for key, upload_id in sorted(uploads):
            await store.abort_upload(key, upload_id)
        if checkpoint is not None:
            await _delete_unless_archived(store, source, checkpoint.completed_keys())
    except SnaparchiveError as error:
        log.error("%s: cannot drop what the transfer left (gc will): %s", source, error)


async def _delete_unless_archived(store: ArchiveStore, source: ArchiveId, keys: list[str]) -> None:
    """Delete image objects without a manifest.

    Raises:
      ArchiveExists: An object is at the manifest key: the objects may be an archive's, and
        nothing is deleted.
    """
    if not keys:
        return
    manifest_key = store.manifest_key(source.provider, source.zone, source.snapshot_id)
    # Looked at right before deleting: a run that committed meanwhile keeps its archive.
    if await store.exists(manifest_key):
        raise ArchiveExists(manifest_key)
    for key in keys:
        log.info("%s: deleting %s, left by a commit that did not finish", source, key)
        await store.delete_object(key)


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
        # Parts a resumed upload holds that are not yet checked against the bytes hashed now:
        # index -> ETag. Each is kept only if its MD5 is that ETag, else it is sent again.
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
            md5 = await self._adopt(saved) if saved is not None else None
            if saved is not None and md5 is None:
                await discard_transfer(self.store, self.source.archive, saved)
                saved = None
            await self._clear_leftovers(saved)
            try:
                return await self._transfer(session, md5, retry)
            except TransferStopped as stopped:
                if stopped.checkpoint is None and self.checkpoint is not None:
                    await discard_transfer(self.store, self.source.archive, self.checkpoint)
                raise
            except Exception as error:
                # Only a permanent error makes the uploads worthless. A transient one outlived
                # the retries below, and the next try resumes from the checkpoint: at 50 TiB,
                # uploading again would cost days. CancelledError is no Exception: a cancelled
                # transfer keeps its uploads too.
                if self.checkpoint is not None and is_permanent(error):
                    await discard_transfer(self.store, self.source.archive, self.checkpoint)
                raise
        finally:
            self.chain_pool.shutdown(wait=False)
            self.check_pool.shutdown(wait=False)

    async def _transfer(
        self, session: aiohttp.ClientSession, md5: Md5 | None, retry: DownloadRetry
    ) -> ArchiveResult:
        saved = self.checkpoint
        start = saved.offset if saved is not None else 0
        md5 = md5 or new_md5()
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

    async def _adopt(self, saved: Checkpoint) -> Md5 | None:
        """Check ``saved`` against the store; if it holds, continue from it and return the
        MD5 chain to go on with (``None``: it does not hold, start over)."""
        if saved.md5 != self.expected_md5:
            log.warning("%s: the export changed since the checkpoint; starting over", self.name)
            return None
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
            return None
        md5 = self._restore_md5(saved)
        rehash = md5 is None
        if rehash and any(u.state != UPLOADING for u in saved.segments.values()):
            # Completed objects cannot be checked part by part against a re-hash.
            log.warning("%s: cannot re-hash a half-made commit; starting over", self.name)
            return None
        for index, upload in saved.segments.items():
            expected_key = self.store.image_key(
                self.source.provider,
                self.source.zone,
                self.source.snapshot_id,
                index,
                plan.segment_count,
            )
            if upload.key != expected_key:
                log.warning("%s: the checkpoint names a foreign key; starting over", self.name)
                return None
            if upload.state == COMPLETED:
                if not await self._object_holds(upload, plan.segment(index)):
                    log.warning("%s: a completed object changed; starting over", self.name)
                    return None
                continue
            stored = await self.store.list_parts(upload.key, upload.upload_id)
            if stored is None:
                if upload.state == COMPLETING and await self._object_holds(
                    upload, plan.segment(index)
                ):
                    upload.state = COMPLETED  # the completion landed before the crash
                    continue
                log.warning("%s: a checkpointed upload is gone; starting over", self.name)
                return None
            first = index * plan.parts_per_segment
            in_order = [p for p in stored if p.number <= upload.parts]
            if (
                [p.number for p in in_order] != list(range(1, upload.parts + 1))
                or any(p.size != plan.part(first + p.number - 1).size for p in in_order)
                or etags_digest([p.etag for p in in_order]) != upload.etags_md5
            ):
                log.warning("%s: stored parts differ from the checkpoint; starting over", self.name)
                return None
            upload.state = UPLOADING  # a completion that did not land is sent again
            hashed = hashlib.md5()
            if rehash:
                # The prefix is hashed again from the source: every stored part of it is kept
                # only if its ETag is the MD5 of the bytes read now, else it is sent again.
                upload.parts, upload.etags_md5 = 0, etags_digest([])
            else:
                for part in in_order:
                    hashed.update(f"{part.etag}\n".encode())
            self.etag_hashes[index] = hashed
            low = first if rehash else done
            for part in stored:
                position = first + part.number - 1
                if low <= position < plan.part_count and part.size == plan.part(position).size:
                    self.found[position] = part.etag
        if rehash:
            log.info("%s: re-hashing the first %d bytes from the source", self.name, saved.offset)
            saved.offset, saved.md5_state = 0, None
        self.checkpoint = saved
        return md5 or new_md5()

    def _restore_md5(self, saved: Checkpoint) -> Md5 | None:
        """Continue the MD5 chain from the checkpoint; ``None`` when the prefix must be
        hashed again from the source (no state saved, or one this host cannot restore)."""
        if saved.md5_state is not None:
            try:
                md5 = new_md5(saved.md5_state)
            except ValueError as exc:
                log.warning("%s: cannot restore the MD5 state (%s)", self.name, exc)
            else:
                if md5.length == saved.offset:
                    return md5
                log.warning("%s: the MD5 state does not match the checkpoint", self.name)
        return None if saved.offset else new_md5()

    async def _object_holds(self, upload: SegmentUpload, span: SegmentSpan) -> bool:
        """Whether the object of a completed segment is there, with its ETag and size."""
        found = await self.store.stat(upload.key)
        return (
            found is not None
            and upload.object_etag is not None
            and found.etag == upload.object_etag
            and found.size == span.size
        )

    async def _clear_leftovers(self, saved: Checkpoint | None) -> None:
        """Remove what a lost run of this archive left: uploads no checkpoint knows, and
        image objects completed by a commit that never wrote the manifest."""
        known = {upload.upload_id for upload in saved.segments.values()} if saved else set()
        source = self.source
        prefix = self.store.archive_prefix(source.provider, source.zone, source.snapshot_id)
        for upload in await self.store.list_open_uploads(prefix):
            if upload.upload_id not in known:
                log.info("%s: aborting a stray upload of %s", self.name, upload.key)
                await self.store.abort_upload(upload.key, upload.upload_id)
        ours = set(saved.completed_keys()) if saved else set()
        leftovers = [k for k in await self.store.list_image_keys(prefix) if k not in ours]
        await _delete_unless_archived(self.store, source.archive, leftovers)

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
            if self.check_parts or part.index in self.found:
                check = asyncio.get_running_loop().run_in_executor(self.check_pool, _md5_hex, view)
            self.etags[part.index] = await self._store_part(part, buffer, view, check)
            state = await chain
            stored = True
        finally:
            # The threads read the buffer: it is reused only once both are done with it.
            busy = [f for f in (chain, check) if f is not None and not f.done()]
            if busy:
                await asyncio.wait(busy)
            if not stored:
                self.buffers.put_nowait(buffer)
        # Its buffer is free again when the checkpoint has passed it (:meth:`_advance`).
        self.held[part.index] = buffer
        self.states[part.index] = state
        await self._advance()

    async def _store_part(
        self, part: Part, buffer: bytearray, view: memoryview, check: asyncio.Future[str] | None
    ) -> str:
        """Upload a part, unless the store already holds it; return its ETag."""
        found = self.found.pop(part.index, None)
        if found is not None and check is not None and await check == found:
            return found  # the store holds exactly the bytes hashed now
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
        """Verify everything, complete every object, write the manifest.

        Resumable: each segment's state is checkpointed before and after its completion, so
        a crash or a transient failure here keeps the objects completed already (a resume
        checks that each still has its ETag and size).
        """
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
        objects: list[ArchivedObject] = []
        for span in plan.segments():
            upload = checkpoint.segments[span.index]
            if upload.state != COMPLETED:
                await self._complete(span, upload)
            assert upload.object_etag is not None
            objects.append(ArchivedObject(upload.key, span.size, upload.object_etag, span.offset))
        self._still_ours()
        manifest_key = await self.store.put_manifest(self._manifest(digest, objects))
        log.info("%s: archived %d bytes, md5 %s", self.name, plan.total, digest)
        return ArchiveResult(self.store.bucket, manifest_key, digest, plan.total, objects)

    async def _complete(self, span: SegmentSpan, upload: SegmentUpload) -> None:
        """Complete one segment's object from its checked parts, checkpointed on both sides."""
        etags = await self._stored_etags(span)
        expected = multipart_etag(etags) if self._md5_etags(etags) else None
        upload.state, upload.object_etag = COMPLETING, expected
        await self._report()
        self._still_ours()
        try:
            etag = await self.store.complete_upload(upload.key, upload.upload_id, etags)
        except ObjectExists:
            source = self.source
            if await self.store.exists(
                self.store.manifest_key(source.provider, source.zone, source.snapshot_id)
            ):
                raise ArchiveExists(
                    self.store.manifest_key(source.provider, source.zone, source.snapshot_id)
                ) from None
            raise
        if expected is not None and _MD5_HEX_PREFIX.match(etag) and etag != expected:
            raise StoreIntegrityError(
                f"the store assembled {upload.key} wrongly: ETag {etag}, expected {expected}"
            )
        upload.state, upload.object_etag = COMPLETED, etag
        await self._report()

    def _still_ours(self) -> None:
        """Before a commit write: stop if ``stop`` is set (the lease may be lost, and a worker
        that took over must not find objects appearing under its feet)."""
        if self.stop.is_set():
            raise TransferStopped(self.checkpoint)

    async def _report(self) -> None:
        """Hand the checkpoint as it is now to ``on_checkpoint``."""
        if self.on_checkpoint is not None:
            async with self.checkpoint_lock:
                assert self.checkpoint is not None
                await self.on_checkpoint(self.checkpoint)

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
