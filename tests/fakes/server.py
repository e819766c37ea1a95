"""The part every fake API shares: serving, recording requests, and injected faults.

A fake runs its aiohttp application in a background thread with its own event loop, so
both async tests (whose loop makes the calls) and sync tests (the CLI's own
``asyncio.run``) can talk to it over real sockets.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Fault:
    """One answer served instead of the real one.

    Parameters:
      status: HTTP status.
      body: A JSON body, or ``None``.
      text: A non-JSON body (served as ``text/html``), used when ``body`` is ``None``.
      headers: Extra response headers (``Retry-After``...).
    """

    status: int
    body: object = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        if self.body is None and self.text is not None:
            return web.Response(
                status=self.status, text=self.text, content_type="text/html", headers=self.headers
            )
        return web.json_response(self.body, status=self.status, headers=self.headers)


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FakeApi:
    """Base of the fakes: subclasses add routes in :meth:`routes` and say who may call.

    Attributes:
      faults: Answers served, first in first out, before any real handling (and before auth).
      requests: Every request received, in order.
      url: The base URL (``http://127.0.0.1:PORT``) while :meth:`running`.
    """

    def __init__(self) -> None:
        self.faults: deque[Fault] = deque()
        self.requests: list[Seen] = []
        self.url = ""

    def fail_next(self, *faults: Fault) -> None:
        """Serve ``faults`` to the next requests, in order."""
        self.faults.extend(faults)

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def authorized(self, request: web.Request) -> web.Response | None:
        """Return the error answer for a request with bad credentials, else ``None``."""
        raise NotImplementedError

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers))
        )
        if self.faults:
            return self.faults.popleft().response()
        return self.authorized(request) or await handler(request)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on a free loopback port in a background thread; yields the base URL."""
        loop = asyncio.new_event_loop()
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self.routes())
        runner = web.AppRunner(app)

        async def start() -> str:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{runner.addresses[0][1]}"

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            self.url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
            yield self.url
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
