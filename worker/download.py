"""The export download: an allowlisted, resumable HTTP GET read straight into part buffers.

The presigned URL is a credential: it is never logged and never put in an error
message; messages name the host only.

Policy (:func:`check_download_url`): the host must match one of
``TransferSettings.allowed_download_hosts`` (shell patterns, default ``*.exo.io``);
https is required except for loopback hosts; URLs with user info are refused;
redirects are never followed (a 3xx is an error), so the allowlist cannot be
sidestepped; TLS certificates are verified (aiohttp's default, never turned off).

Faults (:class:`Download`): a dropped, reset, stalled or short connection is
reopened with ``Range: bytes=OFFSET-`` pinned by ``If-Range`` to the first
response's ETag (or Last-Modified), so the stream continues where it stopped
and a changed file is detected instead of spliced. A 401/403 (expired URL) asks
the source for a fresh URL and continues. 5xx and 429 answers are retried.
Consecutive failures without progress are bounded by :class:`DownloadRetry`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import yarl

from worker.errors import AuthError, DownloadRefused, NotFound, ShortRead, TransferError
from worker.retry import RetryPolicy

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_download_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """Return the host of ``url`` if the download policy allows it.

    Parameters:
      url: The presigned URL.
      allowed_hosts: Shell patterns (``fnmatch``) a host must match, case-insensitively.

    Raises:
      DownloadRefused: Naming the host (never the URL) and the rule it breaks.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise DownloadRefused("refusing to download: the export URL is malformed") from None
    if not host:
        raise DownloadRefused("refusing to download: the export URL has no host")
    if parts.username is not None or parts.password is not None:
        raise DownloadRefused(f"refusing to download from {host}: URL carries user info")
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(host)):
        raise DownloadRefused(
            f"refusing to download from {host}: {parts.scheme or 'no'} scheme "
            "(https is required except on loopback)"
        )
    if not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed_hosts):
        raise DownloadRefused(
            f"refusing to download from {host}: not in SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS"
        )
    return host


DOWNLOAD_BACKOFF = RetryPolicy(attempts=12, base=0.5, cap=30.0)


@dataclass(frozen=True)
class DownloadRetry:
    """How long to keep trying when the download keeps failing without progress.

    Parameters:
      backoff: Consecutive failed attempts (without a byte of progress) and the waits
        between them; default 12 attempts from 0.5 s doubling up to 30 s (about 3.5
        minutes of waiting in all).
      url_refreshes: Fresh URLs to try in a row while the server keeps answering
        401/403; default 3.
    """

    backoff: RetryPolicy = DOWNLOAD_BACKOFF
    url_refreshes: int = 3


class Download:
    """One export file read in order from ``offset``, resuming across faults.

    Parameters:
      session: The aiohttp session (its timeouts bound a stalled read).
      url: The presigned URL (checked against the policy).
      refresh_url: Coroutine function returning a fresh presigned URL.
      allowed_hosts: Host patterns of the policy.
      offset: First byte to read; default 0.
      total: The file size when known (a resumed transfer); checked against the server.
      validator: ETag or Last-Modified seen earlier, to pin ``If-Range`` on.
      retry: Bounds on retries; default :class:`DownloadRetry()`.
      on_bytes: Called with the new offset after every chunk (cheap progress).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        refresh_url: Callable[[], Awaitable[str]],
        allowed_hosts: Sequence[str],
        *,
        offset: int = 0,
        total: int | None = None,
        validator: str | None = None,
        retry: DownloadRetry | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._session = session
        self._allowed = tuple(allowed_hosts)
        self._host = check_download_url(url, self._allowed)
        self._url = url
        self._refresh_url = refresh_url
        self.offset = offset
        self.total = total
        self.validator = validator
        self._retry = retry or DownloadRetry()
        self._on_bytes = on_bytes
        self._response: aiohttp.ClientResponse | None = None
        # Received bytes from :attr:`offset` on, not yet handed out (the rest of a chunk).
        self._pending = memoryview(b"")
        self._failures = 0
        self._refreshes = 0

    async def open(self) -> int:
        """Connect (if not yet) and return the file size from the server."""
        while self._response is None:
            await self._connect()
        assert self.total is not None
        return self.total

    async def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next bytes of the file; return how many were written.

        Fewer than ``len(view)`` only at the end of the file.

        Raises:
          ShortRead: When the retries ran out without progress.
          TransferError: When the file changed under us; others as :meth:`_connect`.
        """
        filled = 0
        size = len(view)
        while filled < size:
            if self.total is not None and self.offset >= self.total:
                break
            if not self._pending:
                if self._response is None:
                    await self._connect()
                    continue
                try:
                    # One received chunk as it is: read(n) and readany() join (copy) chunks.
                    chunk, chunk_end = await self._response.content.readchunk()
                except (
                    aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError,
                    TimeoutError,
                ) as exc:
                    await self._failed(f"connection lost ({type(exc).__name__})")
                    continue
                if not chunk:
                    if not chunk_end:  # (b"", True) only marks a chunked-encoding boundary
                        await self._failed("connection closed early")
                    continue
                self._pending = memoryview(chunk)
            take = min(len(self._pending), size - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
            self.offset += take
            self._failures = 0
            self._refreshes = 0
            if self._on_bytes is not None:
                self._on_bytes(self.offset)
        return filled

    async def close(self) -> None:
        """Drop the connection (the session stays open)."""
        self._drop()

    def _drop(self) -> None:
        self._pending = memoryview(b"")  # the next request starts at offset again
        if self._response is not None:
            # A finished body returns its connection to the pool; an unfinished one must not
            # be drained (it may hold terabytes), so its connection is closed.
            if self._response.content.at_eof():
                self._response.release()
            else:
                self._response.close()
            self._response = None

    async def _failed(self, reason: str) -> None:
        """Count a failure without progress; wait before the next attempt, or give up."""
        self._drop()
        self._failures += 1
        where = f"at byte {self.offset}" + (f" of {self.total}" if self.total else "")
        if self._failures >= self._retry.backoff.attempts:
            raise ShortRead(
                f"download from {self._host} failed {where} after "
                f"{self._failures} attempts: {reason}"
            )
        delay = self._retry.backoff.delay(self._failures)
        log.warning("download from %s %s: %s; retrying in %.1fs", self._host, where, reason, delay)
        await asyncio.sleep(delay)

    async def _connect(self) -> None:
        """Send one GET from :attr:`offset`; on success :attr:`_response` is the open body."""
        headers = {"Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        try:
            response = await self._session.get(
                yarl.URL(self._url, encoded=True), headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            await self._failed(f"cannot connect ({type(exc).__name__})")
            return
        status = response.status
        if status in (200, 206):
            try:
                self._accept(response)
            except BaseException:
                response.close()
                raise
            self._response = response
            return
        response.close()
        if status in (401, 403):
            await self._refresh(status)
        elif status in (404, 410):
            raise NotFound(f"download from {self._host}: HTTP {status}, the export is gone", status)
        elif 300 <= status < 400:
            raise DownloadRefused(f"refusing a redirect (HTTP {status}) from {self._host}")
        elif status == 429 or status >= 500:
            await self._failed(f"HTTP {status}")
        else:
            raise TransferError(f"download from {self._host} answered HTTP {status}")

    def _accept(self, response: aiohttp.ClientResponse) -> None:
        """Check a 200/206 answer against what we asked for and what we saw before."""
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != self.offset:
                raise TransferError(f"download from {self._host}: bad Content-Range for a resume")
            total = int(match.group(3))
        elif self.offset:
            # A full body for a ranged request: If-Range saw another file, or no range support.
            raise TransferError(
                f"download from {self._host}: cannot resume at {self.offset}: the server sent "
                "the whole file (it changed, or ignores Range)"
            )
        else:
            if response.content_length is None:
                raise TransferError(f"download from {self._host}: no Content-Length")
            total = response.content_length
        if self.total is not None and total != self.total:
            raise TransferError(
                f"download from {self._host}: the file is {total} bytes now, was {self.total}"
            )
        self.total = total
        etag = response.headers.get("ETag")
        # If-Range takes a strong ETag or a date; a weak ETag cannot pin a range.
        fresh = (
            etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
        )
        if self.validator is None:
            self.validator = fresh

    async def _refresh(self, status: int) -> None:
        """Replace an expired or refused URL with a fresh one from the source."""
        self._refreshes += 1
        if self._refreshes > self._retry.url_refreshes:
            raise AuthError(
                f"download from {self._host}: HTTP {status} even with a fresh presigned URL", status
            )
        log.info("download from %s: HTTP %d, asking for a fresh URL", self._host, status)
        url = await self._refresh_url()
        self._host = check_download_url(url, self._allowed)
        self._url = url
