"""Serving an aiohttp application from its own event loop in a daemon thread.

Access logs (logger ``worker.simulator``) show method, path and status only: never a query
string (presigned URL signatures) nor a header (API signatures).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

logger = logging.getLogger("worker.simulator")


class RedactedAccessLogger(AbstractAccessLogger):
    """Logs requests without query strings, so presigned URL signatures stay out of logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s bytes %.3fs",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


class ServerThread:
    """An aiohttp application served from an event loop in a daemon thread."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="exoscale-simulator", daemon=True)
        self.port = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the application runs on."""
        return self._loop

    def start(self) -> None:
        """Start serving; return once the socket is bound (or raise why it could not be)."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        # A short shutdown timeout: a test that leaves a (slow) download open must not make
        # stopping wait for it.
        runner = web.AppRunner(
            self._app,
            access_log=logger,
            access_log_class=RedactedAccessLogger,
            shutdown_timeout=0.5,
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self._host, self._port)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
