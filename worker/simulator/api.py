"""The Exoscale API v2 routes of the simulator, under ``/{zone}/v2``.

The zone is the first path segment, so one server answers for every zone in
``worker.settings.EXOSCALE_ZONES`` (an unknown zone is a 404). Requests are checked in the order
a client notices: the zone, then the EXO2-HMAC-SHA256 signature (the signed path is the full
path as sent, zone included; list-zones may be unsigned like the real one), then injected
faults, then the call itself. Errors are ``{"message": ...}`` bodies, as the compute API sends.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from worker.settings import EXOSCALE_ZONES
from worker.signing import SignatureError, verify
from worker.simulator.account import ApiProblem
from worker.simulator.state import SimState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
_ID = "{id:[^/:]+}"
_SNAPSHOT_ROUTES = frozenset(
    ("get-snapshot", "delete-snapshot", "export-snapshot", "promote-snapshot-to-template")
)


def _base(request: web.Request) -> str:
    # Presigned URLs point at the host the client reached us by.
    return f"{request.scheme}://{request.host}"


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise ApiProblem(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiProblem(400, "request body must be a JSON object")
    return body


class ExoscaleApi:
    """Handlers of the API calls, over a :class:`SimState`.

    Parameters:
      state: The simulated account.
      secrets: API keys and their secrets accepted in signatures.
    """

    def __init__(self, state: SimState, secrets: dict[str, str]) -> None:
        self.state = state
        self.secrets = secrets

    def add_routes(self, app: web.Application) -> None:
        """Register the API routes and the middleware that guards them."""
        prefix = "/{zone}/v2"
        app.middlewares.append(self.middleware)
        app.router.add_routes(
            [
                web.get(f"{prefix}/snapshot", self.list_snapshots, name="list-snapshots"),
                web.get(f"{prefix}/snapshot/{_ID}", self.get_snapshot, name="get-snapshot"),
                web.delete(
                    f"{prefix}/snapshot/{_ID}", self.delete_snapshot, name="delete-snapshot"
                ),
                web.post(
                    f"{prefix}/snapshot/{_ID}:export", self.export_snapshot, name="export-snapshot"
                ),
                web.post(
                    f"{prefix}/snapshot/{_ID}:promote",
                    self.promote_snapshot,
                    name="promote-snapshot-to-template",
                ),
                web.get(f"{prefix}/operation/{_ID}", self.get_operation, name="get-operation"),
                web.post(
                    f"{prefix}/instance/{_ID}:create-snapshot",
                    self.create_snapshot,
                    name="create-snapshot",
                ),
                web.get(f"{prefix}/instance", self.list_instances, name="list-instances"),
                web.get(f"{prefix}/instance/{_ID}", self.get_instance, name="get-instance"),
                web.delete(
                    f"{prefix}/instance/{_ID}", self.delete_instance, name="delete-instance"
                ),
                web.get(f"{prefix}/quota", self.list_quotas, name="list-quotas"),
                web.get(f"{prefix}/quota/{{entity}}", self.get_quota, name="get-quota"),
                web.get(f"{prefix}/template", self.list_templates, name="list-templates"),
                web.get(f"{prefix}/template/{_ID}", self.get_template, name="get-template"),
                web.post(f"{prefix}/template", self.register_template, name="register-template"),
                web.get(f"{prefix}/zone", self.list_zones, name="list-zones"),
            ]
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Check zone, signature and faults before an API call; render errors as JSON."""
        if request.path.startswith(("/sos/", "/_simulator/")):
            return await handler(request)
        try:
            zone = request.match_info.get("zone") or request.path.split("/")[1]
            if zone not in EXOSCALE_ZONES:
                raise ApiProblem(404, f"unknown zone: {zone}")
            if request.match_info.http_exception is not None:
                raise request.match_info.http_exception
            route = request.match_info.route.name
            await self._check_signature(request, unsigned_ok=route == "list-zones")
            fault = self.state.take_api_fault(self._snapshot_of(request, route))
            if fault is not None:
                status, headers = fault
                return web.json_response(
                    {"message": _REASONS.get(status, "Server Error")},
                    status=status,
                    headers=headers,
                )
            return await handler(request)
        except ApiProblem as problem:
            return web.json_response({"message": problem.message}, status=problem.status)
        except web.HTTPException as exc:
            # Unknown paths and methods, in the API's error shape.
            if exc.status < 400:
                raise
            return web.json_response({"message": exc.reason}, status=exc.status)

    async def _check_signature(self, request: web.Request, unsigned_ok: bool) -> None:
        header = request.headers.get("Authorization")
        if header is None and unsigned_ok:
            return
        path, _, query = request.raw_path.partition("?")
        try:
            verify(
                header or "",
                self.secrets,
                request.method,
                path,
                await request.read(),
                # Like the official signers: parameters without a value are not signed.
                parse_qsl(query),
                now=self.state.clock(),
            )
        except SignatureError as exc:
            raise ApiProblem(403, str(exc)) from None

    def _snapshot_of(self, request: web.Request, route: str | None) -> str | None:
        # The snapshot whose own faults apply to this call, if it concerns one.
        if route in _SNAPSHOT_ROUTES:
            return request.match_info["id"]
        if route == "get-operation":
            return self.state.operation_snapshot(request.match_info["id"])
        return None

    # -- calls ------------------------------------------------------------------------------

    async def list_snapshots(self, request: web.Request) -> web.Response:
        zone = request.match_info["zone"]
        return web.json_response(self.state.list_snapshots(zone, _base(request)))

    async def get_snapshot(self, request: web.Request) -> web.Response:
        zone, snapshot_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.get_snapshot(zone, snapshot_id, _base(request)))

    async def delete_snapshot(self, request: web.Request) -> web.Response:
        zone, snapshot_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.delete_snapshot(zone, snapshot_id))

    async def export_snapshot(self, request: web.Request) -> web.Response:
        zone, snapshot_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.export_snapshot(zone, snapshot_id))

    async def promote_snapshot(self, request: web.Request) -> web.Response:
        zone, snapshot_id = request.match_info["zone"], request.match_info["id"]
        body = await _json_body(request)
        return web.json_response(self.state.promote_snapshot(zone, snapshot_id, body))

    async def get_operation(self, request: web.Request) -> web.Response:
        zone, operation_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.get_operation(zone, operation_id))

    async def create_snapshot(self, request: web.Request) -> web.Response:
        zone, instance_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.create_snapshot(zone, instance_id))

    async def get_instance(self, request: web.Request) -> web.Response:
        zone, instance_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.get_instance(zone, instance_id))

    async def list_instances(self, request: web.Request) -> web.Response:
        zone = request.match_info["zone"]
        return web.json_response(self.state.list_instances(zone, request.query))

    async def delete_instance(self, request: web.Request) -> web.Response:
        zone, instance_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.delete_instance(zone, instance_id))

    async def get_quota(self, request: web.Request) -> web.Response:
        # Quotas are the organisation's: every zone's endpoint answers the same.
        return web.json_response(self.state.get_quota(request.match_info["entity"]))

    async def list_quotas(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.list_quotas())

    async def list_templates(self, request: web.Request) -> web.Response:
        zone = request.match_info["zone"]
        return web.json_response(self.state.list_templates(zone, request.query))

    async def get_template(self, request: web.Request) -> web.Response:
        zone, template_id = request.match_info["zone"], request.match_info["id"]
        return web.json_response(self.state.get_template(zone, template_id))

    async def register_template(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        return web.json_response(self.state.register_template(request.match_info["zone"], body))

    async def list_zones(self, request: web.Request) -> web.Response:
        base = _base(request)
        return web.json_response(
            {
                "zones": [
                    {
                        "name": zone,
                        "api-endpoint": f"{base}/{zone}/v2",
                        "sos-endpoint": f"{base}/sos/{zone}",
                    }
                    for zone in EXOSCALE_ZONES
                ]
            }
        )
