"""A fake of Genesis Cloud's ``/compute/v1/snapshots`` (list with page/per_page, get, delete)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.server import FakeApi


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

    async def delete(self, request: web.Request) -> web.Response:
        snapshot = self._find(request)
        if snapshot is None:
            return _error(404, "not_found", "Snapshot not found")
        self.snapshots.remove(snapshot)
        return web.Response(status=204)
