"""The export download: an allowlisted, resumable HTTP GET read straight into part buffers.

The presigned URL is a credential: it is never logged and never put in an error
message; messages name the host only.

Policy (:func:`check_download_url`): the host must match one of
``TransferSettings.allowed_download_hosts`` (shell patterns, default ``*.exo.io``);
https is required except for loopback hosts and for a scheme-qualified entry
(``http://simulator:8080``: that scheme, that exact host and port); URLs with user info are refused;
redirects are never followed (a 3xx is an error), so the allowlist cannot be
sidestepped; TLS certificates are verified (aiohttp's default, never turned off).

Faults (:class:`Download`): a dropped, reset, stalled or short connection is
reopened with ``Range: bytes=OFFSET-`` pinned by ``If-Range`` to the first
response's ETag (or Last-Modified), so the stream continues where it stopped
and a changed file is detected instead of spliced. A 401/403 (expired URL) asks
the source for a fresh URL and continues. 5xx and 429 answers are retried.
A connection slower than a minimal rate is reopened the same way. Failures in a row
without progress are bounded by :class:`DownloadRetry`, and so the time an unreachable
or trickling host takes to fail. aiohttp's exceptions are never shown: their text
holds the URL.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import yarl

from worker.errors import AuthError, DownloadRefused, NotFound, ShortRead, TransferError
from worker.retry import RetryPolicy
from worker.settings import download_endpoint

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: A DNS name as the client will resolve it: labels of letters, digits, ``-`` and ``_``, none
#: empty. Everything else (NUL and other control characters, spaces, ``;``, ``\\``, ``%``,
#: a trailing dot) is refused: resolvers read such names in ways a pattern match does not.
_HOSTNAME = re.compile(r"^[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$")


def _valid_host(host: str) -> bool:
    if ":" in host:  # only an IPv6 literal has colons in it
        try:
            return ipaddress.IPv6Address(host).scope_id is None
        except ValueError:
            return False
    return bool(_HOSTNAME.match(host))


def _endpoint(entry: str) -> tuple[str, str, int] | str | None:
    """An allowlist entry's (scheme, host, port), ``None`` for a host pattern; a malformed
    scheme-qualified entry (settings refuse them) matches nothing."""
    try:
        return download_endpoint(entry)
    except ValueError:
        return "malformed"


def check_download_url(url: str, allowed_hosts: Sequence[str]) -> str:
    """Return the host of ``url`` if the download policy allows it.

    The URL is parsed twice, by :func:`urllib.parse.urlsplit` and by yarl exactly as the
    request is made (``yarl.URL(url, encoded=True)``); where they disagree on the scheme,
    host, port or user info, or where the host is not a plain DNS name or IP address, the
    URL is refused: the host checked must be the host connected to.

    Parameters:
      url: The presigned URL.
      allowed_hosts: Shell patterns (``fnmatch``) a host must match, case-insensitively,
        with https (or http on loopback); or ``scheme://host[:port]`` entries
        (:func:`~worker.settings.download_endpoint`), each allowing one scheme, host and port.

    Raises:
      DownloadRefused: Naming the host (never the URL) and the rule it breaks.
    """
    malformed = DownloadRefused("refusing to download: the export URL is malformed")
    # Control characters and spaces belong nowhere in a URL (they are sent %-encoded); the
    # parsers drop some of them silently (tab, newline) and keep others (NUL).
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise malformed
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
        sent = yarl.URL(url, encoded=True)
        sent_host = (sent.raw_host or "").lower()
    except ValueError:
        raise malformed from None
    if not host and not sent_host:
        raise DownloadRefused("refusing to download: the export URL has no host")
    if (
        sent_host != host
        or sent.scheme != parts.scheme.lower()
        or sent.explicit_port != port
        or (sent.raw_user, sent.raw_password) != (parts.username, parts.password)
        or not _valid_host(host)
    ):
        raise malformed
    if parts.username is not None or parts.password is not None:
        raise DownloadRefused(f"refusing to download from {host}: URL carries user info")
    scheme = parts.scheme.lower()
    endpoint = (scheme, host, port or {"https": 443, "http": 80}.get(scheme, 0))
    entries = [(entry, _endpoint(entry)) for entry in allowed_hosts]
    if any(named == endpoint for _, named in entries):
        return host  # a scheme-qualified entry names exactly this scheme, host and port
    if scheme != "https" and not (scheme == "http" and _is_loopback(host)):
        raise DownloadRefused(
            f"refusing to download from {host}: {parts.scheme or 'no'} scheme "
            "(https is required except on loopback or for an http://HOST:PORT entry)"
        )
    patterns = [entry.lower() for entry, named in entries if named is None]
    if not any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns):
        raise DownloadRefused(
            f"refusing to download from {host}: not in SNAPARCHIVE_ALLOWED_DOWNLOAD_HOSTS"
        )
    return host


#: 8 attempts in a row; waits of 1 s doubling up to 15 s: 60 s of waiting at most.
DOWNLOAD_BACKOFF = RetryPolicy(attempts=8, base=1.0, cap=15.0)


@dataclass(frozen=True)
class DownloadRetry:
    """How long to keep trying when the download keeps failing, and what counts as failing.

    Parameters:
      backoff: Failed attempts in a row before the download gives up, and the waits between
        them (default :data:`DOWNLOAD_BACKOFF`: 8 attempts, at most 60 s of waiting in all).
      url_refreshes: Fresh URLs to try in a row while the server keeps answering
        401/403; default 3.
      connect_timeout: Seconds to resolve, connect, handshake and receive the response
        headers; default 15.
      min_bytes, window: The slowest connection kept. One that delivers fewer than
        ``min_bytes`` in ``window`` seconds of waiting for data, or nothing at all for
        ``window`` seconds, fails and is reopened from its offset with Range (default 64 KiB
        in 60 s). Time the reader spends elsewhere (waiting for a free part buffer) is not
        counted.

    A failure counts towards ``backoff`` until ``min_bytes`` arrive after it, so a host
    that trickles fails like one that is down. With the defaults, an unreachable host (or
    one that never answers) fails the download within 3 minutes (8 tries of 15 s and 60 s
    of waits), and a trickling one within 9 minutes (8 windows of 60 s and the waits).
    """

    backoff: RetryPolicy = DOWNLOAD_BACKOFF
    url_refreshes: int = 3
    connect_timeout: float = 15.0
    min_bytes: int = 64 * 1024
    window: float = 60.0


class Download:
    """One export file read in order from ``offset``, resuming across faults.

    Parameters:
      session: The aiohttp session. Its timeouts do not apply: each request carries the
        ones of ``retry``.
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
        # Bytes handed out since the last failure or URL refresh (see DownloadRetry).
        self._progress = 0
        # The current connection's pace: bytes and seconds spent waiting in this window.
        self._window_bytes = 0
        self._window_waited = 0.0
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._retry.connect_timeout,
            sock_connect=self._retry.connect_timeout,
            sock_read=self._retry.window,
        )

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
          ShortRead: When the retries ran out (failures in a row without progress).
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
                # Only our own words leave here: aiohttp's exceptions hold the URL.
                failure: str | None = None
                started = time.monotonic()
                try:
                    # One received chunk as it is: read(n) and readany() join (copy) chunks.
                    chunk, chunk_end = await self._response.content.readchunk()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    failure = f"connection lost ({type(exc).__name__})"
                else:
                    if not chunk and not chunk_end:  # (b"", True) only marks a chunk boundary
                        failure = "connection closed early"
                    else:
                        failure = self._too_slow(len(chunk), time.monotonic() - started)
                if failure is not None:
                    await self._failed(failure)
                    continue
                if not chunk:
                    continue
                self._pending = memoryview(chunk)
            take = min(len(self._pending), size - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
            self.offset += take
            self._progress += take
            if self._progress >= self._retry.min_bytes:
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

    def _too_slow(self, received: int, waited: float) -> str | None:
        """Count one read of the current connection; say why it is too slow, if it is."""
        self._window_bytes += received
        self._window_waited += waited
        if self._window_waited < self._retry.window:
            return None
        if self._window_bytes < self._retry.min_bytes:
            return f"fewer than {self._retry.min_bytes} bytes in {self._retry.window:g}s"
        self._window_bytes, self._window_waited = 0, 0.0
        return None

    async def _failed(self, reason: str) -> None:
        """Count a failure; wait before the next attempt, or give up."""
        self._drop()
        self._failures += 1
        self._progress = 0
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
        # Only our own words leave here: aiohttp's exceptions hold the URL.
        failure: str | None = None
        try:
            async with asyncio.timeout(self._retry.connect_timeout):
                response = await self._session.get(
                    yarl.URL(self._url, encoded=True),
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
        except aiohttp.InvalidURL:
            raise DownloadRefused(
                f"refusing to download from {self._host}: the URL is malformed"
            ) from None
        except aiohttp.ClientResponseError as exc:
            # aiohttp refused the answer itself (a bad status line, a bad Content-Length,
            # Content-Length with Transfer-Encoding, ...): a faulty server, retried like a 5xx.
            failure = f"malformed response ({type(exc).__name__})"
        except TimeoutError as exc:
            failure = f"no answer within {self._retry.connect_timeout:g}s ({type(exc).__name__})"
        except (aiohttp.ClientError, OSError) as exc:
            failure = f"cannot connect ({type(exc).__name__})"
        if failure is not None:
            await self._failed(failure)
            return
        self._window_bytes, self._window_waited = 0, 0.0
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
        self._progress = 0
        log.info("download from %s: HTTP %d, asking for a fresh URL", self._host, status)
        url = await self._refresh_url()
        self._host = check_download_url(url, self._allowed)
        self._url = url
