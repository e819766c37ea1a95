"""A fake of Gcore's ``GET /cloud/v1/snapshots/{project_id}/{region_id}`` (paging, filters)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.server import FakeApi

FILTERS = ("instance_id", "volume_id", "schedule_id", "lifecycle_policy_id")


def _error(status: int, exception_class: str, message: str) -> web.Response:
    return web.json_response(
        {"exception_class": exception_class, "message": message}, status=status
    )


class FakeGcore(FakeApi):
    """Serves one project's snapshots by region to callers presenting ``apikey {api_key}``.

    Parameters:
      api_key: The one accepted key.
      project_id: The one project there is.
    """

    def __init__(self, api_key: str = "gcore-key", project_id: int = 1337) -> None:
        super().__init__()
        self.api_key = api_key
        self.project_id = project_id
        #: region id -> (snapshot as served, hidden attributes the filters match).
        self.snapshots: dict[int, list[tuple[dict[str, Any], dict[str, str]]]] = {}

    def add(
        self,
        region_id: int = 7,
        *,
        instance_id: str = "",
        schedule_id: str = "",
        lifecycle_policy_id: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Store a snapshot of ``region_id`` shaped like the API's (``fields`` override)."""
        stored = self.snapshots.setdefault(region_id, [])
        n = sum(len(v) for v in self.snapshots.values()) + 1
        snapshot = {
            "created_at": "2019-05-29T05:32:41+0000",
            "creator_task_id": f"task-{n}",
            "description": "Snapshot description",
            "id": f"726ecfcc-7fd0-4e30-a86e-{n:012d}",
            "name": f"gcore-snapshot-{n}",
            "project_id": self.project_id,
            "region": "Luxembourg 1",
            "region_id": region_id,
            "size": 20,
            "status": "available",
            "tags": [],
            "task_id": None,
            "updated_at": "2019-05-29T05:39:20+0000",
            "volume_id": f"volume-{n}",
            **fields,
        }
        hidden = {
            "instance_id": instance_id,
            "schedule_id": schedule_id,
            "lifecycle_policy_id": "" if lifecycle_policy_id is None else str(lifecycle_policy_id),
            "volume_id": str(snapshot["volume_id"]),
        }
        stored.append((snapshot, hidden))
        return snapshot

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/cloud/v1/snapshots/{project_id}/{region_id}", self.list)]

    def authorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"apikey {self.api_key}":
            return None
        return _error(401, "NotAuthenticated", "Invalid API key")

    async def list(self, request: web.Request) -> web.Response:
        try:
            project_id = int(request.match_info["project_id"])
            region_id = int(request.match_info["region_id"])
            limit = int(request.query.get("limit", "1000"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _error(400, "ValidationError", "ids, limit and offset must be integers")
        if not 0 < limit <= 1000 or offset < 0:
            return _error(400, "ValidationError", "limit must be 1..1000 and offset >= 0")
        if project_id != self.project_id:
            return _error(404, "ProjectNotFound", f"Project {project_id} not found")
        wanted = {k: request.query[k] for k in FILTERS if k in request.query}
        found = [
            snapshot
            for snapshot, hidden in self.snapshots.get(region_id, [])
            if all(hidden[k] == v for k, v in wanted.items())
        ]
        return web.json_response({"count": len(found), "results": found[offset : offset + limit]})
