"""How long a download keeps trying: unreachable, silent and trickling hosts fail in bounds.

The sessions here have the transfer engine's timeouts (``worker.transfer.archive_export``:
30 s to connect, 120 s between reads): the download's own per-request timeouts replace them.
Parameters are small so each case takes a few seconds; assertions count attempts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading

import aiohttp
import pytest

from tests.fixtures.hostile import RawServer, closed_port
from worker.download import Download, DownloadRetry
from worker.errors import ShortRead
from worker.retry import RetryPolicy

pytestmark = pytest.mark.integration

SIZE = 1 << 20
#: Far longer than any case takes with the fix; without it, the test fails instead of hanging.
GUARD = 60


def _range_start(head: bytes) -> int:
    match = re.search(rb"\r\nRange: bytes=(\d+)-", head)
    return int(match.group(1)) if match else 0


def paced(chunk: int, every: float):
    """An answer serving SIZE bytes (Range honoured), ``chunk`` bytes every ``every`` s."""

    def answer(head: bytes, connection: socket.socket, stop: threading.Event) -> None:
        start = _range_start(head)
        status = b"206 Partial Content" if start else b"200 OK"
        headers = [b"HTTP/1.1 " + status, f"Content-Length: {SIZE - start}".encode(), b'ETag: "v1"']
        if start:
            headers.append(f"Content-Range: bytes {start}-{SIZE - 1}/{SIZE}".encode())
        connection.sendall(b"\r\n".join(headers) + b"\r\n\r\n")
        sent = start
        while sent < SIZE and not stop.wait(every):
            piece = min(chunk, SIZE - sent)
            connection.sendall(b"x" * piece)
            sent += piece

    return answer


def silent(head: bytes, connection: socket.socket, stop: threading.Event) -> None:
    """Accepts the request and never answers."""
    stop.wait()


def _transfer_session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    return aiohttp.ClientSession(timeout=timeout, auto_decompress=False)


async def _never_refreshed() -> str:
    raise AssertionError("no 401/403 here")


async def _read_all(download: Download, size: int) -> int:
    buffer = bytearray(size)
    return await asyncio.wait_for(download.readinto(memoryview(buffer)), GUARD)


async def test_a_trickling_host_is_reconnected_with_range_then_given_up_on(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="worker.download")
    retry = DownloadRetry(RetryPolicy(attempts=3, base=0.01), min_bytes=100, window=1.0)
    with RawServer(paced(1, 0.2)) as server:
        async with _transfer_session() as session:
            download = Download(
                session, server.url + "/img?sig=S", _never_refreshed, ["127.0.0.1"], retry=retry
            )
            with pytest.raises(ShortRead, match=r"after 3 attempts: fewer than 100 bytes in 1s"):
                await _read_all(download, SIZE)
    # Each connection delivered a few bytes; each next one asked for the rest with Range.
    assert len(server.heads) == 3
    starts = [_range_start(head) for head in server.heads]
    assert starts[0] == 0 and 0 < starts[1] < starts[2] < download.offset < 100
    assert all(server.header(i, b"If-Range") == b'"v1"' for i in (1, 2))
    assert caplog.text.count("fewer than 100 bytes in 1s; retrying") == 2


async def test_a_stream_faster_than_the_minimum_is_kept() -> None:
    # Ten times the minimum rate: one connection from the first byte to the last.
    retry = DownloadRetry(RetryPolicy(attempts=2, base=0.01), min_bytes=100, window=1.0)
    total = 3000
    with RawServer(paced(100, 0.1)) as server:
        async with _transfer_session() as session:
            download = Download(
                session, server.url + "/img", _never_refreshed, ["127.0.0.1"], retry=retry
            )
            assert await _read_all(download, total) == total
            await download.close()
    assert len(server.heads) == 1


async def test_an_unreachable_host_fails_after_the_configured_attempts(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="worker.download")
    retry = DownloadRetry(RetryPolicy(attempts=4, base=0.01))
    url = f"http://127.0.0.1:{closed_port()}/img?sig=S"
    async with _transfer_session() as session:
        download = Download(session, url, _never_refreshed, ["127.0.0.1"], retry=retry)
        with pytest.raises(ShortRead, match=r"after 4 attempts: cannot connect"):
            await asyncio.wait_for(download.open(), GUARD)
    assert caplog.text.count("cannot connect (ClientConnectorError); retrying") == 3


async def test_a_host_that_never_answers_fails_after_the_configured_attempts() -> None:
    retry = DownloadRetry(RetryPolicy(attempts=2, base=0.01), connect_timeout=0.5)
    with RawServer(silent) as server:
        async with _transfer_session() as session:
            download = Download(
                session, server.url + "/img", _never_refreshed, ["127.0.0.1"], retry=retry
            )
            with pytest.raises(ShortRead, match=r"after 2 attempts: no answer within 0.5s"):
                await asyncio.wait_for(download.open(), GUARD)
    assert len(server.heads) == 2
