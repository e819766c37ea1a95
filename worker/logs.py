"""Logging of every command: text or JSON lines, the job a line is about, secrets masked.

``SNAPARCHIVE_LOG_FORMAT`` chooses the format: ``text`` (default) or ``json``, one object per
line with ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and, where known,
``zone``, ``snapshot_id``, ``job`` and ``step`` (set by the step drivers with
:func:`job_context`), plus ``exception`` for a traceback.

Whatever the format, :class:`Redact` sits on the root logger's handlers, so it sees the lines
of every logger (botocore, aiohttp, dramatiq, ours) at every level: it masks the query string of
URLs that carry a signature (presigned URLs are credentials), passwords in URLs (a broker's),
``Authorization`` header values, signatures and session tokens wherever they are printed, and
the values of the secrets in the environment (:data:`SECRET_VARIABLES`).
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from worker.errors import ConfigError

FORMAT_VARIABLE = "SNAPARCHIVE_LOG_FORMAT"
FORMATS = ("text", "json")
#: The text format of every command but ``worker``.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The text format of ``worker`` processes: Dramatiq's own, which names the process and thread.
WORKER_TEXT_FORMAT = (
    "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
)
#: Variables whose values never appear in a log line, whoever logs them.
SECRET_VARIABLES = (
    "EXOSCALE_API_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GENESISCLOUD_TOKEN",
    "GCORE_API_KEY",
    "INSTAVM_API_KEY",
)
#: Secret values shorter than this are not masked: they would mask ordinary words (and are
#: no secrets worth the name).
MIN_SECRET = 6
MASK = "<redacted>"

_ZONE: contextvars.ContextVar[str | None] = contextvars.ContextVar("zone", default=None)
_SNAPSHOT: contextvars.ContextVar[str | None] = contextvars.ContextVar("snapshot_id", default=None)
_STEP: contextvars.ContextVar[str | None] = contextvars.ContextVar("step", default=None)
#: The record attributes :class:`Redact` fills from the context, and JSON lines carry.
CONTEXT_FIELDS = ("zone", "snapshot_id", "job", "step")

# The password in a URL's user part (a broker URL: ``amqp://user:password@host``).
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)")
# A URL with a query string: the query is masked when it holds a signature.
_URL = re.compile(r"""(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'"<>]*)\?([^\s#'"<>]*)""")
_SIGNED_QUERY = re.compile(r"(?:^|[&;])(?:x-amz-)?signature=", re.IGNORECASE)
# Header values, as a header line (to its end) or a quoted value in a dict or JSON.
_HEADER = re.compile(
    r"""(?P<name>\b(?:proxy-)?authorization|\bx-amz-security-token|\bx-api-key|\bapikey)"""
    r"""(?P<sep>['"]?\s*[:=]\s*)(?P<value>b?'[^'\r\n]*'|b?"[^"\r\n]*"|[^\r\n]+)""",
    re.IGNORECASE,
)
# A signature printed as ``Signature=...``, ``signature: ...`` or botocore's "Signature:\n...".
_SIGNATURE = re.compile(
    r"(?P<name>\b(?:x-amz-)?signature)(?P<sep>['\"]?\s*[:=]\s*b?['\"]?)(?P<value>[A-Za-z0-9%+/=_.-]{8,})",
    re.IGNORECASE,
)


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``SNAPARCHIVE_LOG_FORMAT``: ``text`` (default) or ``json``.

    Raises:
      ConfigError: Any other value, naming the variable.
    """
    env = os.environ if env is None else env
    value = (env.get(FORMAT_VARIABLE) or "text").strip().lower()
    if value not in FORMATS:
        raise ConfigError(f"{FORMAT_VARIABLE}: text or json, not {env.get(FORMAT_VARIABLE)!r}")
    return value


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The values of :data:`SECRET_VARIABLES` in ``env`` worth masking, longest first."""
    env = os.environ if env is None else env
    values = {env.get(name, "").strip() for name in SECRET_VARIABLES}
    return sorted((v for v in values if len(v) >= MIN_SECRET), key=len, reverse=True)


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with signed URLs' query strings, credentials in headers, signatures and the
    literal ``secrets`` replaced by :data:`MASK`."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(rf"\g<1>{MASK}\g<3>", text)
    text = _URL.sub(_mask_query, text)
    text = _HEADER.sub(_mask_value, text)
    return _SIGNATURE.sub(_mask_value, text)


def _mask_query(match: re.Match[str]) -> str:
    if _SIGNED_QUERY.search(match.group(2)):
        return f"{match.group(1)}?{MASK}"
    return match.group(0)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if value.startswith(MASK):
        return match.group(0)
    quote = value[-1] if value[-1:] in ("'", '"') and len(value) > 1 else ""
    opening = value[: value.index(quote) + 1] if quote else ""
    return f"{match.group('name')}{match.group('sep')}{opening}{MASK}{quote}"


class Redact(logging.Filter):
    """Masks secrets in each record (see :func:`redact`) and adds the job context.

    It rewrites the record itself (its message, traceback and stack) before any handler
    formats it, so every handler of the root logger prints the masked text.

    Parameters:
      secrets: Literal values to mask (default: those of :data:`SECRET_VARIABLES` in the
        environment).
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = secret_values() if secrets is None else secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: print what was passed rather than nothing
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for name, value in current_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the job context
    where known, ``exception`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        body: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                body[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exception"] = record.exc_text
        if record.stack_info:
            body["stack"] = record.stack_info
        return json.dumps(body, ensure_ascii=False, default=str)


#: Held while a log line or a progress line is written to the terminal: threads (the S3
#: pool's botocore, the event loop's progress) must not split each other's lines.
OUTPUT_LOCK = threading.RLock()


class _Handler(logging.StreamHandler):
    """The handler :func:`setup` installs (told apart from a host application's); it
    writes under :data:`OUTPUT_LOCK`."""

    def createLock(self) -> None:
        self.lock = OUTPUT_LOCK


def setup(
    level: int,
    *,
    stream: TextIO | Any | None = None,
    text_format: str = TEXT_FORMAT,
    replace: bool = False,
) -> None:
    """Configure the root logger: a handler on ``stream`` in ``SNAPARCHIVE_LOG_FORMAT``, and
    :class:`Redact` on every root handler.

    Parameters:
      level: The root logger's level.
      stream: Where lines go (default: ``sys.stderr`` as it is now).
      text_format: The ``logging`` format of the text format (default :data:`TEXT_FORMAT`).
      replace: Remove every handler first (a Dramatiq worker process, whose logging the
        command owns); by default, as :func:`logging.basicConfig`, a logging configured by
        someone else (a host application, pytest) gets no handler of ours, only the filter.

    Raises:
      ConfigError: ``SNAPARCHIVE_LOG_FORMAT`` is malformed.
    """
    chosen = log_format()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if replace or isinstance(handler, _Handler):
            root.removeHandler(handler)
    if not root.handlers:
        handler = _Handler(sys.stderr if stream is None else stream)
        formatter = JsonFormatter() if chosen == "json" else logging.Formatter(text_format)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    secrets = secret_values()
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, Redact)]:
            handler.removeFilter(old)
        handler.addFilter(Redact(secrets))
    root.setLevel(level)


def current_context() -> dict[str, str]:
    """The job context of the running code: ``zone``, ``snapshot_id``, ``job``, ``step``
    (those that are set)."""
    zone, snapshot_id, step = _ZONE.get(), _SNAPSHOT.get(), _STEP.get()
    found = {"zone": zone, "snapshot_id": snapshot_id, "step": step}
    if zone and snapshot_id:
        found["job"] = f"{zone}/{snapshot_id}"
    return {name: value for name, value in found.items() if value}


@contextmanager
def job_context(zone: str, snapshot_id: str, step: str | None = None) -> Iterator[None]:
    """Log lines within carry the job (``zone``, ``snapshot_id``, ``job``) and its ``step``.

    Context variables: they follow the code into asyncio tasks created within, not into
    threads of an executor.
    """
    tokens = (_ZONE.set(zone), _SNAPSHOT.set(snapshot_id), _STEP.set(step))
    try:
        yield
    finally:
        _STEP.reset(tokens[2])
        _SNAPSHOT.reset(tokens[1])
        _ZONE.reset(tokens[0])
