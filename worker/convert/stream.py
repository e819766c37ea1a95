"""The raw disk of a qcow2 image, in order, as zstd frames: the thread that makes them.

:class:`RawZstdProducer` runs in a thread of its own. It walks the image's extents
(:class:`~worker.qcow2.reader.Qcow2Reader`), reads stored clusters ahead through a small pool
of ranged reads (at most :data:`READ_AHEAD` bytes in flight; compressed clusters next to each
other are read together), inflates compressed clusters, and emits the raw disk in order:
zeros for zero and unallocated clusters, nothing past the virtual size. Every raw byte goes
into the raw MD5 and into a zstd compressor (``zstandard``, multi-threaded). The compressed
output is decompressed again as it comes (the round trip checks every frame's content
checksum, and the raw bytes it gives are counted) and handed to ``emit``.

Frames: a new zstd frame starts every :data:`FRAME_SIZE` raw bytes, so a transfer can resume
without the compressor's state: from the last frame start before its checkpoint, making the
same bytes again (zstd is deterministic for the same input, level and thread count). The
producer records, at every part boundary of its output, where that frame started (raw and
compressed offsets, the raw MD5 state there) and the MD5 of the compressed bytes from the
frame start to the boundary. A resumed producer makes that stretch again and checks it
against that MD5 before it emits anything: compressed bytes that would not splice onto the
stored ones (another zstd version, say) are refused (:class:`CannotResume`) and the
conversion starts over.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, cast

import zstandard

from worker.errors import TransferError
from worker.md5state import Md5, new_md5
from worker.qcow2.reader import DATA, ZERO, Extent, Qcow2Reader

#: Raw bytes per zstd frame: the most a resume makes again.
FRAME_SIZE = 256 << 20
#: Bytes of stored clusters read ahead at most.
READ_AHEAD = 32 << 20
#: Parallel ranged reads.
READERS = 4
#: Stored clusters read together, at most this many bytes per ranged GET.
GROUP_BYTES = 8 << 20
#: Bytes between stored extents read (and dropped) rather than asked for in another GET.
READ_GAP = 256 << 10
#: zstd level (zstd's default; ``zstd -3``).
LEVEL = 3
#: Raw chunks queued for the hashing thread (each at most 8 MiB).
HASH_QUEUE = 4
#: Seconds a resume state waits for the raw MD5 state of its frame start.
MD5_WAIT = 300.0
_ZEROS = memoryview(bytes(8 << 20))


class CannotResume(TransferError):
    """A conversion cannot go on from its checkpoint (no resume state, or the bytes made
    again differ from the stored ones); it starts over."""


def zstd_bound(raw_size: int) -> int:
    """More compressed bytes than :class:`RawZstdProducer` can make of ``raw_size`` raw ones
    (zstd's bound per frame, plus frame headers and checksums)."""
    frames = -(-raw_size // FRAME_SIZE) or 1
    return raw_size + (raw_size >> 7) + frames * 64 + (1 << 20)


@dataclass(frozen=True)
class Resume:
    """Where a producer starts: the frame start ``raw``/``zst`` offsets, the raw MD5 state
    there, the checkpoint ``offset`` (compressed) to emit from, and ``frame_md5`` of the
    compressed bytes from the frame start to it."""

    raw: int
    zst: int
    raw_md5: str
    offset: int
    frame_md5: str

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, offset: int) -> Resume:
        """The resume a checkpoint's ``source_state`` says (for a checkpoint at ``offset``).

        Raises:
          CannotResume: No usable state.
        """
        try:
            assert state is not None and not state.get("end") and state["offset"] == offset
            assert isinstance(state["raw_md5"], str)  # None: this host's MD5 cannot resume
            resume = cls(
                int(state["raw"]),
                int(state["zst"]),
                state["raw_md5"],
                offset,
                str(state["frame_md5"]),
            )
        except (AssertionError, KeyError, TypeError, ValueError):
            raise CannotResume("the checkpoint has no resume state for the conversion") from None
        if resume.raw % FRAME_SIZE or resume.zst > offset:
            raise CannotResume("the checkpoint's resume state does not add up")
        return resume


class RawZstdProducer:
    """Makes the raw+zstd stream of an image (see the module docstring).

    Parameters:
      reader: The qcow2 image.
      part_size: The transfer's part size: resume states are recorded at its multiples.
      emit: Called with each run of compressed bytes, in order (may block: back-pressure).
      resume: Where to start (default: the beginning).
      threads: zstd worker threads (default 0: one per CPU, at least 1).
      stop: When set, the producer ends at the next chunk (raising nothing).
    """

    def __init__(
        self,
        reader: Qcow2Reader,
        part_size: int,
        emit: Callable[[bytes], None],
        *,
        resume: Resume | None = None,
        threads: int = 0,
        stop: threading.Event | None = None,
    ) -> None:
        self.reader = reader
        self.raw_size = reader.virtual_size
        self.part_size = part_size
        self.emit = emit
        self.resume = resume
        self.stop = stop or threading.Event()
        self.compressor = zstandard.ZstdCompressor(
            level=LEVEL, threads=threads or -1, write_checksum=True, write_content_size=False
        )
        #: Raw bytes hashed so far (progress).
        self.raw_done = resume.raw if resume else 0
        self._states: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- resume states ---------------------------------------------------------------------

    def state_at(self, offset: int) -> dict[str, Any] | None:
        """The resume state recorded at compressed ``offset`` (a part boundary or the end);
        older ones are dropped. (The raw MD5 state of its frame start may still be on its way
        from the hashing thread, a few chunks behind: it is waited for.)"""
        with self._lock:
            state = self._states.get(offset)
            for passed in [k for k in self._states if k < offset]:
                del self._states[passed]
        if state is not None and isinstance(state.get("raw_md5"), Future):
            state = {**state, "raw_md5": state["raw_md5"].result(timeout=MD5_WAIT)}
        return state

    def _record(self, offset: int, state: dict[str, Any]) -> None:
        with self._lock:
            self._states[offset] = state

    # -- the stream ------------------------------------------------------------------------

    def run(self) -> None:
        """Make the stream (in the calling thread) to its end, or until ``stop`` is set.

        Raises:
          CannotResume: The bytes made again from the frame start differ from the stored ones.
          CorruptImage: The image's tables or compressed clusters are broken.
          StoreError, StoreIntegrityError: Reading the image failed.
          zstandard.ZstdError: The round trip failed (a compressor or memory fault).
        """
        resume = self.resume
        raw = resume.raw if resume else 0
        md5 = _Hashing(new_md5(resume.raw_md5 if resume else None))
        self._zst = resume.zst if resume else 0
        self._skip_to = resume.offset if resume else 0
        self._checked = resume is None
        self._verified = 0
        counter = _Counter()
        self._check = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], counter), write_size=1 << 20, closefd=False
        )
        frame: Any = None
        with md5, ThreadPoolExecutor(READERS, thread_name_prefix="qcow2-read") as pool:
            for chunk in self._raw(raw, pool):
                if self.stop.is_set():
                    return
                while chunk:
                    if frame is None:
                        frame = self._start_frame(raw, md5)
                    take = chunk[: FRAME_SIZE - raw % FRAME_SIZE]
                    md5.update(take)
                    self._out(frame.compress(take))
                    raw += len(take)
                    self.raw_done = raw
                    chunk = chunk[len(take) :]
                    if raw % FRAME_SIZE == 0 or raw == self.raw_size:
                        self._out(frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
                        frame = None
            digest = md5.hexdigest()
        self._check.flush()
        if not self._checked and self._zst == self._skip_to:
            self._check_resumed()
        if raw != self.raw_size or counter.count != raw - (resume.raw if resume else 0):
            raise TransferError(
                f"conversion: made {raw} raw bytes, checked {counter.count}, "
                f"the disk has {self.raw_size}"
            )
        if not self._checked:
            raise CannotResume("the conversion ended before its checkpoint")
        self._record(
            self._zst,
            {"end": True, "offset": self._zst, "raw_size": raw, "raw_md5": digest},
        )

    def _start_frame(self, raw: int, md5: _Hashing) -> Any:
        self._frame = {"raw": raw, "zst": self._zst, "raw_md5": md5.export()}
        self._frame_md5 = hashlib.md5()
        return self.compressor.compressobj()

    def _out(self, data: bytes) -> None:
        """Check ``data`` by decompressing it, record resume states at part boundaries
        within it, and emit what lies past the resume offset."""
        if not data:
            return
        self._check.write(data)
        view = memoryview(data)
        while view:
            if not self._checked and self._zst == self._skip_to:
                self._check_resumed()
            boundary = (self._zst // self.part_size + 1) * self.part_size
            piece = view[: boundary - self._zst]
            view = view[len(piece) :]
            self._frame_md5.update(piece)
            self._zst += len(piece)
            if self._checked:
                self.emit(bytes(piece))
            if self._zst == boundary:
                self._record(
                    boundary,
                    {**self._frame, "offset": boundary, "frame_md5": self._frame_md5.hexdigest()},
                )

    def _check_resumed(self) -> None:
        """At the resume offset: the stretch made again since the frame start must be the
        stored one, or the new bytes would not splice onto it."""
        assert self.resume is not None
        if self._frame_md5.hexdigest() != self.resume.frame_md5:
            raise CannotResume(
                "the conversion made other bytes than the stored ones since its last frame "
                "start (another zstd version?)"
            )
        self._checked = True

    # -- the raw disk ----------------------------------------------------------------------

    def _raw(self, start: int, pool: ThreadPoolExecutor) -> Iterator[memoryview]:
        """The raw disk from ``start``, in order, reading stored clusters ahead."""
        reader = self.reader
        pending: deque[tuple[list[Extent], Future[bytes] | None, int]] = deque()
        in_flight = 0
        groups = _groups(reader.extents(start))
        exhausted = False
        position: int | None = None  # guest offset of the next byte the extents give
        while True:
            while not exhausted and in_flight < READ_AHEAD:
                group = next(groups, None)
                if group is None:
                    exhausted = True
                    break
                stored = [extent for extent in group if extent.kind != ZERO]
                if not stored:
                    pending.append((group, None, 0))
                    continue
                low = stored[0].host
                size = max(e.host + e.host_length for e in stored) - low
                pending.append((group, pool.submit(reader.source.read, low, size), size))
                in_flight += size
            if not pending:
                return
            group, future, length = pending.popleft()
            in_flight -= length
            data = future.result() if future is not None else b""
            base = next((extent.host for extent in group if extent.kind != ZERO), 0)
            if position is None:
                position = group[0].guest
            for extent in group:
                for chunk in self._extent(extent, data, base):
                    end = position + len(chunk)
                    if end > start:
                        yield chunk[start - position :] if position < start else chunk
                    position = end

    def _extent(self, extent: Extent, data: bytes, base: int) -> Iterator[memoryview]:
        if extent.kind == ZERO:
            left = extent.length
            while left:
                take = min(left, len(_ZEROS))
                yield _ZEROS[:take]
                left -= take
        elif extent.kind == DATA:
            stored = memoryview(data)[extent.host - base : extent.host - base + extent.length]
            yield stored
            if len(stored) < extent.length:  # past the end of the file reads as zeros
                yield _ZEROS[: extent.length - len(stored)]
        else:
            at = extent.host - base
            yield memoryview(self.reader.inflate(data[at : at + extent.host_length]))[
                : extent.length
            ]


def _groups(extents: Iterator[Extent]) -> Iterator[list[Extent]]:
    """Extents in read units: runs of extents whose stored bytes lie one after the other in
    the file (at most :data:`READ_GAP` apart, :data:`GROUP_BYTES` in all), the zero extents
    between them included, are read with one ranged GET; zero extents alone need none."""
    group: list[Extent] = []
    low = high = 0
    for extent in extents:
        if extent.kind == ZERO:
            if group:
                group.append(extent)
            else:
                yield [extent]
            continue
        start, end = extent.host, extent.host + extent.host_length
        # Compressed clusters' sector spans overlap their neighbours' by up to 511 bytes.
        if group and low <= start <= high + READ_GAP and max(high, end) - low <= GROUP_BYTES:
            group.append(extent)
            high = max(high, end)
            continue
        if group:
            yield group
        group, low, high = [extent], start, end
    if group:
        yield group


class _Counter:
    """A sink that counts what the round-trip check decompresses, and keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)


class _Hashing:
    """The raw MD5, computed by a thread of its own beside the compression (hashlib and
    libcrypto release the GIL), at most :data:`HASH_QUEUE` chunks behind. A context manager:
    the thread ends with the block."""

    def __init__(self, md5: Md5) -> None:
        self.md5 = md5
        self._queue: queue.Queue[object] = queue.Queue(HASH_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="raw-md5", daemon=True)
        self._thread.start()

    def __enter__(self) -> _Hashing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                if isinstance(item, _Ask):
                    item.set_result(self.md5.export() if item.exported else self.md5.hexdigest())
                elif self._error is None:
                    self.md5.update(cast(memoryview, item))
            except BaseException as error:  # told at the next export or digest
                self._error = error
                if isinstance(item, _Ask) and not item.done():
                    item.set_exception(error)

    def update(self, data: memoryview) -> None:
        self._queue.put(data)

    def _ask(self, exported: bool) -> Future[Any]:
        future = _Ask(exported)
        self._queue.put(future)
        return future

    def export(self) -> Future[str | None]:
        """The state once every byte given so far is hashed (a future)."""
        return self._ask(True)

    def hexdigest(self) -> str:
        """The digest of every byte given (waits for them)."""
        digest = self._ask(False).result()
        if self._error is not None:
            raise self._error
        return str(digest)


class _Ask(Future[Any]):
    """A question to the hashing thread: the state (``exported``) or the digest."""

    def __init__(self, exported: bool) -> None:
        super().__init__()
        self.exported = exported
