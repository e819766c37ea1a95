"""A fake of InstaVM's ``GET /v1/snapshots`` (``type`` filter, FastAPI-style errors)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeApi

TYPE_PATTERN = "^(user|system)$"


class FakeInstaVM(FakeApi):
    """Serves user and system snapshots to callers presenting ``X-API-Key`` (or a bearer token).

    Parameters:
      api_key: The one accepted key.
    """

    def __init__(self, api_key: str = "instavm-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.snapshots: list[dict[str, Any]] = []

    def add(self, **fields: Any) -> dict[str, Any]:
        """Store a snapshot shaped like the API's SnapshotInfo (``fields`` override)."""
        n = len(self.snapshots) + 1
        snapshot = {
            "id": f"snap-{n:04d}",
            "name": f"instavm snapshot {n}",
            "status": "ready",
            "source_vm_id": f"vm-{n}",
            "snapshot_type": "vm",
            "type": "user",
            "oci_image": None,
            "vcpu_count": 2,
            "memory_mb": 2048,
            "size_bytes": 3_221_225_472 + n,
            "is_public": False,
            "last_error": None,
            "created_at": "2025-03-01T12:00:00Z",
            "updated_at": "2025-03-01T12:05:00Z",
            **fields,
        }
        self.snapshots.append(snapshot)
        return snapshot

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/snapshots", self.list)]

    def authorized(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("X-API-Key")
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key is None and not bearer:
            return web.json_response({"detail": "Not authenticated"}, status=401)
        if self.api_key not in (key, bearer):
            return web.json_response({"detail": "Invalid API key"}, status=403)
        return None

    async def list(self, request: web.Request) -> web.Response:
        kind = request.query.get("type")
        if kind is not None and not re.match(TYPE_PATTERN, kind):
            detail = {
                "type": "string_pattern_mismatch",
                "loc": ["query", "type"],
                "msg": f"String should match pattern '{TYPE_PATTERN}'",
                "input": kind,
            }
            return web.json_response({"detail": [detail]}, status=422)
        return web.json_response([s for s in self.snapshots if kind in (None, s["type"])])
