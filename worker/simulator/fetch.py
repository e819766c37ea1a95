"""What register-template does with its ``url``: read it over HTTP, like Exoscale would.

The simulator is a plain HTTP client here, of any host (S3 presigned URLs, moto, its own
exports, loopback included: the download allowlist of snaparchive does not apply to it). The
body is streamed and hashed chunk by chunk, never held in memory, and the outcome is a
:class:`FetchResult`: the bytes read and their MD5, or why the URL could not be read. The URL
is a credential when presigned, so no result, message or log line carries it: only its host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

logger = logging.getLogger("worker.simulator")

#: Bytes read (and hashed) at a time.
CHUNK_SIZE = 1 << 20
#: Connect within 10 s and see a byte at least every 60 s; no bound on the whole body.
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)


@dataclass(frozen=True)
class FetchResult:
    """The outcome of reading a template URL.

    Parameters:
      host: The URL's host (the URL itself is a credential and is not kept).
      size: Bytes read.
      md5: MD5 hex of the bytes read (a ``register_mismatch`` fault hashes one more byte);
        None when the URL could not be read to its end.
      error: Why it could not be read (no URL in it), or None.
      reason: The operation ``reason`` the error maps to: ``incorrect`` when the server
        refused the request (4xx), ``unavailable`` when it failed (5xx), could not be reached
        or broke off, ``interrupted`` when the simulator stopped first.
    """

    host: str
    size: int = 0
    md5: str | None = None
    error: str | None = None
    reason: str | None = None


def host_of(url: str) -> str:
    """Return the host of ``url`` (empty when it has none)."""
    return urlsplit(url).hostname or ""


class TemplateFetcher:
    """Reads template URLs on an event loop and reports through concurrent futures.

    Parameters:
      loop: The loop the fetches run on (the simulator server's).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def start(self, url: str, *, unreachable: bool, mismatch: bool) -> Future[FetchResult]:
        """Start reading ``url``; return a future of its :class:`FetchResult`.

        May be called from any thread. The future always settles: with the result, or with
        an ``interrupted`` one when the simulator stops first.

        Parameters:
          url: An HTTP(S) URL.
          unreachable: Do not read it; report a refused connection (a fault).
          mismatch: Hash one byte more than was read (a fault).
        """
        future: Future[FetchResult] = Future()
        self._loop.call_soon_threadsafe(self._spawn, url, unreachable, mismatch, future)
        return future

    def _spawn(
        self, url: str, unreachable: bool, mismatch: bool, future: Future[FetchResult]
    ) -> None:
        task = self._loop.create_task(self._run(url, unreachable, mismatch, future))
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not future.done():  # cancelled, maybe before it even started
                interrupted = FetchResult(
                    host_of(url), error="the simulator stopped", reason="interrupted"
                )
                future.set_result(interrupted)

        task.add_done_callback(done)

    async def _run(
        self, url: str, unreachable: bool, mismatch: bool, future: Future[FetchResult]
    ) -> None:
        host = host_of(url)
        try:
            if unreachable:
                result = FetchResult(
                    host,
                    error=f"cannot download the template from {host}: connection refused",
                    reason="unavailable",
                )
            else:
                result = await self._fetch(url, host, mismatch)
        except Exception as exc:  # reported as the operation's failure, not lost
            # The class only: an exception's text may quote the URL.
            logger.error("template fetch from %s failed: %s", host, type(exc).__name__)
            future.set_result(
                FetchResult(host, error=f"internal error ({type(exc).__name__})", reason="fault")
            )
            return
        logger.info(
            "template fetch from %s: %d bytes, %s",
            host,
            result.size,
            result.error or f"md5 {result.md5}",
        )
        future.set_result(result)

    async def _fetch(self, url: str, host: str, mismatch: bool) -> FetchResult:
        if self._session is None:
            # The checksum is that of the bytes as stored: ask for no encoding, undo none.
            self._session = aiohttp.ClientSession(
                timeout=FETCH_TIMEOUT,
                auto_decompress=False,
                headers={"Accept-Encoding": "identity"},
            )
        digest = hashlib.md5()
        size = 0
        pending = bytearray()
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    # 4xx: a bad, expired or forbidden URL; 5xx: its server is failing.
                    return FetchResult(
                        host,
                        error=f"cannot download the template from {host}: HTTP {response.status}",
                        reason="incorrect" if response.status < 500 else "unavailable",
                    )
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    size += len(chunk)
                    pending += chunk
                    if len(pending) >= CHUNK_SIZE:
                        # Off the loop: it also serves downloads, maybe of this very file.
                        full, pending = pending, bytearray()
                        await asyncio.to_thread(digest.update, full)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return FetchResult(
                host,
                size=size,
                error=f"cannot download the template from {host}: {_describe(exc)}",
                reason="unavailable",
            )
        digest.update(pending)
        if mismatch:
            digest.update(b"\0")  # other bytes than the ones read
        return FetchResult(host, size=size, md5=digest.hexdigest())

    async def close(self) -> None:
        """Cancel the fetches in flight (their futures settle as interrupted); close the session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException) -> str:
    # Never str(exc) of an aiohttp error that may quote the URL: its class and safe details.
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection broke off before the end of the body"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return "cannot resolve the host name"
        errno = exc.os_error.errno
        return f"cannot connect ({os.strerror(errno) if errno else type(exc.os_error).__name__})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return type(exc).__name__
