"""A JSON-over-HTTP client for cloud APIs: one session, timeouts, retries, typed errors.

:class:`JsonApi` is what the Exoscale client and the provider adapters share. It retries
429 (honouring ``Retry-After``), 5xx, connection resets and timeouts with capped
backoff, never retries any other 4xx, and turns failures into the typed errors of
:mod:`worker.errors` with messages that start with the service name and carry the
server's own message. Query strings are left out of messages and logs, and so is the text
of aiohttp's exceptions (it holds the URL and the signed headers): a failure below HTTP is
named by the host and the exception's class. Credentials we sent are cut out of the
server's message, in case it quotes them back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import aiohttp
from yarl import URL

from worker import errors
from worker.retry import RetryPolicy, parse_retry_after

logger = logging.getLogger(__name__)

#: Connect within 10 s; a whole API call within 60 s.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)

_RETRYABLE = {429, 500, 502, 503, 504}
#: Request headers that carry credentials (lower case); also every header ``sign`` adds.
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "x-auth-token"}

#: ``sign(method, url, body) -> headers``: called before every try, so retries are re-signed.
Signer = Callable[[str, URL, bytes], Mapping[str, str]]


def error_message(payload: Any) -> str | None:
    """Return the human message inside an API error body, whatever its convention.

    Understands ``{"message"}``, ``{"error"}`` (a string or an object with a message),
    ``{"detail": "..."}``, FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` and RFC 9457
    problem details (``title`` and ``detail``).
    """
    if not isinstance(payload, dict):
        return None
    detail = payload.get("detail")
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{where}: {item.get('msg', '?')}" if where else str(item.get("msg")))
        return "; ".join(parts) or None
    title = payload.get("title")
    if isinstance(title, str) and isinstance(detail, str):
        return f"{title}: {detail}"
    for field in ("message", "error", "detail", "title"):
        value = payload.get(field)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            nested = error_message(value)
            if nested:
                return nested
    return None


def _authority(url: URL) -> str:
    """``host`` or ``host:port`` of ``url``: what messages name instead of the URL."""
    host = url.raw_host or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.explicit_port}" if url.explicit_port is not None else host


def _secrets(headers: Mapping[str, str], signed: Collection[str]) -> set[str]:
    """The credential header values sent, and their long pieces (a key, a signature, a token)."""
    values = [v for k, v in headers.items() if k.lower() in _CREDENTIAL_HEADERS or k in signed]
    pieces = {p for v in values for p in re.split(r"[\s,;=]+", v) if len(p) >= 20}
    return {v for v in values if v} | pieces


def _redact(text: str, secrets: Collection[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text


def _describe_body(raw: bytes, content_type: str) -> str:
    if not raw:
        return "empty body"
    if "html" in content_type or raw.lstrip()[:1] == b"<":
        return "an HTML page instead of JSON"
    return "a body that is not JSON"


class JsonApi:
    """Calls one cloud API and returns decoded JSON.

    Parameters:
      service: The API's name, first word of every error message (``exoscale``, ``gcore``, ...).
      retry: When to try again (default :class:`RetryPolicy`).
      timeout: Per-try timeouts (default :data:`DEFAULT_TIMEOUT`).
      session: An aiohttp session to use; by default one is created on first use and
        closed by :meth:`close`.
    """

    def __init__(
        self,
        service: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.service = service
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> JsonApi:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this object created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def request_json(
        self,
        method: str,
        url: str | URL,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        sign: Signer | None = None,
    ) -> Any:
        """Send one request, retrying as the policy allows, and return the decoded JSON.

        Parameters:
          method: HTTP method.
          url: Absolute URL.
          params: Query parameters, added to ``url``.
          json_body: Serialised once; the same bytes are sent (and signed) on every try.
          headers: Extra headers.
          sign: Called before each try to add authentication headers.

        Returns:
          The decoded JSON body, or ``None`` for an empty success (e.g. 204).

        Raises:
          worker.errors.ApiError: A subclass naming what went wrong.
        """
        target = URL(url)
        if params:
            target = target.update_query({k: str(v) for k, v in params.items()})
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        what = f"{self.service}: {method} {target.path}"
        host = _authority(target)
        for attempt in range(1, self.retry.attempts + 1):
            send_headers = {"Accept": "application/json", **(headers or {})}
            if body:
                send_headers["Content-Type"] = "application/json"
            signed: Mapping[str, str] = {}
            if sign is not None:
                signed = sign(method, target, body)
                send_headers.update(signed)
            retry_after = None
            # Only our own text leaves this block: aiohttp's exceptions hold the URL and headers.
            failure: errors.ApiError | None = None
            try:
                async with self.session.request(
                    method, target, data=body or None, headers=send_headers, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    status = response.status
                    content_type = response.headers.get("Content-Type", "")
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except aiohttp.InvalidURL:
                # The endpoint setting is wrong: waiting will not fix it.
                failure = errors.BadRequest(f"{what}: not a valid URL for host {host}")
            except aiohttp.ClientResponseError as exc:
                # aiohttp refused the answer itself (a bad status line, a bad Content-Length,
                # Content-Length with Transfer-Encoding, ...): a faulty server, retried like a 5xx.
                failure = errors.BadResponse(
                    f"{what}: malformed HTTP response from {host} ({type(exc).__name__})"
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failure = errors.ServerError(
                    f"{what}: connection to {host} failed ({type(exc).__name__})"
                )
            if failure is None:
                if 200 <= status < 300:
                    return self._decode(what, status, raw, content_type)
                secrets = _secrets(send_headers, signed)
                failure = self._error(what, status, raw, content_type, retry_after, secrets)
                if status not in _RETRYABLE:
                    raise failure
            elif failure.permanent:
                raise failure
            if attempt == self.retry.attempts:
                raise failure
            pause = self.retry.delay(attempt, retry_after)
            logger.warning(
                "%s (try %d of %d), retrying in %.1fs", failure, attempt, self.retry.attempts, pause
            )
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    def _decode(self, what: str, status: int, raw: bytes, content_type: str) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise errors.BadResponse(
                f"{what}: HTTP {status} with {_describe_body(raw, content_type)}", status
            ) from None

    def _error(
        self,
        what: str,
        status: int,
        raw: bytes,
        content_type: str,
        retry_after: float | None,
        secrets: Collection[str] = (),
    ) -> errors.ApiError:
        try:
            message = error_message(json.loads(raw)) if raw.strip() else None
        except ValueError:
            message = None
        if message:
            message = _redact(message, secrets)
        text = f"{what}: HTTP {status}: {message or _describe_body(raw, content_type)}"
        if status == 404:
            return errors.NotFound(text, status)
        if status in (401, 403):
            return errors.AuthError(text, status)
        if status == 409:
            return errors.Conflict(text, status)
        if status == 429:
            return errors.RateLimited(text, status, retry_after)
        if status >= 500:
            return errors.ServerError(text, status)
        return errors.BadRequest(text, status)
