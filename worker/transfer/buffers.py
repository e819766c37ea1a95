"""The part buffers of one transfer: a bounded pool, and the buffers held for the checkpoint."""

from __future__ import annotations

import asyncio


class PartBuffers:
    """At most ``limit`` buffers of ``size`` bytes, made on first need and reused.

    A part's buffer goes back to the pool only once the checkpoint has passed the part
    (:meth:`hold`, then :meth:`release`): the download is then never more than the buffers
    ahead of the saved checkpoint, which bounds what a resume after a crash reads again.

    Parameters:
      size: Bytes per buffer (the part size, or the whole image when it is smaller).
      limit: Buffers at most (:func:`worker.parts.buffer_count`).
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self.allocated = 0
        self._free: asyncio.Queue[bytearray] = asyncio.Queue()
        self._held: dict[int, bytearray] = {}

    async def take(self) -> bytearray:
        """Return a free buffer, waiting for one when all ``limit`` are in use."""
        if self._free.empty() and self.allocated < self.limit:
            self.allocated += 1
            return bytearray(self.size)
        return await self._free.get()

    def give_back(self, buffer: bytearray) -> None:
        """Return a buffer whose part needs no checkpoint (it failed)."""
        self._free.put_nowait(buffer)

    def hold(self, index: int, buffer: bytearray) -> None:
        """Keep the buffer of part ``index`` until the checkpoint passes it."""
        self._held[index] = buffer

    def release(self, index: int) -> None:
        """The checkpoint passed part ``index``: its buffer is free again."""
        self._free.put_nowait(self._held.pop(index))
