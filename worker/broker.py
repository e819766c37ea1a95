"""The Dramatiq broker snaparchive's jobs travel on: Redis by default, or RabbitMQ.

RabbitMQ publishes are confirmed (``confirm_delivery``). RabbitMQ's ``consumer_timeout``
(30 min by default) would redeliver a message held longer; the transfer step therefore
hands over to a fresh message every ``SNAPARCHIVE_TRANSFER_SLICE`` seconds (it resumes
from its checkpoint), so no delivery stays unacknowledged for long.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware


def make_broker(url: str, *extra: Middleware, heartbeat_timeout: int = 60) -> dramatiq.Broker:
    """Return a broker for ``url`` (``redis://`` or ``amqp://``) and make it the global one.

    Parameters:
      url: The broker URL (``SNAPARCHIVE_BROKER_URL``).
      extra: Middleware to add after the defaults, AsyncIO and CurrentMessage.
      heartbeat_timeout: Seconds of silence after which a Redis-broker worker counts as dead
        and its unacknowledged messages are requeued (default 60).
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
    for middleware in extra:
        broker.add_middleware(middleware)
    dramatiq.set_broker(broker)
    return broker
