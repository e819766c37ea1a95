"""What the pipeline steps work with: settings, job store, Exoscale client, archive store.

One :class:`Context` per process and event loop. Dramatiq workers build it lazily on the
AsyncIO middleware's loop (aiohttp sessions and async Redis clients belong to one loop);
``snaparchive archive --local`` builds one with a memory job store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from worker.archive import ArchiveStore
from worker.exoscale import ExoscaleClient
from worker.jobstore import JobStore
from worker.settings import Settings

#: ``launch(step, a, b)``: start the chain of another job at ``step``, with its two arguments.
Launch = Callable[[str, str, str], Awaitable[None]]


async def _no_launcher(step: str, a: str, b: str) -> None:
    raise RuntimeError(f"no driver set Context.launch (starting {step})")


@dataclass
class Context:
    """The adapters one process's steps share.

    Attributes:
      settings: Everything read from the environment.
      store: Where job state lives.
      exoscale: The API client.
      archive: The S3 archive store.
      owner: This process's lease token (host, pid and a random part).
      shutdown: Set when the process is stopping; transfers checkpoint and yield.
      launch: Starts another job's chain at a step (``launch(step, a, b)``): a message on the
        broker for workers, a task of this process for ``--local`` (set by the driver).
    """

    settings: Settings
    store: JobStore
    exoscale: ExoscaleClient
    archive: ArchiveStore
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    launch: Launch = field(default=_no_launcher, repr=False)

    @classmethod
    def create(cls, settings: Settings, store: JobStore, transfers: int = 1) -> Context:
        """Build the adapters from ``settings``; raises ConfigError for what is missing.

        Parameters:
          settings: Everything read from the environment.
          store: The job store.
          transfers: Transfers this process may run at once (a worker's ``--threads``;
            default 1, as ``archive --local``).
        """
        settings.s3.require_bucket()
        return cls(
            settings=settings,
            store=store,
            exoscale=ExoscaleClient(settings.exoscale),
            # Each transfer keeps ``upload_concurrency`` parts uploading, plus one control call
            # (ListParts, Complete...) at a time: the store's threads serve them all.
            archive=ArchiveStore(
                settings.s3,
                max_workers=(settings.transfer.upload_concurrency + 1) * transfers,
            ),
        )

    async def close(self) -> None:
        await self.exoscale.close()
        await self.archive.close()
        await self.store.close()
