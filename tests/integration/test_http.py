"""JsonApi against a real local HTTP server: retries, Retry-After, typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from worker import errors
from worker.http import JsonApi
from worker.retry import RetryPolicy

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


class Script:
    """Answers each request with the next scripted response."""

    def __init__(self) -> None:
        self.responses: list[Callable[[web.Request], web.StreamResponse]] = []
        self.requests: list[tuple[str, str, bytes, str | None]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, body, request.headers.get("X-Try")))
        if request.path == "/reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return self.responses.pop(0)(request)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Script, str]]:
    script = Script()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield script, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def reply(status: int, body: object = None, text: str | None = None, **headers: str):
    def make(_: web.Request) -> web.Response:
        if text is not None:
            return web.Response(status=status, text=text, content_type="text/html", headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return make


async def test_retries_5xx_then_succeeds_and_resigns(server) -> None:
    script, base = server
    script.responses = [
        reply(503, {"message": "busy"}),
        reply(502, text="<html>bad gw</html>"),
        reply(200, {"ok": True}),
    ]
    tries = iter(range(10))
    async with JsonApi("svc", retry=FAST) as api:
        result = await api.request_json(
            "POST",
            f"{base}/thing",
            json_body={"a": 1},
            sign=lambda m, u, b: {"X-Try": str(next(tries))},
        )
    assert result == {"ok": True}
    assert [r[3] for r in script.requests] == ["0", "1", "2"]
    assert {r[2] for r in script.requests} == {b'{"a":1}'}


async def test_429_honours_retry_after_and_gives_up_typed(server) -> None:
    script, base = server
    script.responses = [reply(429, {"message": "slow down"}, **{"Retry-After": "0"})] * 4
    async with JsonApi("svc", retry=FAST) as api:
        with pytest.raises(errors.RateLimited, match=r"^svc: GET /x: HTTP 429: slow down") as info:
            await api.request_json("GET", f"{base}/x")
    assert info.value.retry_after == 0
    assert len(script.requests) == 4


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (404, {"message": "Snapshot not found"}, errors.NotFound, "Snapshot not found"),
        (403, {"message": "Invalid request signature"}, errors.AuthError, "Invalid request"),
        (409, {"error": {"message": "busy exporting"}}, errors.Conflict, "busy exporting"),
        (
            422,
            {"detail": [{"loc": ["query", "type"], "msg": "bad type", "type": "x"}]},
            errors.BadRequest,
            "query.type: bad type",
        ),
        (
            400,
            {"type": "about:blank", "title": "Bad", "detail": "no", "status": 400},
            errors.BadRequest,
            "Bad: no",
        ),
    ],
)
async def test_4xx_is_not_retried(server, status, body, kind, message) -> None:
    script, base = server
    script.responses = [reply(status, body)]
    async with JsonApi("svc", retry=FAST) as api:
        with pytest.raises(kind, match=message):
            await api.request_json("GET", f"{base}/y?secret=should-not-show")
    assert len(script.requests) == 1


async def test_error_messages_leave_out_the_query(server) -> None:
    script, base = server
    script.responses = [reply(404, {"message": "gone"})]
    async with JsonApi("svc", retry=FAST) as api:
        with pytest.raises(errors.NotFound) as info:
            await api.request_json("GET", f"{base}/y", params={"token": "hunter2"})
    assert "hunter2" not in str(info.value)
    assert script.requests[0][1] == "/y?token=hunter2"


async def test_html_success_is_a_bad_response(server) -> None:
    script, base = server
    script.responses = [reply(200, text="<html>login</html>")]
    async with JsonApi("svc", retry=FAST) as api:
        with pytest.raises(errors.BadResponse, match="HTML page"):
            await api.request_json("GET", f"{base}/z")


async def test_connection_reset_is_retried_then_server_error(server) -> None:
    script, base = server
    async with JsonApi("svc", retry=FAST) as api:
        with pytest.raises(errors.ServerError, match=r"connection to 127\.0\.0\.1:\d+ failed"):
            await api.request_json("GET", f"{base}/reset")
    # aiohttp itself re-sends an idempotent request once when a kept-alive connection drops.
    assert FAST.attempts <= len(script.requests) <= 2 * FAST.attempts


async def test_empty_success_is_none(server) -> None:
    script, base = server
    script.responses = [lambda _: web.Response(status=204)]
    async with JsonApi("svc", retry=FAST) as api:
        assert await api.request_json("DELETE", f"{base}/d") is None
