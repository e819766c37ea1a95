"""Presigned downloads of exported disk files, answered the way an S3 GET (SOS) answers.

``GET`` and ``HEAD`` on ``/sos/{zone}/exports/{export-id}/{snapshot-id}`` with a presigned query
string (see :mod:`worker.simulator.presign`). A bad signature or missing parameters is a 403
``SignatureDoesNotMatch``/``AccessDenied`` XML error, an expired URL a 403 ``AccessDenied``
"Request has expired", a deleted file a 404 ``NoSuchKey``. Responses carry ``Content-Length``,
``Accept-Ranges: bytes`` and ``ETag`` (the quoted MD5 of the file). One ``Range: bytes=``
range is answered with 206 and ``Content-Range`` (several ranges get the whole file, like S3);
``If-Match`` and ``If-Range`` are honoured for the ETag. Download faults (truncation, reset,
corruption, pacing) are applied per response, see :mod:`worker.simulator.faults`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import Iterator
from xml.sax.saxutils import escape

from aiohttp import web

from worker.simulator.disk import BLOCK_SIZE
from worker.simulator.faults import DownloadPlan
from worker.simulator.presign import PresignError
from worker.simulator.state import SimState


class RangeNotSatisfiable(ValueError):
    """A byte range that lies outside the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the ``[start, end)`` asked for by a ``Range`` header, or None for the whole file.

    Headers in another unit, with several ranges or malformed are ignored, as HTTP allows.

    Raises:
      RangeNotSatisfiable: When the range starts at or beyond the end of the file.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[len("bytes=") :].strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size
    start = int(first)
    if last and not last.isdigit():
        return None
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, size if not last else min(int(last) + 1, size)


def s3_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Return an S3-style XML error response."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    )
    return web.Response(
        status=status, text=body, content_type="application/xml", headers=headers or {}
    )


def _drop_connection(request: web.Request, reset: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: closing sends a TCP RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # close() flushes what is buffered first, so the client gets the bytes before the cut.
    transport.close()


class Downloads:
    """The download route, over a :class:`SimState`."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET``/``HEAD /sos/{zone}/exports/{export_id}/{snapshot_id}``."""
        app.router.add_get(
            "/sos/{zone}/exports/{export_id}/{snapshot_id}", self.download, name="download"
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        """Serve (part of) an exported disk file."""
        info = request.match_info
        snapshot_id = info["snapshot_id"]
        try:
            image, md5 = self.state.download(
                info["zone"], info["export_id"], snapshot_id, request.path, request.query
            )
        except PresignError as exc:
            return s3_error(403, exc.code, exc.message)
        except LookupError:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        etag = f'"{md5}"'
        if request.headers.get("If-Match", etag) not in (etag, "*"):
            return s3_error(412, "PreconditionFailed", "At least one precondition failed.")
        range_header = request.headers.get("Range")
        if request.headers.get("If-Range", etag) != etag:
            range_header = None
        try:
            span = parse_range(range_header, image.size)
        except RangeNotSatisfiable:
            return s3_error(
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
                {"Content-Range": f"bytes */{image.size}"},
            )
        start, end = span or (0, image.size)
        response = web.StreamResponse(status=206 if span else 200)
        response.headers.update(
            {"Accept-Ranges": "bytes", "ETag": etag, "Content-Type": "application/octet-stream"}
        )
        if span:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{image.size}"
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        plan = self.state.take_download_plan(snapshot_id, start, end)
        stop = end if plan.cut_at is None else plan.cut_at
        self.state.count_sending(snapshot_id, 1)
        try:
            await self._send(response, snapshot_id, image.chunks(start, stop), start, plan)
        except ConnectionError:
            return response  # the client went away; nothing to finish
        finally:
            self.state.count_sending(snapshot_id, -1)
        if plan.cut_at is not None:
            _drop_connection(request, plan.reset)
            return response
        await response.write_eof()
        return response

    async def _send(
        self,
        response: web.StreamResponse,
        snapshot_id: str,
        chunks: Iterator[memoryview],
        position: int,
        plan: DownloadPlan,
    ) -> None:
        for chunk in chunks:
            if plan.corrupt_at is not None and position <= plan.corrupt_at < position + len(chunk):
                damaged = bytearray(chunk)
                damaged[plan.corrupt_at - position] ^= 0xFF
                chunk = memoryview(damaged)
            position += len(chunk)
            step = BLOCK_SIZE if plan.rate is None else max(1, min(BLOCK_SIZE, plan.rate // 10))
            for offset in range(0, len(chunk), step):
                piece = chunk[offset : offset + step]
                await response.write(piece)
                self.state.count_served(snapshot_id, len(piece))
                if plan.rate is not None:
                    await asyncio.sleep(len(piece) / plan.rate)
