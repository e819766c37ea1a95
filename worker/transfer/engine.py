"""The streaming engine: source stream → MD5 chain and per-part checks → S3 parts → checkpoint.

One :class:`Transfer` per transfer (:func:`~worker.transfer.archive_export`, or a conversion
of :mod:`worker.convert`); what it reads and where it writes is its
:class:`~worker.transfer.source.TransferSource`'s. It reads each
part into a free buffer, hashes it into the image's MD5 chain (one thread, strictly in
order) while the store uploads it (the store's threads, several parts at a time) and a
second thread computes the part's own MD5 to check the ETag the store answers. When a part
and every part before it are stored and hashed, the checkpoint moves past it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp

from worker.archive import ArchiveStore
from worker.download import DownloadRetry
from worker.errors import StoreIntegrityError, TransferError, is_permanent
from worker.manifest import ArchiveResult
from worker.md5state import Md5, new_md5
from worker.parts import Part, PartPlan, buffer_count
from worker.settings import TransferSettings
from worker.transfer.buffers import PartBuffers
from worker.transfer.checkpoint import Checkpoint, SegmentUpload, TransferStopped
from worker.transfer.commit import Commit
from worker.transfer.resume import Resumption, adopt, clear_leftovers, discard_transfer
from worker.transfer.source import ByteStream, OpenEnded, TransferSource

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A part the store received wrongly (ETag != our MD5) is sent this many times more.
PART_RESENDS = 2


class _Stopped(Exception):
    """Internal: ``stop`` was set while waiting."""


class Transfer:
    """The state of one :func:`~worker.transfer.archive_export` call (see there)."""

    def __init__(
        self,
        source: TransferSource,
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
        self.name = str(source.archive)
        self.scope = source.scope(store)
        self.stream: ByteStream | None = None
        self.checkpoint: Checkpoint | None = None
        # Parts the store holds that are not yet checked against the bytes hashed now:
        # index -> ETag. Each is kept only if its MD5 is that ETag, else it is sent again.
        self.found: dict[int, str] = {}
        # Parts done out of order, waiting for the ones before them: index -> ETag, state.
        self.etags: dict[int, str] = {}
        self.states: dict[int, str | None] = {}
        self.buffers: PartBuffers | None = None
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

    async def run(
        self, session: aiohttp.ClientSession, saved: Checkpoint | None, retry: DownloadRetry
    ) -> ArchiveResult:
        """Resume from ``saved`` if it holds (else drop it), transfer, commit."""
        archive = self.source.archive
        try:
            resumed = await adopt(self.store, self.source, saved) if saved else None
            if saved is not None and resumed is None:
                await discard_transfer(self.store, archive, saved, self.scope)
            await clear_leftovers(
                self.store, archive, resumed.checkpoint if resumed else None, self.scope
            )
            try:
                return await self._transfer(session, resumed, retry)
            except TransferStopped as stopped:
                if stopped.checkpoint is None and self.checkpoint is not None:
                    await discard_transfer(self.store, archive, self.checkpoint, self.scope)
                raise
            except Exception as error:
                # Only a permanent error makes the uploads worthless. A transient one outlived
                # the retries below, and the next try resumes from the checkpoint: at 50 TiB,
                # uploading again would cost days. CancelledError is no Exception: a cancelled
                # transfer keeps its uploads too.
                if self.checkpoint is not None and is_permanent(error):
                    await discard_transfer(self.store, archive, self.checkpoint, self.scope)
                raise
        finally:
            self.chain_pool.shutdown(wait=False)
            self.check_pool.shutdown(wait=False)

    async def _transfer(
        self, session: aiohttp.ClientSession, resumed: Resumption | None, retry: DownloadRetry
    ) -> ArchiveResult:
        md5 = new_md5()
        if resumed is not None:
            self.checkpoint, md5 = resumed.checkpoint, resumed.md5
            self.found, self.etag_hashes = resumed.found, resumed.etag_hashes
        saved = self.checkpoint
        start = saved.offset if saved is not None else 0
        if saved is not None and start == saved.plan.total:
            return await self._commit(md5)  # stored and hashed to the end: the commit was lost
        self.stream = stream = self.source.open_stream(
            session,
            self.settings,
            offset=start,
            checkpoint=saved,
            retry=retry,
            on_bytes=self._progress,
        )
        try:
            total = await self._until_stopped(stream.open())
            if total == 0:
                raise TransferError("the export is empty (0 bytes)")
            if saved is None:
                plan = self.source.plan(total, self.settings)
                self.checkpoint = Checkpoint(
                    plan, self.source.expected_md5, validator=stream.validator
                )
            await self._pump(stream, md5, start)
        except _Stopped:
            done = self.checkpoint if self.checkpoint and self.checkpoint.offset else None
            raise TransferStopped(done) from None
        finally:
            await stream.close()
        return await self._commit(md5)

    async def _commit(self, md5: Md5) -> ArchiveResult:
        assert self.checkpoint is not None
        commit = Commit(
            self.store,
            self.source,
            self.checkpoint,
            md5_etags=self.check_parts,
            stop=self.stop,
            report=self._report,
        )
        return await commit.run(md5)

    async def _report(self) -> None:
        """Hand the checkpoint as it is now to ``on_checkpoint``."""
        if self.on_checkpoint is not None:
            async with self.checkpoint_lock:
                assert self.checkpoint is not None
                await self.on_checkpoint(self.checkpoint)

    # -- streaming -------------------------------------------------------------------------

    async def _pump(self, stream: ByteStream, md5: Md5, start: int) -> None:
        """Read every part from ``start``; each goes on to :meth:`_finish_part`."""
        assert self.checkpoint is not None
        plan = self.checkpoint.plan
        open_ended = isinstance(stream, OpenEnded)
        loop = asyncio.get_running_loop()
        self.buffers = buffers = PartBuffers(
            min(plan.part_size, plan.total), buffer_count(plan.part_size, self.settings)
        )
        tasks: set[asyncio.Task[None]] = set()
        try:
            for part in plan.parts(start):
                if self.stop.is_set():
                    raise _Stopped
                buffer = await self._until_stopped(buffers.take())
                view = memoryview(buffer)[: part.size]
                got = await self._until_stopped(stream.readinto(view))
                last: Part | None = None
                if got != part.size:
                    if not open_ended:
                        raise TransferError("the download ended before its Content-Length")
                    last = self._ends_at(part, got)
                    if last is None:
                        buffers.give_back(buffer)
                        break
                    part, view = last, view[:got]
                chain = loop.run_in_executor(self.chain_pool, _extend_chain, md5, view)
                task = loop.create_task(self._finish_part(part, buffer, view, chain))
                tasks.add(task)
                task.add_done_callback(self._part_done(tasks))
                if last is not None:
                    break
            else:
                if open_ended:
                    more: int = await self._until_stopped(stream.readinto(memoryview(bytearray(1))))
                    if more:
                        raise TransferError("the stream is longer than the bound it stated")
        finally:
            # Parts in flight land (or fail) before anything is aborted or checkpointed.
            if tasks:
                await asyncio.wait(set(tasks))
        if self.errors:
            raise self.errors[0]

    def _ends_at(self, part: Part, got: int) -> Part | None:
        """An open-ended stream ended ``got`` bytes into ``part``: cut the plan there and
        return the last part (``None`` when it ended at the part's start)."""
        assert self.checkpoint is not None
        plan = self.checkpoint.plan
        total = part.offset + got
        if total == 0:
            raise TransferError("the stream is empty (0 bytes)")
        self.checkpoint.plan = PartPlan(total, plan.part_size, plan.segment_size)
        return self.checkpoint.plan.part(part.index) if got else None

    def _part_done(self, tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and (error := task.exception()) is not None:
                self.errors.append(error)
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
        assert self.buffers is not None
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
                self.buffers.give_back(buffer)
        self.buffers.hold(part.index, buffer)
        self.states[part.index] = state
        await self._advance()

    async def _store_part(
        self, part: Part, buffer: bytearray, view: memoryview, check: asyncio.Future[str] | None
    ) -> str:
        """Upload a part, unless the store already holds exactly it; return its ETag."""
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
                key = source.object_key(self.store, segment, plan.segment_count)
                metadata = source.object_metadata(plan, segment)
                upload_id = await self.store.create_upload(key, metadata)
                checkpoint.segments[segment] = SegmentUpload(key, upload_id)
                self.etag_hashes[segment] = hashlib.md5()
            upload = checkpoint.segments[segment]
            return upload.key, upload.upload_id

    async def _advance(self) -> None:
        """Move the checkpoint past every part now done in order, and report it."""
        assert self.buffers is not None
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
            if passed and isinstance(self.stream, OpenEnded):
                checkpoint.source_state = self.stream.resume_state(checkpoint.offset)
            if passed and self.on_checkpoint is not None:
                await self.on_checkpoint(checkpoint)
            for index in passed:
                self.buffers.release(index)


def _extend_chain(md5: Md5, view: memoryview) -> str | None:
    """In the chain thread: hash the part, return the chain's state at its end."""
    md5.update(view)
    return md5.export()


def _md5_hex(view: memoryview) -> str:
    """In the check thread: the part's own MD5 (hashlib releases the GIL)."""
    return hashlib.md5(view).hexdigest()
