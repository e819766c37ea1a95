"""The download policy and fault handling against a tiny local HTTP server.

The simulator serves well-behaved presigned downloads; this server misbehaves on purpose
(redirects, refuses forever, ignores Range, changes the file) so each rule can be seen.
"""

import asyncio
import hashlib
import logging

import aiohttp
import pytest
from aiohttp import web

from worker.download import Download, DownloadRetry
from worker.errors import AuthError, DownloadRefused, TransferError
from worker.retry import RetryPolicy
from worker.transfer import ExportSource, archive_export
from worker.units import MiB

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * (6 * MiB // 256) + b"tail"
FAST_RETRY = DownloadRetry(RetryPolicy(attempts=3, base=0.01), url_refreshes=2)


class Origin:
    """Serves DATA at /img; ``mode`` picks the misbehaviour."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.etag = '"v1"'

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "redirect":
            raise web.HTTPFound("http://127.0.0.1:1/elsewhere")
        if self.mode == "forbidden":
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        if self.mode == "unavailable" and self.requests <= 2:
            return web.Response(status=503)
        start = 0
        ranged = request.headers.get("Range")
        pinned = request.headers.get("If-Range", self.etag) == self.etag
        if ranged and pinned and self.mode != "ignores-range":
            start = int(ranged.removeprefix("bytes=").rstrip("-"))
        response = web.StreamResponse(status=206 if start else 200, headers={"ETag": self.etag})
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"
        if start and self.mode == "chunked":
            response.enable_chunked_encoding()  # a resumed body in chunks of 1 MiB
        else:
            response.content_length = len(DATA) - start
        await response.prepare(request)
        if self.mode == "chunked" and start:
            for offset in range(start, len(DATA), MiB):
                await response.write(DATA[offset : offset + MiB])
            return response
        if self.mode in ("ignores-range", "changes", "chunked") and self.requests == 1:
            await response.write(DATA[start : start + 2 * MiB])
            if self.mode == "changes":
                self.etag = '"v2"'
            request.transport.close()  # cut the first response short
            return response
        await response.write(DATA[start:])
        return response


@pytest.fixture
async def origin(request):
    server = Origin(request.param)
    app = web.Application()
    app.router.add_get("/img", server.handle)
    runner = web.AppRunner(app, access_log=None)  # its own log would show the URL
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/img?sig=SECRET"
    yield server
    await runner.cleanup()


def _source(url: str, refreshes: list[int]) -> ExportSource:
    async def refresh_url() -> str:
        refreshes.append(1)
        return url

    return ExportSource(
        provider="exoscale",
        zone="ch-gva-2",
        snapshot_id="5e1b2f61-2e0b-4bd6-a1f4-0e1e0c3c7b9a",
        snapshot_name="web",
        instance_id=None,
        created_at=None,
        md5=hashlib.md5(DATA).hexdigest(),
        url=url,
        refresh_url=refresh_url,
    )


@pytest.mark.parametrize(
    ("origin", "error", "message"),
    [
        ("redirect", DownloadRefused, "refusing a redirect"),
        ("forbidden", AuthError, "HTTP 403 even with a fresh presigned URL"),
        (
            "ignores-range",
            TransferError,
            r"cannot resume at 2097152: the server sent the whole file \(it changed",
        ),
        (
            "changes",
            TransferError,
            r"cannot resume at 2097152: the server sent the whole file \(it changed",
        ),
    ],
    indirect=["origin"],
)
async def test_refused_downloads_leave_nothing(
    origin, archive_store, small_transfer, bucket, error, message, caplog
):
    caplog.set_level(logging.DEBUG, logger="worker")
    refreshes: list[int] = []
    with pytest.raises(error, match=message) as raised:
        await archive_export(
            _source(origin.url, refreshes), archive_store, small_transfer, retry=FAST_RETRY
        )
    assert "SECRET" not in str(raised.value) and "SECRET" not in caplog.text
    bucket.assert_empty()
    if origin.mode == "forbidden":
        assert len(refreshes) == FAST_RETRY.url_refreshes


@pytest.mark.parametrize("origin", ["unavailable", "chunked"], indirect=True)
async def test_server_errors_and_chunked_resumes_work(
    origin, archive_store, small_transfer, bucket
):
    result = await archive_export(
        _source(origin.url, []), archive_store, small_transfer, retry=FAST_RETRY
    )
    assert bucket.md5([result.objects[0].key]) == hashlib.md5(DATA).hexdigest()
    assert origin.requests == (3 if origin.mode == "unavailable" else 2)


async def test_a_url_outside_the_allowlist_is_refused_before_any_request(
    archive_store, small_transfer, bucket
):
    source = _source("https://evil.example.com/img?sig=SECRET", [])
    with pytest.raises(DownloadRefused, match=r"evil\.example\.com: not in"):
        await archive_export(source, archive_store, small_transfer)
    bucket.assert_empty()


@pytest.mark.parametrize("origin", ["plain"], indirect=True)
async def test_a_refreshed_url_is_checked_against_the_policy(origin):
    async def refresh_url() -> str:
        return "https://evil.example.com/img"

    origin.mode = "forbidden"
    async with aiohttp.ClientSession() as session:
        download = Download(session, origin.url, refresh_url, ["127.0.0.1"])
        with pytest.raises(DownloadRefused, match=r"evil\.example\.com"):
            await asyncio.wait_for(download.open(), 30)
