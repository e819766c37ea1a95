"""The Dramatiq broker snaparchive's jobs travel on: Redis by default, or RabbitMQ.

RabbitMQ publishes are confirmed (``confirm_delivery``). RabbitMQ's ``consumer_timeout``
(30 min by default) would redeliver a message held longer; the transfer step therefore
hands over to a fresh message every ``SNAPARCHIVE_TRANSFER_SLICE`` seconds (it resumes
from its checkpoint), so no delivery stays unacknowledged for long.

Messages never carry exception text: see :class:`SafeTraceback`.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware

from worker.errors import SnaparchiveError
from worker.settings import DEFAULT_HEARTBEAT_TIMEOUT

#: Frames kept in a message's traceback, as Dramatiq's Retries middleware keeps.
TRACEBACK_FRAMES = 30


def safe_traceback(error: BaseException | None) -> str:
    """Return ``error``'s traceback without any exception's text.

    The frames (file, line, function and source line: our code, not data) and the class of
    ``error``; its message only when it is one of ours (they are written to be shown).
    Chained exceptions are left out: theirs is the text this keeps out.
    """
    if error is None:
        return "(no traceback)"
    frames = "".join(traceback.format_tb(error.__traceback__, limit=TRACEBACK_FRAMES))
    name = type(error).__qualname__
    last = f"{name}: {error}" if isinstance(error, SnaparchiveError) else name
    return f"Traceback (most recent call last):\n{frames}{last}\n"


class SafeTraceback(Middleware):
    """Replaces the traceback Dramatiq stores in a retried message with :func:`safe_traceback`.

    Dramatiq's Retries middleware puts ``traceback.format_exc()`` in the message's options
    (``message.options["traceback"]``) and re-enqueues it: the broker would keep the text
    of the failure and its chained exceptions, and an aiohttp or botocore exception's text
    holds the request URL (a presigned URL is a credential) and its headers. This runs in
    that enqueue (``before_enqueue``, still inside the worker's ``except`` block, so
    :func:`sys.exc_info` is the failure) and stores the frames and the class instead.
    """

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        if "traceback" in message.options:
            message.options["traceback"] = safe_traceback(sys.exc_info()[1])


def make_broker(
    url: str, *extra: Middleware, heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
) -> dramatiq.Broker:
    """Return a broker for ``url`` (``redis://`` or ``amqp://``) and make it the global one.

    Parameters:
      url: The broker URL (``SNAPARCHIVE_BROKER_URL``).
      extra: Middleware to add after the defaults, AsyncIO, CurrentMessage and
        :class:`SafeTraceback`.
      heartbeat_timeout: Seconds of silence after which a Redis-broker worker counts as dead
        and its unacknowledged messages are requeued (default
        :data:`~worker.settings.DEFAULT_HEARTBEAT_TIMEOUT`). A live worker process beats on
        every broker call, at least once a second (its consumers poll that often when idle).
    """
    broker: dramatiq.Broker
    if url.startswith("amqp"):
        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        # Maintenance (requeueing the messages of workers whose heartbeat stopped) runs on a
        # random share of broker commands. An idle worker process sends about two a second,
        # so at 1 in 4 a dead worker's messages are back ~2 s after its heartbeat timeout
        # (dramatiq's default, 1 in 1000, takes minutes). While no worker is dead it is two
        # sorted-set range queries: cheap.
        broker = RedisBroker(
            url=url, maintenance_chance=250_000, heartbeat_timeout=heartbeat_timeout * 1000
        )
    broker.add_middleware(AsyncIO())
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(SafeTraceback())
    for middleware in extra:
        broker.add_middleware(middleware)
    dramatiq.set_broker(broker)
    return broker
