"""A small control endpoint to change faults of a running simulator (runbook rehearsal).

``GET /_simulator/faults`` returns ``{"global": {...} | null, "snapshots": {id: {...}}}``.
``PUT /_simulator/faults`` with ``{"faults": {...} | null, "snapshot_id": "..."}`` sets (or with
null clears) the global faults, or one snapshot's when ``snapshot_id`` is given; field names
are those of :class:`~worker.simulator.faults.Faults` (``-`` may stand for ``_``). For example::

    curl -X PUT localhost:8080/_simulator/faults -d '{"faults": {"api_errors": 3}}'

It is unauthenticated: the simulator is a development tool; bind it to loopback.
"""

from __future__ import annotations

import json

from aiohttp import web

from worker.simulator.faults import Faults
from worker.simulator.state import SimState


class Control:
    """The fault control routes, over a :class:`SimState`."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET`` and ``PUT /_simulator/faults``."""
        app.router.add_get("/_simulator/faults", self.get_faults)
        app.router.add_put("/_simulator/faults", self.put_faults)

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.fault_settings())

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"null")
            if not isinstance(body, dict) or "faults" not in body:
                raise ValueError('expected a JSON object with "faults" (and "snapshot_id")')
            spec = body["faults"]
            if spec is not None and not isinstance(spec, dict):
                raise ValueError('"faults" must be an object or null')
            faults = None if spec is None else Faults.from_dict(spec)
            self.state.set_faults(faults, body.get("snapshot_id"))
        except (ValueError, TypeError) as exc:
            return web.json_response({"message": str(exc)}, status=400)
        return web.json_response(self.state.fault_settings())
