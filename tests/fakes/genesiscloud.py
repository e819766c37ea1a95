"""A fake of Genesis Cloud's ``/compute/v1/snapshots`` (list with page/per_page, get, delete,
and create from an image URL).

Create (``POST``, 201) answers ``creating`` at once, then reads the URL as Genesis would: a
raw image, or raw+zstd (zstd frames, read across frames), streamed, decompressed, hashed. The
snapshot turns ``created`` only when the uncompressed size fits ``size`` GiB rounded up
exactly and, where a test said what the disk must be (:attr:`FakeGenesisCloud.expect_md5`),
its MD5 is that; otherwise ``error``. :attr:`FakeGenesisCloud.imports` keeps what was read.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import zstandard
from aiohttp import web

from tests.fakes.server import FakeApi

GiB = 1 << 30
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Imported:
    """What the fake read from a create's URL: ``raw_size`` and ``raw_md5`` of the disk,
    ``compressed`` (raw+zstd), and ``error`` (why it failed, ``None`` if it did not)."""

    raw_size: int = 0
    raw_md5: str = ""
    compressed: bool = False
    error: str | None = None


class _Hasher:
    """The sink of the decompressor: hashes and counts the raw disk."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.size += len(data)
        return len(data)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


class FakeGenesisCloud(FakeApi):
    """Serves the snapshots in :attr:`snapshots` to callers presenting ``Bearer {token}``.

    Parameters:
      token: The one accepted API token.
    """

    def __init__(self, token: str = "genesis-token") -> None:
        super().__init__()
        self.token = token
        self.snapshots: list[dict[str, Any]] = []
        #: Pages hold at most this many, whatever ``per_page`` asks (a server-side cap).
        self.page_cap = 100
        #: Snapshot name -> the MD5 its disk must have to be ``created``.
        self.expect_md5: dict[str, str] = {}
        #: Snapshot id -> what its import read.
        self.imports: dict[str, Imported] = {}
        #: Creates seen: their bodies (URL included: tests check it is a presigned one).
        self.created: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, **fields: Any) -> dict[str, Any]:
        """Store a snapshot shaped like the API's (``fields`` override the defaults)."""
        n = len(self.snapshots) + 1
        snapshot = {
            "id": f"ff942497-62f6-4a9d-8dc4-{n:012d}",
            "name": f"snapshot {n}",
            "size": 128,
            "region": "NORD-NO-KRS-1",
            "status": "created",
            "resource_id": f"instance-{n}",
            "created_at": f"2024-01-{n % 28 + 1:02d}T10:47:46.786Z",
            **fields,
        }
        self.snapshots.append(snapshot)
        return snapshot

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/compute/v1/snapshots", self.list),
            web.post("/compute/v1/snapshots", self.create),
            web.get("/compute/v1/snapshots/{id}", self.get),
            web.delete("/compute/v1/snapshots/{id}", self.delete),
        ]

    def authorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            return None
        return _error(401, "unauthorized", "Invalid or missing API token")

    async def list(self, request: web.Request) -> web.Response:
        try:
            page = int(request.query.get("page", "1"))
            per_page = int(request.query.get("per_page", "50"))
        except ValueError:
            return _error(400, "invalid_request", "page and per_page must be integers")
        if page < 1 or not 1 <= per_page <= 100:
            return _error(400, "invalid_request", "per_page must be between 1 and 100")
        per_page = min(per_page, self.page_cap)
        start = (page - 1) * per_page
        return web.json_response(
            {
                "snapshots": self.snapshots[start : start + per_page],
                "total_count": len(self.snapshots),
                "page": page,
                "per_page": per_page,
            }
        )

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        return next((s for s in self.snapshots if s["id"] == request.match_info["id"]), None)

    async def get(self, request: web.Request) -> web.Response:
        snapshot = self._find(request)
        if snapshot is None:
            return _error(404, "not_found", "Snapshot not found")
        return web.json_response({"snapshot": snapshot})

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request", "the body is not JSON")
        problem = _create_problem(body)
        if problem:
            return _error(400, "invalid_request", problem)
        self.created.append(body)
        snapshot = {
            "id": str(uuid.uuid4()),
            "name": body["name"],
            "size": body["size"],
            "region": body["region"],
            "status": "creating",
            "os_type": body.get("os_type", "linux"),
            "resource_id": "",
            "created_at": "2026-12-01T10:47:46.786Z",
        }
        self.snapshots.append(snapshot)
        task = asyncio.get_running_loop().create_task(self._import(snapshot, body["url"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"snapshot": snapshot}, status=201)

    async def _import(self, snapshot: dict[str, Any], url: str) -> None:
        found = Imported()
        try:
            await self._read(url, found)
        except (aiohttp.ClientError, zstandard.ZstdError, OSError) as exc:
            found.error = f"cannot read the image: {type(exc).__name__}: {exc}"
        if found.error is None and snapshot["size"] != max(1, math.ceil(found.raw_size / GiB)):
            found.error = f"size {snapshot['size']} GiB does not hold {found.raw_size} bytes"
        expected = self.expect_md5.get(snapshot["name"])
        if found.error is None and expected is not None and expected != found.raw_md5:
            found.error = f"md5 {found.raw_md5}, expected {expected}"
        self.imports[snapshot["id"]] = found
        snapshot["status"] = "error" if found.error else "created"

    async def _read(self, url: str, found: Imported) -> None:
        hasher = _Hasher()
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message="not 200"
                )
            first = await response.content.read(4)
            found.compressed = first == _ZSTD_MAGIC
            sink: Any = hasher
            if found.compressed:
                sink = zstandard.ZstdDecompressor().stream_writer(hasher, closefd=False)
            sink.write(first)
            async for chunk in response.content.iter_chunked(1 << 20):
                sink.write(chunk)
            if found.compressed:
                sink.flush()
        found.raw_size, found.raw_md5 = hasher.size, hasher.md5.hexdigest()

    async def delete(self, request: web.Request) -> web.Response:
        snapshot = self._find(request)
        if snapshot is None:
            return _error(404, "not_found", "Snapshot not found")
        self.snapshots.remove(snapshot)
        return web.Response(status=204)


def _create_problem(body: Any) -> str | None:
    """Why a create body is refused (the API's required fields and types), or ``None``."""
    if not isinstance(body, dict):
        return "the body is not an object"
    for name in ("name", "region", "url"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{name} is required"
    size = body.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return "size must be an integer of at least 1 (GiB)"
    if body.get("os_type", "linux") not in ("linux", "windows"):
        return "os_type must be linux or windows"
    return None
